"""End-user feedback and business outcomes, attached to a call by its trace id.

Five kinds, each with one payload shape (:func:`parse`):

=============  ===========================================================
``thumbs``     ``value``: ``"up"`` or ``"down"``
``rating``     ``value``: a number from 1 to 5
``comment``    ``comment``: the text
``correction`` ``output``: what the answer should have been, in the feature's
               output shape (``{"label": ...}``, ``{"text": ...}``, any JSON)
``outcome``    ``name``: a business result (``ticket_resolved``); ``value``: an
               optional number (0 says it did not happen)
=============  ===========================================================

Every kind also takes ``source`` (who says so: ``user`` by default, ``crm``,
``support-desk`` ...), an optional ``comment`` and ``metadata`` (a JSON object).

One ``feedback`` row per (trace id, kind, outcome name, source): sending the same
payload again changes nothing (``unchanged``), another payload for the same key
replaces it (``updated``, its ``revision`` goes up). The call's feature, versions, time
and user are copied into the row, so the per-version numbers need no join with events.

**Weak labels.** A correction (any feature) and thumbs on a label feature become one
example per (trace id, source) in the draft of the dataset ``<feature>-feedback``,
with provenance ``source: "feedback"`` and metadata ``label_quality: "weak"``: a
correction gives the expected output, thumbs up confirms the model's output, thumbs
down makes a negative (no expected output). The example is rewritten when that
source's feedback changes; it never goes to the review dataset or to a dataset a gate
uses (:func:`weak_label_dataset`), and is written only from the stored event (so what
the event store keeps, and nothing more, reaches a dataset).

Synchronous, like the store: async callers run it in a thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import orjson

from keel.control.datasets import DatasetSink, DatasetStore, Example, Provenance, parse_ref
from keel.control.reviews import check_output, dataset_for
from keel.errors import InvalidFeedback, InvalidRequest
from keel.spec import OUTCOME_NAME, FeatureSpec
from keel.stages.privacy import FULL, Policy, redact_value
from keel.stages.scrub import Scrubber
from keel.store.db import Connection, Store
from keel.types import JSON

Kind = Literal["thumbs", "rating", "comment", "correction", "outcome"]
KINDS: tuple[Kind, ...] = get_args(Kind)
Result = Literal["created", "unchanged", "updated"]
LABEL_KINDS: frozenset[str] = frozenset({"thumbs", "correction"})

TRACE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
SOURCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,63}")
MAX_COMMENT = 4000
MAX_METADATA_BYTES = 16 * 1024
RATING_RANGE = (1.0, 5.0)
DEFAULT_SOURCE = "user"
_FIELDS = frozenset({"trace_id", "kind", "value", "name", "comment", "output", "source",
                     "metadata"})
_SHAPE = ('{"trace_id": "...", "kind": "thumbs|rating|comment|correction|outcome", '
          '"value": ..., "name": "...", "comment": "...", "output": ..., "source": "...", '
          '"metadata": {...}}')


@dataclass(frozen=True, slots=True)
class FeedbackIn:
    """One piece of feedback as sent, checked by :func:`parse`."""

    trace_id: str
    kind: Kind
    source: str = DEFAULT_SOURCE
    name: str = ""  # outcomes only
    value: float | None = None  # thumbs: 1 up, 0 down; rating 1..5; outcome: optional
    comment: str | None = None
    output: JSON = None  # corrections only
    metadata: dict[str, JSON] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CallRef:
    """The call feedback is about: from its stored event, or (``stored`` False) from the
    calls this process answered whose events are still on their way to the store."""

    trace_id: str
    feature: str
    version: str | None  # the version that answered
    routed: str | None  # the version the router chose first (what canaries are judged by)
    ts: float
    user: str | None
    stored: bool = True


@dataclass(frozen=True, slots=True)
class Feedback:
    """One stored piece of feedback."""

    id: str
    trace_id: str
    kind: Kind
    name: str
    source: str
    feature: str
    version: str | None
    routed: str | None
    call_ts: float
    user: str | None
    value: float | None
    comment: str | None
    output: JSON
    metadata: dict[str, JSON]
    key: str | None
    revision: int
    created_at: float
    updated_at: float

    def to_json(self) -> dict[str, JSON]:
        value: JSON = self.value
        if self.kind == "thumbs":
            value = "up" if self.value else "down"
        return {
            "id": self.id, "trace_id": self.trace_id, "feature": self.feature,
            "version": self.version, "routed": self.routed, "kind": self.kind,
            "name": self.name or None, "source": self.source, "value": value,
            "comment": self.comment, "output": self.output, "metadata": self.metadata,
            "user": self.user, "key_id": self.key, "revision": self.revision,
            "call_ts": self.call_ts, "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True, slots=True)
class LabelRef:
    """The weak-label example a piece of feedback wrote."""

    dataset: str
    example_id: str
    label: str  # correction | thumbs_up | thumbs_down

    def to_json(self) -> dict[str, JSON]:
        return {"dataset": self.dataset, "example_id": self.example_id, "label": self.label}


@dataclass(frozen=True, slots=True)
class Recorded:
    result: Result
    feedback: Feedback
    changed: tuple[str, ...] = ()  # the fields an update changed
    example: LabelRef | None = None

    def to_json(self) -> dict[str, JSON]:
        return {"result": self.result, "changed": list(self.changed),
                "feedback": self.feedback.to_json(),
                "example": None if self.example is None else self.example.to_json()}


# --- checking what was sent -----------------------------------------------------------


def _bad(message: str, param: str) -> InvalidFeedback:
    return InvalidFeedback(message, param=param)


def _number(value: object, param: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(f"{param} must be a finite number, got {_kind(value)}", param)
    return float(value)


def parse(data: Mapping[str, Any]) -> FeedbackIn:
    """Check a feedback payload (the body of ``POST /api/feedback``); 422
    ``invalid_feedback`` naming the field when it cannot be used. A correction's shape
    is checked against its feature later (:func:`check_correction`)."""
    unknown = set(data) - _FIELDS
    if unknown:
        first = sorted(unknown)[0]
        raise _bad(f"unknown field(s) {', '.join(sorted(unknown))}; the body is {_SHAPE}", first)
    trace_id = data.get("trace_id")
    if not isinstance(trace_id, str) or not TRACE_ID.fullmatch(trace_id):
        raise _bad('"trace_id" must be the trace id of a call (the "trace_id" of its answer, '
                   "or its x-keel-trace-id header)", "trace_id")
    kind = data.get("kind")
    if kind not in KINDS:
        raise _bad(f'"kind" must be one of {", ".join(KINDS)}, got {_show(kind)}', "kind")
    source = data.get("source", DEFAULT_SOURCE)
    if not isinstance(source, str) or not SOURCE.fullmatch(source):
        raise _bad('"source" must be up to 64 letters, digits or ._:@/- (who gives the '
                   'feedback: "user", "crm", ...)', "source")
    comment = data.get("comment")
    if comment is not None:
        if not isinstance(comment, str):
            raise _bad(f'"comment" must be a string, got {_kind(comment)}', "comment")
        comment = comment.strip() or None
        if comment is not None and len(comment) > MAX_COMMENT:
            raise _bad(f'"comment" is longer than {MAX_COMMENT} characters', "comment")
    metadata = data.get("metadata", {})
    if not isinstance(metadata, dict):
        raise _bad(f'"metadata" must be a JSON object, got {_kind(metadata)}', "metadata")
    if len(orjson.dumps(metadata)) > MAX_METADATA_BYTES:
        raise _bad(f'"metadata" is over {MAX_METADATA_BYTES // 1024} KiB', "metadata")
    raw_value, name, output = data.get("value"), data.get("name"), data.get("output")
    value: float | None = None
    checked: Kind = kind
    if checked != "outcome" and name is not None:
        raise _bad('"name" is for kind outcome only', "name")
    if checked != "correction" and output is not None:
        raise _bad('"output" is for kind correction only (the corrected output)', "output")
    if checked in ("comment", "correction") and raw_value is not None:
        raise _bad(f'kind {checked} takes no "value"', "value")
    if checked == "thumbs":
        if raw_value not in ("up", "down"):
            raise _bad(f'thumbs need "value": "up" or "down", got {_show(raw_value)}', "value")
        value = 1.0 if raw_value == "up" else 0.0
    elif checked == "rating":
        value = _number(raw_value, "value")
        lo, hi = RATING_RANGE
        if not lo <= value <= hi:
            raise _bad(f'a rating\'s "value" is from {lo:g} to {hi:g}, got {value:g}', "value")
    elif checked == "comment":
        if comment is None:
            raise _bad('a comment needs "comment": the text', "comment")
    elif checked == "correction":
        if output is None:
            raise _bad('a correction needs "output": what the answer should have been', "output")
    else:  # outcome
        if not isinstance(name, str) or not OUTCOME_NAME.fullmatch(name):
            raise _bad('an outcome needs "name": lower-case letters, digits and _, starting '
                       f"with a letter (e.g. ticket_resolved), got {_show(name)}", "name")
        value = None if raw_value is None else _number(raw_value, "value")
    return FeedbackIn(trace_id, checked, source, name or "", value, comment, output, metadata)


def check_correction(feedback: FeedbackIn, spec: FeatureSpec | None) -> FeedbackIn:
    """A correction's output in its feature's output shape (a label of the feature, a
    text, any JSON): normalised like a reviewer's edit, 422 when it does not fit."""
    if feedback.kind != "correction":
        return feedback
    try:
        output = check_output(feedback.output, spec)
    except InvalidRequest as exc:
        raise _bad(exc.message, "output") from None
    return dataclasses.replace(feedback, output=output)


