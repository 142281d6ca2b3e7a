"""live_metrics: one version's numbers in a window, read from events and review items."""

from __future__ import annotations

from pathlib import Path

import pytest

from keel.control.live_metrics import live_metrics
from keel.store import Store
from keel.store.reviews import ReviewStore
from keel.types import Decision, Event, OnFail, ReviewRequest, ValidationResult
from tests.backends import store_at

T = 1_700_000_000.0


def event(i: int, routed: str | None, decision: Decision = Decision.ACCEPTED, *,
          ts: float = T + 10, failed: bool = False, latency: float = 100.0,
          cost: float | None = 0.002, feature: str = "triage") -> Event:
    answered = {Decision.ERROR: None, Decision.FALLBACK: "v1"}.get(decision, routed)
    return Event(
        trace_id=f"t{i}", ts=ts, feature=feature, version=answered, decision=decision,
        confidence=0.8, latency_ms=latency, timings_ms={}, input_tokens=1, output_tokens=1,
        cost_usd=cost, attempts=[],
        validations=[ValidationResult("a", True, OnFail.LOG),
                     ValidationResult("b", not failed, OnFail.REVIEW, "no")],
        input=None, output=None, routed=routed)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = store_at(tmp_path / "keel.db")
    s.migrate()
    conn = s.connect()
    s.write_events(conn, [
        event(1, "v2"), event(2, "v2", Decision.ERROR, cost=0.0),
        event(3, "v2", Decision.FALLBACK),  # the candidate failed, v1 answered: an error of v2
        event(4, "v2", Decision.REVIEW, failed=True, latency=900.0),
        event(5, "v2", Decision.REFUSED, failed=True, cost=None),
        event(6, "v2", ts=T - 1),  # before the window
        event(7, "v2", ts=T + 100),  # after `until`
        event(8, "v1"), event(9, "v1", feature="other"), event(10, None, Decision.REFUSED),
    ])
    s.write_reviews(conn, [
        ReviewRequest(f"r{i}", T + 5, "triage", "v2", "deferred", 0.3, "low", {}, {}, [])
        for i in range(4)])
    conn.close()
    reviews = ReviewStore(s)
    for trace_id, verdict in (("r0", "approve"), ("r1", "edit"), ("r2", "reject")):
        reviews.record(trace_id, "ann", verdict, {"label": "x"} if verdict == "edit" else None,
                       "bad" if verdict == "reject" else None)
    return s


def test_counts_per_routed_version(store: Store) -> None:
    m = live_metrics(store, "triage", "v2", T, T + 50)
    assert (m.calls, m.errors, m.validation_failures, m.reviews, m.refusals) == (5, 2, 2, 1, 1)
    assert (m.verdicts, m.overrides) == (3, 2)  # r3 is still pending
    assert m.cost_known == 4 and m.cost_sum == pytest.approx(0.006)
    assert sorted(m.latencies) == [100.0] * 4 + [900.0]
    assert m.latency_p95_ms == pytest.approx(740.0)
    assert m.to_json()["latency_samples"] == 5
    # without `until`: everything since
    assert live_metrics(store, "triage", "v2", T).calls == 6
    v1 = live_metrics(store, "triage", "v1", T)
    assert (v1.calls, v1.verdicts) == (1, 0)
    empty = live_metrics(store, "triage", "v3", T)
    assert empty.calls == 0 and empty.latency_p95_ms is None and empty.cost_per_call is None


@pytest.mark.sqlite_only  # reads SQLite's own catalogue
def test_uses_the_routed_index(store: Store) -> None:
    conn = store.connect()
    try:
        plan = " ".join(str(tuple(r)) for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT COUNT(*) FROM events WHERE feature = ? AND routed = ?"
            " AND ts >= ?", ("triage", "v2", T)))
    finally:
        conn.close()
    assert "events_feature_routed_ts" in plan
