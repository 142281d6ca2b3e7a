"""The human review queue: what the review API and ``keel review`` share.

:class:`ReviewQueue` checks what reviewers send, runs the store's queries in a thread
(:mod:`keel.store.reviews`), and when an item gets its last verdict it writes the
labelled example (:class:`~keel.control.datasets.DatasetSink`, in the same
transaction that closes the item) and hands the final verdict to a held caller
waiting in this process (``keel.pipeline.hub``). A caller held in another process
finds it with :meth:`ReviewQueue.poll` (pass it as ``ReviewHub(poll=...)``).
"""

from __future__ import annotations

import asyncio
import builtins
import difflib
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from keel.control.datasets import DatasetSink, Example, Provenance
from keel.errors import (
    FeatureNotFound,
    InvalidRequest,
    ReviewClosed,
    ReviewConflict,
    ReviewDuplicate,
    ReviewNotFound,
)
from keel.spec import FeatureSpec
from keel.stages.hold import FinalVerdict, Verdict
from keel.store.db import Connection
from keel.store.reviews import (
    VERDICTS,
    FeatureStats,
    Order,
    ReviewItem,
    ReviewStore,
    Status,
    final_verdict,
)
from keel.types import JSON

if TYPE_CHECKING:
    from keel.gateway import Keel

__all__ = [
    "ReviewClosed", "ReviewConflict", "ReviewDuplicate", "ReviewNotFound", "ReviewPage",
    "ReviewQueue", "dataset_for",
]

MAX_REVIEWER = 100
MAX_REASON = 2000
STATUSES: tuple[Status, ...] = ("pending", "done", "all")
ORDERS: tuple[Order, ...] = ("confidence", "oldest")


@dataclass(frozen=True, slots=True)
class ReviewPage:
    items: list[ReviewItem]
    total: int
    limit: int
    offset: int


def dataset_for(feature: str, spec: FeatureSpec | None) -> str:
    """Where a feature's verdicts go: ``review.dataset``, default ``<feature>-reviews``."""
    return (spec.review.dataset if spec is not None else None) or f"{feature}-reviews"


def final_of(item: ReviewItem) -> FinalVerdict | None:
    """The FinalVerdict of a closed item (None while it is pending)."""
    if item.final_verdict is None:
        return None
    _, _, reason = final_verdict(item.votes, item.output) if item.votes else (None, None, None)
    return FinalVerdict(item.final_verdict, item.final_output,
                        [v.reviewer for v in item.votes], reason)


def example_of(item: ReviewItem, dataset: str) -> Example:
    """A closed item as a labelled example: expected = the final output (None on reject)."""
    final = final_of(item)
    assert final is not None and item.decided_at is not None
    provenance: Provenance = {
        "trace_id": item.trace_id, "version": item.version, "reviewers": final.reviewers,
        "time": item.decided_at, "original_output": item.output, "verdict": final.verdict,
        "source": "review",
    }
    metadata: dict[str, JSON] = {
        "feature": item.feature, "verdict": final.verdict, "confidence": item.confidence,
        "queued_because": item.reason, "mode": item.mode, "final_reason": final.reason,
        "votes": [{"reviewer": v.reviewer, "verdict": v.verdict, "output": v.output,
                   "reason": v.reason} for v in item.votes],
    }
    return Example(dataset, item.trace_id, item.input, final.output, metadata, provenance,
                   item.decided_at)