def sanitized(feedback: FeedbackIn, scrubber: Scrubber, spec: FeatureSpec | None) -> FeedbackIn:
    """What of a piece of feedback may be kept, as for its call's event
    (:mod:`keel.stages.privacy`): secrets masked in the comment, the correction and the
    metadata; under a feature ``privacy`` that does not keep outputs in full, the
    correction is redacted (``redacted``) or not kept at all (``none``), and the comment
    is redacted unless the policy is full."""
    policy = FULL if spec is None else Policy.of(spec.privacy)
    output = scrubber.value(feedback.output)
    if policy.output == "none":
        output = None
    elif policy.output == "redacted":
        output = redact_value(output, policy.kinds)
    comment = None if feedback.comment is None else scrubber.text(feedback.comment)
    if comment is not None and not policy.full:
        comment = redact_value(comment, policy.kinds)
    return dataclasses.replace(feedback, output=output, comment=comment,
                               metadata=scrubber.value(feedback.metadata))


def weak_label_dataset(store: Store, feature: str, spec: FeatureSpec | None) -> str | None:
    """Where ``feature``'s weak labels go: ``<feature>-feedback``, unless that name is the
    feature's review dataset or a dataset its gate uses (then nowhere: weak labels never
    mix with reviewer verdicts or gate data)."""
    name = f"{feature}-feedback"
    taken = {dataset_for(feature, spec)}
    if spec is not None and spec.gate.dataset:
        with contextlib.suppress(InvalidRequest):  # a bad ref fails at the gate, not here
            taken.add(parse_ref(spec.gate.dataset)[0])
    pinned = DatasetStore(store).pinned(feature)
    if pinned is not None:
        taken.add(pinned[0])
    return None if name in taken else name


