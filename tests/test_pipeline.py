"""The pipeline end to end in-process, with scripted providers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from keel.errors import EmptyText, FeatureNotFound, ProviderBadResponse, ProviderUnavailable
from keel.gateway import Keel
from keel.types import Completion, Decision, Usage
from tests.conftest import basic_feature, scripted, settings_in, spec_with


async def test_accepted_call_has_every_field(scripted_keel: Keel) -> None:
    outcome = await scripted_keel.call("f", {"text": "hello"}, user="u1")
    assert outcome.decision is Decision.ACCEPTED
    assert outcome.output == {"label": "a"} and outcome.version == "v1"
    assert outcome.confidence == 0.9 and len(outcome.trace_id) == 32
    assert set(outcome.timings_ms) >= {"checks", "route", "invoke", "validate", "decide", "total"}
    assert outcome.cost_usd is None  # no price declared: unknown, not zero
    assert outcome.usage.input_tokens == 10


async def test_failing_champion_falls_back_and_lists_every_attempt(scripted_keel: Keel) -> None:
    scripted(scripted_keel, "p1").script = [ProviderUnavailable("p1: 500"), ProviderUnavailable("p1: 500")]
    outcome = await scripted_keel.call("f", {"text": "hello"})
    assert outcome.decision is Decision.FALLBACK and outcome.version == "v2"
    assert [(a.version, a.ok) for a in outcome.attempts] == [("v1", False), ("v1", False), ("v2", True)]


async def test_every_target_failing_is_an_error_outcome(scripted_keel: Keel) -> None:
    scripted(scripted_keel, "p1").script = [ProviderBadResponse("p1: not JSON")]
    scripted(scripted_keel, "p2").script = [ProviderBadResponse("p2: not JSON")]
    outcome = await scripted_keel.call("f", {"text": "hello"})
    assert outcome.decision is Decision.ERROR and outcome.error_code == "all_targets_failed"
    assert "p2: not JSON" in (outcome.error or "")
    assert len(outcome.attempts) == 2


async def test_validator_fallback_sends_the_call_to_the_next_target(tmp_path: Path) -> None:
    feature = basic_feature(validators=[{"type": "allowed_labels", "on_fail": "fallback"}])
    async with Keel(spec_with(feature), settings_in(tmp_path)) as keel:
        scripted(keel, "p1").script = [Completion(output={"label": "zzz"}, confidence=0.9)]
        outcome = await keel.call("f", {"text": "hello"})
        assert outcome.decision is Decision.FALLBACK and outcome.version == "v2"
        assert outcome.attempts[0].rejected_by == "validator:allowed_labels"


async def test_invalid_label_is_refused_with_safe_default(scripted_keel: Keel) -> None:
    scripted(scripted_keel, "p1").script = [Completion(output={"label": "zzz"}, confidence=0.99)]
    outcome = await scripted_keel.call("f", {"text": "hello"})
    assert outcome.decision is Decision.REFUSED and outcome.output == {"label": "unknown"}


async def test_low_confidence_goes_to_review_and_is_stored(scripted_keel: Keel) -> None:
    scripted(scripted_keel, "p1").script = [Completion(output={"label": "b"}, confidence=0.3)]
    outcome = await scripted_keel.call("f", {"text": "hello"})
    assert outcome.decision is Decision.REVIEW and not outcome.reviewed
    assert outcome.output == {"label": "b"}
    assert scripted_keel.writer.flush()
    assert scripted_keel.store.pending_reviews("f") == 1


async def test_cost_from_declared_price(tmp_path: Path) -> None:
    feature = basic_feature()
    feature["versions"]["v1"]["price"] = {"input": 1.0, "output": 2.0}
    async with Keel(spec_with(feature), settings_in(tmp_path)) as keel:
        scripted(keel, "p1").default = Completion(output={"label": "a"}, confidence=0.9,
                                                  usage=Usage(1000, 500))
        outcome = await keel.call("f", {"text": "x"})
        assert outcome.cost_usd == pytest.approx((1000 * 1.0 + 500 * 2.0) / 1e6)


async def test_bad_input_is_refused_and_recorded(scripted_keel: Keel) -> None:
    with pytest.raises(EmptyText):
        await scripted_keel.call("f", {"text": ""})
    with pytest.raises(FeatureNotFound, match="features: f"):
        await scripted_keel.call("nope", {"text": "x"})
    assert scripted_keel.writer.flush()
    (event,) = scripted_keel.store.recent_events()
    assert event["decision"] == "error" and event["error_code"] == "empty_text"
    assert not scripted(scripted_keel, "p1").requests


async def test_events_are_recorded_with_attempts(scripted_keel: Keel) -> None:
    scripted(scripted_keel, "p1").script = [ProviderUnavailable("p1: 503")]
    outcome = await scripted_keel.call("f", {"text": "hello"}, user="u7")
    assert scripted_keel.writer.flush()
    (event,) = scripted_keel.store.recent_events()
    assert event["trace_id"] == outcome.trace_id and event["user_id"] == "u7"
    assert [a["ok"] for a in event["attempts"]] == [False, True]
    assert event["input"] == {"text": "hello"} and event["output"] == {"label": "a"}
    assert event["timings"]["total"] > 0


async def test_providers_are_started_and_closed(tmp_path: Path) -> None:
    keel = Keel(spec_with(basic_feature()), settings_in(tmp_path))
    async with keel:
        assert scripted(keel, "p1").started
    assert scripted(keel, "p1").closed


async def test_an_open_circuit_skips_the_target(tmp_path: Path) -> None:
    spec = spec_with(basic_feature(retry={"max_retries": 0}), providers={
        "p1": {"type": "scripted", "circuit": {"failure_threshold": 2, "reset_after_s": 60}},
        "p2": {"type": "scripted"}})
    async with Keel(spec, settings_in(tmp_path)) as keel:
        p1 = scripted(keel, "p1")
        p1.script = [ProviderUnavailable("p1: 503")] * 2
        for _ in range(2):
            assert (await keel.call("f", {"text": "x"})).decision is Decision.FALLBACK
        outcome = await keel.call("f", {"text": "x"})
        assert outcome.decision is Decision.FALLBACK
        assert outcome.attempts[0].error_code == "circuit_open"
        assert len(p1.requests) == 2  # the third call never reached p1
        (state,) = [c for c in keel.circuits.snapshot() if c["provider"] == "p1"]
        assert state["state"] == "open" and state["retry_in_s"] > 0


async def held_keel(tmp_path: Path, timeout: float = 5.0) -> Keel:
    feature = basic_feature(review={"mode": "held", "hold_timeout_s": timeout})
    return Keel(spec_with(feature), settings_in(tmp_path))


@pytest.mark.parametrize(("verdict", "output", "review"), [
    ("approve", {"label": "b"}, "approved"),
    ("edit", {"label": "a"}, "edited"),
    ("reject", None, "rejected"),
])
async def test_held_review_returns_the_reviewers_verdict(tmp_path: Path, verdict: str,
                                                         output: object, review: str) -> None:
    from keel.stages.hold import FinalVerdict
    async with await held_keel(tmp_path) as keel:
        scripted(keel, "p1").script = [Completion(output={"label": "b"}, confidence=0.3)]
        call = asyncio.create_task(keel.call("f", {"text": "x"}, trace_id="held-1"))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if keel.pipeline.hub.waiting:
                break
        keel.writer.flush()
        assert keel.store.pending_reviews("f") == 1  # visible to reviewers while it waits
        keel.pipeline.hub.resolve("held-1", FinalVerdict(verdict, output, ["ann"]))  # type: ignore[arg-type]
        outcome = await call
        assert outcome.decision is Decision.REVIEW and outcome.review == review
        assert outcome.reviewed
        assert outcome.output == (output if verdict != "reject" else {"label": "unknown"})
        assert "hold" in outcome.timings_ms


async def test_held_review_times_out_to_the_safe_default(tmp_path: Path) -> None:
    async with await held_keel(tmp_path, timeout=0.05) as keel:
        scripted(keel, "p1").script = [Completion(output={"label": "b"}, confidence=0.3)]
        outcome = await keel.call("f", {"text": "x"})
        assert outcome.review == "timed_out" and outcome.output == {"label": "unknown"}
        assert not outcome.reviewed


async def test_deferred_review_answers_now(scripted_keel: Keel) -> None:
    scripted(scripted_keel, "p1").script = [Completion(output={"label": "b"}, confidence=0.3)]
    outcome = await scripted_keel.call("f", {"text": "x"})
    assert outcome.review == "pending" and outcome.output == {"label": "b"}


async def test_reask_sends_the_error_back_once(tmp_path: Path) -> None:
    feature = basic_feature(validators=[{"type": "allowed_labels", "on_fail": "reask"}])
    async with Keel(spec_with(feature), settings_in(tmp_path)) as keel:
        p1 = scripted(keel, "p1")
        p1.script = [Completion(output={"label": "zzz"}, confidence=0.9, text="zzz", usage=Usage(10, 1)),
                     Completion(output={"label": "b"}, confidence=0.9, text="b", usage=Usage(12, 1))]
        outcome = await keel.call("f", {"text": "x"})
        assert outcome.decision is Decision.ACCEPTED and outcome.output == {"label": "b"}
        assert outcome.usage.input_tokens == 22  # the reask's tokens count
        assert [a.rejected_by for a in outcome.attempts] == ["validator:allowed_labels (reasked)", None]
        followup = p1.requests[1].followup
        assert followup[0] == {"role": "assistant", "content": "zzz"}
        assert "'zzz' is not an allowed label" in followup[1]["content"]
        # still wrong after one reask: the safe default
        p1.script = [Completion(output={"label": "zzz"}, confidence=0.9, text="zzz")] * 2
        outcome = await keel.call("f", {"text": "x"})
        assert outcome.decision is Decision.REFUSED and len(p1.requests) == 4
