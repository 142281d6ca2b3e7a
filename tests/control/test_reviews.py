"""ReviewQueue: checking verdicts, writing labelled examples, waking held callers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from keel.control.datasets import DatasetSink
from keel.control.reviews import ReviewQueue
from keel.errors import (
    FeatureNotFound,
    InvalidRequest,
    ReviewClosed,
    ReviewDuplicate,
    ReviewNotFound,
)
from keel.gateway import Keel
from keel.stages.hold import ReviewHub
from keel.types import Completion, Decision
from tests.conftest import basic_feature, scripted, settings_in, spec_with


async def queued(keel: Keel, n: int = 1, confidence: float = 0.3) -> list[str]:
    """n calls whose low confidence sends them to review; their trace ids."""
    p1 = scripted(keel, "p1")
    p1.script = [Completion(output={"label": "b"}, confidence=confidence) for _ in range(n)]
    ids = []
    for i in range(n):
        outcome = await keel.call("f", {"text": f"message {i}"})
        assert outcome.decision is Decision.REVIEW
        ids.append(outcome.trace_id)
    keel.writer.flush()
    return ids


def keel_with(tmp_path: Path, **review: Any) -> Keel:
    return Keel(spec_with(basic_feature(review=review)), settings_in(tmp_path))


@pytest.fixture
async def keel(tmp_path: Path) -> AsyncIterator[Keel]:
    async with keel_with(tmp_path, dataset="triage-gold") as k:
        yield k


async def test_an_approved_item_becomes_an_example_with_provenance(keel: Keel) -> None:
    (trace_id,) = await queued(keel)
    queue = ReviewQueue(keel)
    item = await queue.next("ann")
    assert item is not None and item.trace_id == trace_id and item.assigned_to == "ann"
    closed = await queue.submit(trace_id, " ann ", "approve")
    assert closed.status == "done" and closed.final_output == {"label": "b"}
    sink = DatasetSink(keel.store)
    (example,) = sink.list("triage-gold")
    assert example.example_id == trace_id and example.input == {"text": "message 0"}
    assert example.expected == {"label": "b"}
    assert example.provenance == {
        "trace_id": trace_id, "version": "v1", "reviewers": ["ann"], "time": closed.decided_at,
        "original_output": {"label": "b"}, "verdict": "approve", "source": "review"}
    assert example.metadata["verdict"] == "approve" and example.metadata["confidence"] == 0.3
    assert await queue.next("ann") is None


async def test_edits_and_rejects_are_kept(keel: Keel) -> None:
    edit_id, reject_id = await queued(keel, 2)
    queue = ReviewQueue(keel)
    edited = await queue.submit(edit_id, "ann", "edit", "a")  # a bare label is accepted
    assert edited.final_verdict == "edit" and edited.final_output == {"label": "a"}
    rejected = await queue.submit(reject_id, "ann", "reject", reason="gibberish input")
    assert rejected.final_verdict == "reject" and rejected.final_output is None
    sink = DatasetSink(keel.store)
    assert sink.count("triage-gold") == 2
    negative = sink.get("triage-gold", reject_id)
    assert negative is not None and negative.expected is None
    assert negative.metadata["verdict"] == "reject"
    assert negative.metadata["votes"] == [
        {"reviewer": "ann", "verdict": "reject", "output": None, "reason": "gibberish input"}]
    positive = sink.get("triage-gold", edit_id)
    assert positive is not None and positive.provenance["original_output"] == {"label": "b"}


def test_the_sink_is_idempotent(tmp_path: Path) -> None:
    keel = keel_with(tmp_path)
    keel.store.migrate()
    sink = DatasetSink(keel.store)
    provenance: Any = {"trace_id": "t", "version": None, "reviewers": [], "time": 0.0,
                       "original_output": None, "verdict": "approve", "source": "import"}
    assert sink.add("d", "e1", {"text": "x"}, {"label": "a"}, {}, provenance)
    assert not sink.add("d", "e1", {"text": "y"}, {"label": "b"}, {}, provenance)
    (example,) = sink.list("d")
    assert example.input == {"text": "x"} and sink.count("d") == 1 and sink.count("other") == 0
    with pytest.raises(ValueError):
        sink.add("", "e2", None, None, {}, provenance)


@pytest.mark.parametrize(("reviewer", "verdict", "output", "reason", "param"), [
    ("", "approve", None, None, "reviewer"),
    ("  ", "approve", None, None, "reviewer"),
    ("x" * 101, "approve", None, None, "reviewer"),
    ("bad\nname", "approve", None, None, "reviewer"),
    ("ann", "maybe", None, None, "verdict"),
    ("ann", "edit", None, None, "output"),
    ("ann", "edit", "nope", None, "output"),
    ("ann", "edit", {"label": 3}, None, "output"),
    ("ann", "edit", ["a"], None, "output"),
    ("ann", "reject", None, None, "reason"),
    ("ann", "reject", None, "   ", "reason"),
    ("ann", "reject", None, "x" * 2001, "reason"),
    ("ann", "approve", {"label": "a"}, None, "output"),
])
async def test_bad_verdicts_are_400(keel: Keel, reviewer: str, verdict: str, output: Any,
                                    reason: str | None, param: str) -> None:
    (trace_id,) = await queued(keel)
    with pytest.raises(InvalidRequest) as info:
        await ReviewQueue(keel).submit(trace_id, reviewer, verdict, output, reason)
    assert info.value.param == param and info.value.status == 400


async def test_a_near_miss_label_gets_a_hint(keel: Keel) -> None:
    (trace_id,) = await queued(keel)
    with pytest.raises(InvalidRequest, match="did you mean"):
        await ReviewQueue(keel).submit(trace_id, "ann", "edit", {"label": "A"})


async def test_unknown_closed_and_duplicate(tmp_path: Path) -> None:
    async with keel_with(tmp_path, overlap=2) as keel:
        (trace_id,) = await queued(keel)
        queue = ReviewQueue(keel)
        with pytest.raises(ReviewNotFound) as missing:
            await queue.submit("nope", "ann", "approve")
        assert (missing.value.code, missing.value.status) == ("review_not_found", 404)
        with pytest.raises(ReviewNotFound):
            await queue.get("nope")
        await queue.submit(trace_id, "ann", "approve")
        with pytest.raises(ReviewDuplicate) as dup:
            await queue.submit(trace_id, "ann", "approve")
        assert (dup.value.code, dup.value.status) == ("review_duplicate", 409)
        await queue.submit(trace_id, "bob", "approve")
        with pytest.raises(ReviewClosed) as closed:
            await queue.submit(trace_id, "cy", "approve")
        assert (closed.value.code, closed.value.status) == ("review_closed", 409)
        with pytest.raises(FeatureNotFound):
            await queue.next("ann", feature="nope")
        with pytest.raises(FeatureNotFound):
            await queue.list(feature="nope")


async def test_the_features_order_is_the_default(tmp_path: Path) -> None:
    async with keel_with(tmp_path, order="oldest") as keel:
        old, new = await queued(keel, 1, 0.4) + await queued(keel, 1, 0.2)
        queue = ReviewQueue(keel)
        assert queue.default_order("f") == queue.default_order(None) == "oldest"
        page = await queue.list()
        assert [i.trace_id for i in page.items] == [old, new] and page.total == 2
        assert [i.trace_id for i in (await queue.list(order="confidence")).items] == [new, old]
        item = await queue.next("ann")
        assert item is not None and item.trace_id == old


async def test_a_held_caller_gets_the_verdict_at_once(tmp_path: Path) -> None:
    async with keel_with(tmp_path, mode="held", hold_timeout_s=20) as keel:
        scripted(keel, "p1").script = [Completion(output={"label": "b"}, confidence=0.3)]
        call = asyncio.create_task(keel.call("f", {"text": "held"}))
        queue = ReviewQueue(keel)
        item = None
        for _ in range(200):
            await asyncio.sleep(0.01)
            item = await queue.next("ann")
            if item is not None:
                break
        assert item is not None and item.mode == "held" and not call.done()
        await queue.submit(item.trace_id, "ann", "edit", {"label": "a"})
        outcome = await asyncio.wait_for(call, 2)
        assert outcome.review == "edited" and outcome.output == {"label": "a"} and outcome.reviewed
        assert outcome.timings_ms["hold"] < 5000


async def test_poll_finds_a_verdict_given_elsewhere(keel: Keel) -> None:
    (trace_id,) = await queued(keel)
    queue = ReviewQueue(keel)
    assert await queue.poll(trace_id) is None
    assert await queue.poll("nope") is None
    hub = ReviewHub(poll=queue.poll, poll_interval_s=0.01)  # as another process would
    waiter = asyncio.create_task(hub.wait(trace_id, 5))
    await asyncio.sleep(0.03)
    # the verdict lands in the store without this hub's resolve (another process)
    await asyncio.to_thread(queue.store.record, trace_id, "ann", "reject", None, "off topic")
    final = await asyncio.wait_for(waiter, 2)
    assert final is not None and final.verdict == "reject" and final.output is None
    assert final.reviewers == ["ann"] and final.reason == "off topic"


async def test_stats(keel: Keel) -> None:
    first, _ = await queued(keel, 2)
    queue = ReviewQueue(keel)
    await queue.submit(first, "ann", "reject", reason="wrong")
    (stats,) = await queue.stats()
    assert (stats.feature, stats.pending, stats.done, stats.rejected_share) == ("f", 1, 1, 1.0)
    assert await queue.stats("f") == [stats]