# --- the store --------------------------------------------------------------------------


class FeedbackStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    def call(self, trace_id: str) -> CallRef | None:
        """The stored call with this trace id, or None."""
        with self.store.connection() as conn:
            row = conn.execute("SELECT trace_id, feature, version, routed, ts, user_id"
                               " FROM events WHERE trace_id = ?", (trace_id,)).fetchone()
        if row is None:
            return None
        return CallRef(row["trace_id"], row["feature"], row["version"], row["routed"],
                       float(row["ts"]), row["user_id"])

    def record(self, feedback: FeedbackIn, call: CallRef, *, key: str | None = None,
               dataset: str | None = None, output_kind: str | None = None,
               now: float | None = None) -> Recorded:
        """Create, keep or update the row for (trace id, kind, name, source), and for a
        label kind rewrite the weak-label example in ``dataset`` (None: none), all in one
        transaction."""
        now = time.time() if now is None else now
        key_args = (feedback.trace_id, feedback.kind, feedback.name, feedback.source)
        payload = (feedback.value, feedback.comment, _json(feedback.output),
                   _dumps(feedback.metadata))
        with self.store.connection() as conn, conn:
            self.store.lock(conn, "feedback")
            row = conn.execute("SELECT * FROM feedback WHERE trace_id = ? AND kind = ?"
                               " AND name = ? AND source = ?", key_args).fetchone()
            changed: tuple[str, ...] = ()
            if row is None:
                result: Result = "created"
                fid = "fb_" + secrets.token_hex(12)
                conn.execute(
                    "INSERT INTO feedback (id, trace_id, kind, name, source, feature, version,"
                    " routed, call_ts, user_id, value, comment, output, metadata, key_id,"
                    " revision, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?)",
                    (fid, *key_args, call.feature, call.version, call.routed, call.ts,
                     call.user, *payload, key, now, now))
            else:
                fid = row["id"]
                stored = (row["value"], row["comment"], row["output"], row["metadata"])
                names = ("value", "comment", "output", "metadata")
                changed = tuple(n for n, a, b in zip(names, stored, payload, strict=True)
                                if not _same(n, a, b))
                result = "updated" if changed else "unchanged"
                if changed:
                    conn.execute(
                        "UPDATE feedback SET value = ?, comment = ?, output = ?, metadata = ?,"
                        " key_id = ?, revision = revision + 1, updated_at = ? WHERE id = ?",
                        (*payload, key, now, fid))
            record = _feedback(conn.execute("SELECT * FROM feedback WHERE id = ?",
                                            (fid,)).fetchone())
            example = None
            if dataset is not None and feedback.kind in LABEL_KINDS:
                example = _write_label(conn, record.trace_id, record.source, dataset,
                                       output_kind)
        return Recorded(result, record, changed, example)

    def list(self, *, trace_id: str | None = None, feature: str | None = None,
             kind: str | None = None, version: str | None = None, source: str | None = None,
             since: float | None = None, until: float | None = None, limit: int = 50,
             offset: int = 0) -> tuple[list[Feedback], int]:
        """Feedback newest first (by when it was last sent), and how many match."""
        where, args = _where(trace_id=trace_id, feature=feature, kind=kind, source=source,
                             version=version, since=since, until=until)
        with self.store.connection() as conn:
            total = int(conn.execute(f"SELECT COUNT(*) FROM feedback{where}", args).fetchone()[0])
            rows = conn.execute(f"SELECT * FROM feedback{where} ORDER BY updated_at DESC, id"
                                " LIMIT ? OFFSET ?", (*args, limit, offset)).fetchall()
        return [_feedback(r) for r in rows], total


