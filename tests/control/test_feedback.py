"""Feedback in the control plane: outcome rates as live metrics, canaries judged on
them, and the rollout spec that names them."""

from __future__ import annotations

from pathlib import Path

import pytest

from keel.control.canary_stats import RATE_METRICS, judge, rate_test_count
from keel.control.feedback import FeedbackStore, parse
from keel.control.live_metrics import VersionMetrics, live_metrics
from keel.errors import ConfigError
from keel.spec import RolloutSpec, parse_spec
from keel.store import Store
from keel.types import Decision, Event
from tests.backends import store_at
from tests.conftest import basic_feature
from tests.control.rollout_fakes import T0, Clock, FakeRegistry, make_controller

T = 1_700_000_000.0


def event(i: int, routed: str, ts: float = T + 10) -> Event:
    return Event(trace_id=f"t{i}", ts=ts, feature="triage", version=routed,
                 decision=Decision.ACCEPTED, confidence=0.8, latency_ms=10.0, timings_ms={},
                 input_tokens=1, output_tokens=1, cost_usd=None, attempts=[], validations=[],
                 input={"text": f"m{i}"}, output={"label": "a"}, routed=routed)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = store_at(tmp_path / "keel.db")
    s.migrate()
    with s.connection() as conn:
        s.write_events(conn, [event(1, "v2"), event(2, "v2"), event(3, "v2"),
                              event(4, "v2", ts=T - 5), event(5, "v1")])
    return s


def outcome(store: Store, trace_id: str, name: str, value: float | None = None,
            source: str = "crm") -> None:
    feedbacks = FeedbackStore(store)
    call = feedbacks.call(trace_id)
    assert call is not None
    body: dict[str, object] = {"trace_id": trace_id, "kind": "outcome", "name": name,
                               "source": source}
    if value is not None:
        body["value"] = value
    feedbacks.record(parse(body), call)


def test_outcomes_are_live_metrics_of_the_routed_version_by_call_time(store: Store) -> None:
    outcome(store, "t1", "ticket_resolved")
    outcome(store, "t1", "ticket_resolved", source="agent")  # one call, counted once
    outcome(store, "t2", "ticket_resolved", value=0)  # it did not happen
    outcome(store, "t3", "refund_issued", value=20)
    outcome(store, "t4", "ticket_resolved")  # a call before the window
    outcome(store, "t5", "ticket_resolved")  # another version
    m = live_metrics(store, "triage", "v2", T, T + 50)
    assert m.calls == 3 and m.outcomes == {"ticket_resolved": 1, "refund_issued": 1}
    assert m.to_json()["outcomes"] == {"ticket_resolved": 1, "refund_issued": 1}
    assert live_metrics(store, "triage", "v2", T - 10).outcomes["ticket_resolved"] == 2
    assert live_metrics(store, "triage", "v1", T).outcomes == {"ticket_resolved": 1}
    assert live_metrics(store, "triage", "v3", T).outcomes == {}


SPEC = RolloutSpec(min_calls=200, outcomes={"ticket_resolved": "higher",
                                            "refund_issued": "lower"})


def metrics(version: str, calls: int, **outcomes: int) -> VersionMetrics:
    return VersionMetrics(version, calls=calls, latencies=(100.0,) * calls, outcomes=outcomes)


def test_outcomes_count_in_the_bonferroni_budget() -> None:
    assert rate_test_count(SPEC) == (len(RATE_METRICS) + 2) * len(SPEC.steps)


def test_a_canary_that_resolves_fewer_tickets_is_worse() -> None:
    j = judge(metrics("v2", 1000, ticket_resolved=300), metrics("v1", 1000, ticket_resolved=450),
              SPEC)
    assert j.verdict == "worse" and j.metric == "outcome:ticket_resolved"
    assert "higher is better" in j.reason
    check = next(c for c in j.checks if c.metric == "outcome:ticket_resolved")
    assert check.candidate == 0.3 and check.baseline == 0.45 and check.worse


def test_a_canary_that_issues_more_refunds_is_worse() -> None:
    j = judge(metrics("v2", 1000, refund_issued=120), metrics("v1", 1000, refund_issued=50),
              SPEC)
    assert j.verdict == "worse" and j.metric == "outcome:refund_issued"


def test_better_or_equal_outcomes_pass() -> None:
    better = judge(metrics("v2", 1000, ticket_resolved=500, refund_issued=10),
                   metrics("v1", 1000, ticket_resolved=400, refund_issued=60), SPEC)
    assert better.verdict == "pass"
    noise = judge(metrics("v2", 1000, ticket_resolved=440), metrics("v1", 1000, ticket_resolved=450),
                  SPEC)
    assert noise.verdict == "pass"
    names = {c.metric for c in noise.checks}
    assert {"outcome:ticket_resolved", "outcome:refund_issued"} <= names


def test_outcomes_not_declared_are_shown_but_not_judged() -> None:
    j = judge(metrics("v2", 1000, ticket_resolved=10), metrics("v1", 1000, ticket_resolved=900),
              RolloutSpec(min_calls=200))
    assert j.verdict == "pass"
    assert not any(c.metric.startswith("outcome:") for c in j.checks)


def test_the_rollout_spec_names_outcomes(tmp_path: Path) -> None:
    spec = parse_spec({"providers": {"p1": {"type": "openai", "base_url": "http://x"}},
                       "features": {"f": basic_feature(
                           versions={"v1": {"provider": "p1", "model": "m"}}, fallbacks=[],
                           rollout={"outcomes": {"ticket_resolved": "higher"}})}})
    assert spec.features["f"].rollout.outcomes == {"ticket_resolved": "higher"}
    for bad in ({"Ticket": "higher"}, {"ticket_resolved": "more"}):
        with pytest.raises(ConfigError):
            parse_spec({"providers": {"p1": {"type": "openai", "base_url": "http://x"}},
                        "features": {"f": basic_feature(
                            versions={"v1": {"provider": "p1", "model": "m"}}, fallbacks=[],
                            rollout={"outcomes": bad})}})


def test_the_controller_rolls_back_a_canary_that_resolves_fewer_tickets(tmp_path: Path) -> None:
    store = store_at(tmp_path / "rollout.db")
    store.migrate()
    spec = RolloutSpec(steps=[0.5, 1.0], min_calls=200, min_step_s=60, require_gate=False,
                       outcomes={"ticket_resolved": "higher"})
    clock = Clock()
    controller = make_controller(store, FakeRegistry(), clock, live_metrics, spec)
    rollout = controller.start("triage", "v2", actor="cli:ann")
    events = [event(1000 + i, "v1" if i < 300 else "v2", ts=T0 + 5) for i in range(600)]
    with store.connection() as conn:
        store.write_events(conn, events)
    resolved = [e.trace_id for e in events[:150]] + [e.trace_id for e in events[300:360]]
    for trace_id in resolved:  # v1: 50% of its calls, v2: 20%
        outcome(store, trace_id, "ticket_resolved")
    clock.advance(120)
    (transition,) = controller.tick()
    assert transition.rollout_id == rollout.id and transition.to_state == "rolled_back"
    assert "outcome ticket_resolved 20.00% vs 50.00%" in transition.reason
    assert transition.metrics is not None
    candidate = transition.metrics["candidate"]
    assert isinstance(candidate, dict) and candidate["outcomes"] == {"ticket_resolved": 60}