class ReviewQueue:
    def __init__(self, keel: Keel) -> None:
        self.keel = keel
        self.store = ReviewStore(keel.store)
        self.sink = DatasetSink(keel.store)

    # --- helpers ----------------------------------------------------------------------

    def feature_spec(self, feature: str) -> FeatureSpec | None:
        found = self.keel.features.get(feature)
        return None if found is None else found.spec

    def _known(self, feature: str | None) -> None:
        if feature is not None and feature not in self.keel.features:
            known = ", ".join(sorted(self.keel.features)) or "none"
            raise FeatureNotFound(f"no feature named '{feature}' (features: {known})",
                                  param="feature")

    def default_order(self, feature: str | None) -> Order:
        """The feature's ``review.order``; across features, the order they all use, else
        confidence."""
        specs = [self.feature_spec(feature)] if feature else [f.spec for f in self.keel.features.values()]
        orders = {s.review.order for s in specs if s is not None}
        return orders.pop() if len(orders) == 1 else "confidence"

    # --- reading ----------------------------------------------------------------------

    async def list(self, feature: str | None = None, status: Status = "pending",
                   order: Order | None = None, limit: int = 50, offset: int = 0) -> ReviewPage:
        self._known(feature)
        chosen = order or self.default_order(feature)
        items, total = await asyncio.gather(
            asyncio.to_thread(self.store.list_items, feature, status, chosen, limit, offset),
            asyncio.to_thread(self.store.count, feature, status))
        return ReviewPage(items, total, limit, offset)

    async def get(self, trace_id: str) -> ReviewItem:
        item = await asyncio.to_thread(self.store.get, trace_id)
        if item is None:
            raise ReviewNotFound(f"no review item with trace id '{trace_id}'", param="trace_id")
        return item

    async def stats(self, feature: str | None = None) -> builtins.list[FeatureStats]:
        self._known(feature)
        return await asyncio.to_thread(self.store.stats, feature)

    async def poll(self, trace_id: str) -> FinalVerdict | None:
        """The final verdict of a closed item, else None: ``ReviewHub(poll=queue.poll)``."""
        item = await asyncio.to_thread(self.store.get_closed, trace_id)
        return None if item is None else final_of(item)

    # --- reviewing --------------------------------------------------------------------

    async def next(self, reviewer: str, feature: str | None = None, order: Order | None = None,
                   skip: Collection[str] = ()) -> ReviewItem | None:
        """Claim the next item for ``reviewer`` (None: nothing left for them)."""
        reviewer = check_reviewer(reviewer)
        self._known(feature)
        leases = {name: f.spec.review.lease_s for name, f in self.keel.features.items()}
        return await asyncio.to_thread(self.store.claim, reviewer, feature,
                                       order or self.default_order(feature), leases, tuple(skip))

    async def release(self, trace_id: str, reviewer: str) -> bool:
        """Hand a claimed item back to the queue (a skip, or leaving)."""
        return await asyncio.to_thread(self.store.release, trace_id, check_reviewer(reviewer))

    async def submit(self, trace_id: str, reviewer: str, verdict: str, output: JSON = None,
                     reason: str | None = None) -> ReviewItem:
        """Record a verdict; returns the item, closed when this was its last verdict.

        400 ``invalid_request`` for a bad payload, 404 ``review_not_found``,
        409 ``review_closed`` / ``review_duplicate``.
        """
        reviewer = check_reviewer(reviewer)
        if verdict not in VERDICTS:
            raise InvalidRequest(f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}",
                                 param="verdict")
        checked: Verdict = verdict
        reason = check_reason(reason, required=checked == "reject")
        item = await self.get(trace_id)
        if item.status != "pending":
            raise ReviewClosed(f"review item '{trace_id}' is closed (final verdict: "
                               f"{item.final_verdict})", param="trace_id")
        spec = self.feature_spec(item.feature)
        if checked == "edit":
            output = check_output(output, spec)
        elif output is not None:
            raise InvalidRequest(f"a verdict '{checked}' takes no output; send verdict 'edit' "
                                 "with the corrected output", param="output")
        dataset = dataset_for(item.feature, spec)

        def on_close(conn: Connection, closed: ReviewItem) -> None:
            DatasetSink.write(conn, example_of(closed, dataset))

        result = await asyncio.to_thread(self.store.record, trace_id, reviewer, checked, output,
                                         reason, on_close=on_close)
        final = final_of(result)
        if final is not None:
            self.keel.pipeline.hub.resolve(trace_id, final)
        return result


def check_reviewer(reviewer: object) -> str:
    if not isinstance(reviewer, str) or not reviewer.strip():
        raise InvalidRequest("reviewer must be a non-empty string (who is reviewing)",
                             param="reviewer")
    reviewer = reviewer.strip()
    if len(reviewer) > MAX_REVIEWER or not reviewer.isprintable():
        raise InvalidRequest(f"reviewer must be printable and at most {MAX_REVIEWER} characters",
                             param="reviewer")
    return reviewer


def check_reason(reason: object, *, required: bool) -> str | None:
    if reason is not None and not isinstance(reason, str):
        raise InvalidRequest("reason must be a string", param="reason")
    reason = reason.strip() if reason else None
    if required and not reason:
        raise InvalidRequest("a reject needs a reason (what is wrong with the output)",
                             param="reason")
    if reason is not None and len(reason) > MAX_REASON:
        raise InvalidRequest(f"reason is longer than {MAX_REASON} characters", param="reason")
    return reason


def check_output(output: JSON, spec: FeatureSpec | None) -> JSON:
    """The corrected output of an edit, in the feature's output shape.

    Label features take a label (``"card_arrival"`` or ``{"label": "card_arrival"}``)
    that must be one of the feature's labels; text features take a string or
    ``{"text": ...}``; other features any JSON value but null.
    """
    if output is None:
        raise InvalidRequest("an edit needs the corrected output", param="output")
    kind = spec.output.kind if spec is not None else None
    if kind == "label":
        label = output.get("label") if isinstance(output, dict) and set(output) == {"label"} \
            else output
        if not isinstance(label, str):
            raise InvalidRequest('a label feature\'s output is a label: "name" or '
                                 '{"label": "name"}', param="output")
        labels = (spec.output.labels if spec is not None else None) or []
        if label not in labels:
            folded = {name.lower(): name for name in labels}
            close = [folded[m] for m in difflib.get_close_matches(label.lower(), list(folded), n=3)]
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise InvalidRequest(f"'{label}' is not a label of this feature{hint}",
                                 param="output")
        return {"label": label}
    if kind == "text":
        text = output.get("text") if isinstance(output, dict) and set(output) == {"text"} \
            else output
        if not isinstance(text, str):
            raise InvalidRequest('a text feature\'s output is a string or {"text": "..."}',
                                 param="output")
        return {"text": text}
    return output