def _where(**filters: Any) -> tuple[str, tuple[Any, ...]]:
    parts: list[str] = []
    args: list[Any] = []
    for column in ("trace_id", "feature", "kind", "source"):
        if filters[column] is not None:
            parts.append(f"{column} = ?")
            args.append(filters[column])
    if filters["version"] is not None:
        parts.append("COALESCE(routed, version) = ?")
        args.append(filters["version"])
    if filters["since"] is not None:
        parts.append("updated_at >= ?")
        args.append(filters["since"])
    if filters["until"] is not None:
        parts.append("updated_at < ?")
        args.append(filters["until"])
    return (" WHERE " + " AND ".join(parts) if parts else ""), tuple(args)


def _write_label(conn: Connection, trace_id: str, source: str, dataset: str,
                 output_kind: str | None) -> LabelRef | None:
    """(Re)write the weak-label example of (trace id, source) from its stored event and
    that source's thumbs and correction; None when there is nothing to label with."""
    event = conn.execute("SELECT version, decision, confidence, input, output FROM events"
                         " WHERE trace_id = ?", (trace_id,)).fetchone()
    if event is None or event["input"] is None:
        return None
    input = orjson.loads(event["input"])
    if input is None:  # payloads are not kept (KEEL_STORE_PAYLOADS=0)
        return None
    original = None if event["output"] is None else orjson.loads(event["output"])
    rows = [_feedback(r) for r in conn.execute(
        "SELECT * FROM feedback WHERE trace_id = ? AND source = ? AND kind IN"
        " ('thumbs', 'correction')", (trace_id, source))]
    by_kind = {r.kind: r for r in rows}
    chosen = by_kind.get("correction")
    if chosen is not None:
        if chosen.output is None:  # not kept (privacy: store_output none)
            return None
        label, expected = "correction", chosen.output
    else:
        chosen = by_kind.get("thumbs")
        usable = (chosen is not None and output_kind == "label" and original is not None
                  and event["decision"] not in ("error", "refused"))
        if not usable or chosen is None:
            return None
        label = "thumbs_up" if chosen.value else "thumbs_down"
        expected = original if chosen.value else None
    provenance: Provenance = {
        "trace_id": trace_id, "version": event["version"], "reviewers": [],
        "time": chosen.updated_at, "original_output": original, "verdict": label,
        "source": "feedback",
    }
    metadata: dict[str, JSON] = {
        "feature": chosen.feature, "label_quality": "weak", "feedback_source": source,
        "feedback_id": chosen.id, "decision": event["decision"],
        "confidence": event["confidence"], "comment": chosen.comment,
    }
    example_id = f"{trace_id}:{source}"
    DatasetSink.replace(conn, Example(dataset, example_id, input, expected, metadata,
                                      provenance, chosen.updated_at))
    return LabelRef(dataset, example_id, label)


def _feedback(row: Any) -> Feedback:
    return Feedback(
        id=row["id"], trace_id=row["trace_id"], kind=row["kind"], name=row["name"],
        source=row["source"], feature=row["feature"], version=row["version"],
        routed=row["routed"], call_ts=float(row["call_ts"]), user=row["user_id"],
        value=None if row["value"] is None else float(row["value"]), comment=row["comment"],
        output=None if row["output"] is None else orjson.loads(row["output"]),
        metadata=orjson.loads(row["metadata"]), key=row["key_id"], revision=int(row["revision"]),
        created_at=float(row["created_at"]), updated_at=float(row["updated_at"]))


def _same(name: str, stored: Any, sent: Any) -> bool:
    if name == "value":
        return (stored is None and sent is None) or (
            stored is not None and sent is not None and float(stored) == float(sent))
    if name in ("output", "metadata"):  # compare the values, not their spelling
        return _canonical(stored) == _canonical(sent)
    return bool(stored == sent)


def _canonical(text: str | None) -> bytes | None:
    return None if text is None else orjson.dumps(orjson.loads(text), option=orjson.OPT_SORT_KEYS)


def _json(value: JSON) -> str | None:
    return None if value is None else _dumps(value)


def _dumps(value: object) -> str:
    return orjson.dumps(value).decode()


def _kind(value: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null", int: "a number", float: "a number"}.get(type(value),
                                                                       type(value).__name__)


def _show(value: object) -> str:
    return repr(value) if isinstance(value, str) else _kind(value)
