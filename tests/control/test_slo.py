"""SLO math on synthetic events with answers worked out by hand: error budgets, burn
rates per window, page and ticket alerts, the exact p95, and what is left out."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from keel.control.slo import CLIENT_ERROR_CODES, SLOStatus, slo_status
from keel.errors import ConfigError
from keel.spec import SLOSpec, parse_spec
from keel.store import Store
from keel.types import Decision, Event, OnFail, ValidationResult
from tests.backends import store_at
from tests.conftest import basic_feature

NOW = 1_800_000_000.0
MIN, HOUR, DAY = 60.0, 3600.0, 86400.0
SPEC = SLOSpec(latency_p95_ms=100, error_rate=0.01, validation_failure_rate=0.1,
               review_rate=0.2, cost_per_call_usd=0.01, window_days=30)


@dataclass
class Calls:
    """``n`` calls at ``ago`` seconds before NOW; the first ``errors`` fail, the next
    ``slow`` take 200 ms, the next ``failed_validation`` fail a validator, the next
    ``reviews`` go to review; the last ``unknown_cost`` have no known cost."""

    ago: float
    n: int
    errors: int = 0
    slow: int = 0
    failed_validation: int = 0
    reviews: int = 0
    cost: float = 0.005
    unknown_cost: int = 0
    feature: str = "f"
    error_code: str | None = "all_targets_failed"


_ids = iter(range(10**9))


def events(*groups: Calls) -> list[Event]:
    out = []
    for g in groups:
        for i in range(g.n):
            kind = i
            error = kind < g.errors
            slow = g.errors <= kind < g.errors + g.slow
            start = g.errors + g.slow
            failed = start <= kind < start + g.failed_validation
            start += g.failed_validation
            review = start <= kind < start + g.reviews
            decision = (Decision.ERROR if error else Decision.REVIEW if review
                        else Decision.ACCEPTED)
            out.append(Event(
                trace_id=f"{next(_ids):032x}", ts=NOW - g.ago, feature=g.feature,
                version=None if error else "v1", decision=decision, confidence=0.9,
                latency_ms=200.0 if slow else 50.0, timings_ms={}, input_tokens=1,
                output_tokens=1, cost_usd=None if i >= g.n - g.unknown_cost else g.cost,
                attempts=[], validations=[ValidationResult("allowed_labels", not failed, OnFail.REFUSE)],
                input=None, output=None, error_code=g.error_code if error else None))
    return out


def store_with(tmp_path: Path, *groups: Calls) -> Store:
    store = store_at(tmp_path / "keel.db")
    store.migrate()
    conn = store.connect()
    try:
        store.write_events(conn, events(*groups))
    finally:
        conn.close()
    return store


def by_objective(statuses: list[SLOStatus]) -> dict[str, SLOStatus]:
    return {s.objective: s for s in statuses}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return store_with(
        tmp_path,
        Calls(ago=10 * DAY, n=1000, errors=5, slow=20, failed_validation=50, reviews=100,
              unknown_cost=100),
        Calls(ago=3 * HOUR, n=200),
        Calls(ago=2 * MIN, n=100, errors=20, slow=10, reviews=30, cost=0.02),
        # never counted: before the window, after "now", bad input, another feature
        Calls(ago=40 * DAY, n=100, errors=100),
        Calls(ago=-MIN, n=50, errors=50),
        Calls(ago=MIN, n=30, errors=30, error_code="input_schema_violation"),
        Calls(ago=MIN, n=10, errors=10, feature="other"),
    )


def test_error_budget_and_burn_rates(store: Store) -> None:
    s = by_objective(slo_status(store, "f", SPEC, NOW))["error_rate"]
    # 1,300 calls in 30 days, 25 errors; 1% allows 13
    assert (s.calls, s.bad, s.allowed) == (1300, 25, pytest.approx(13))
    assert s.observed == pytest.approx(25 / 1300)
    assert s.budget_remaining == pytest.approx(1 - 25 / 13)
    assert not s.met
    # last 5 m, 30 m, 1 h: 20 errors in 100 calls = 20% = 20x the 1% allowed;
    # last 6 h: 20 in 300
    assert s.burn_rates == {"5m": pytest.approx(20), "30m": pytest.approx(20),
                            "1h": pytest.approx(20), "6h": pytest.approx(20 / 300 / 0.01)}
    assert s.page and s.ticket


def test_latency_counts_calls_slower_than_the_threshold(store: Store) -> None:
    s = by_objective(slo_status(store, "f", SPEC, NOW))["latency_p95_ms"]
    # 30 slow calls; a p95 allows 5% of 1,300 = 65
    assert (s.calls, s.bad, s.allowed) == (1300, 30, pytest.approx(65))
    assert s.budget_remaining == pytest.approx(1 - 30 / 65) and s.met
    assert s.burn_rates["5m"] == pytest.approx((10 / 100) / 0.05)
    assert s.burn_rates["6h"] == pytest.approx((10 / 300) / 0.05)
    assert not s.page and not s.ticket
    assert s.observed == 50.0  # under 5% slow: the p95 is a fast call


def test_validation_review_and_cost(store: Store) -> None:
    found = by_objective(slo_status(store, "f", SPEC, NOW))
    v = found["validation_failure_rate"]
    assert (v.bad, v.allowed, v.burn_rates["5m"]) == (50, pytest.approx(130), 0.0)
    assert v.budget_remaining == pytest.approx(1 - 50 / 130)
    r = found["review_rate"]
    assert (r.bad, r.allowed) == (130, pytest.approx(260))
    assert r.budget_remaining == pytest.approx(0.5)
    assert r.burn_rates["5m"] == pytest.approx(1.5) and r.burn_rates["6h"] == pytest.approx(0.5)
    c = found["cost_per_call_usd"]
    # 1,200 calls of known cost spent 900 x 0.005 + 200 x 0.005 + 100 x 0.02 = $7.50
    assert c.calls == 1200 and c.bad == pytest.approx(7.5) and c.allowed == pytest.approx(12)
    assert c.observed == pytest.approx(7.5 / 1200)
    assert c.budget_remaining == pytest.approx(0.375)
    assert c.burn_rates["5m"] == pytest.approx(2.0) and c.burn_rates["6h"] == pytest.approx(1.0)
    assert [s.objective for s in slo_status(store, "f", SPEC, NOW)] == [
        "latency_p95_ms", "error_rate", "validation_failure_rate", "review_rate",
        "cost_per_call_usd"]


def test_a_page_needs_the_short_window_too(tmp_path: Path) -> None:
    """Errors 40 minutes ago, none since: the 1 h burn is high but the 5 m one is not,
    so the page has stopped; the 6 h burn is high but the 30 m one is not: no ticket."""
    store = store_with(tmp_path, Calls(ago=40 * MIN, n=100, errors=50), Calls(ago=2 * MIN, n=100))
    s = by_objective(slo_status(store, "f", SLOSpec(error_rate=0.01), NOW))["error_rate"]
    assert s.burn_rates["1h"] == pytest.approx(25) and s.burn_rates["6h"] == pytest.approx(25)
    assert s.burn_rates["5m"] == 0 and s.burn_rates["30m"] == 0
    assert not s.page and not s.ticket
    # the same errors two minutes ago page at once
    store = store_with(tmp_path / "now", Calls(ago=2 * MIN, n=100, errors=50))
    s = by_objective(slo_status(store, "f", SLOSpec(error_rate=0.01), NOW))["error_rate"]
    assert s.page and s.ticket


def test_thresholds_are_settable(tmp_path: Path) -> None:
    store = store_with(tmp_path, Calls(ago=2 * MIN, n=100, errors=10))  # burn rate 10
    default = by_objective(slo_status(store, "f", SLOSpec(error_rate=0.01), NOW))["error_rate"]
    assert (default.page, default.ticket) == (False, True)
    strict = SLOSpec(error_rate=0.01, page_burn_rate=5, ticket_burn_rate=2)
    s = by_objective(slo_status(store, "f", strict, NOW))["error_rate"]
    assert (s.page, s.ticket) == (True, True)


def test_without_calls_the_budget_is_whole(tmp_path: Path) -> None:
    store = store_with(tmp_path)
    for s in slo_status(store, "f", SPEC, NOW):
        assert (s.calls, s.bad, s.allowed, s.observed) == (0, 0, 0, None)
        assert s.budget_remaining == 1.0 and s.met
        assert s.burn_rates == {"5m": None, "30m": None, "1h": None, "6h": None}
        assert not s.page and not s.ticket


def test_no_objectives_no_status(store: Store) -> None:
    assert slo_status(store, "f", SLOSpec(), NOW) == []


def test_an_error_without_a_code_is_an_error(tmp_path: Path) -> None:
    store = store_with(tmp_path, Calls(ago=MIN, n=10, errors=1, error_code=None))
    s = by_objective(slo_status(store, "f", SLOSpec(error_rate=0.5), NOW))["error_rate"]
    assert (s.calls, s.bad) == (10, 1)
    assert "input_schema_violation" in CLIENT_ERROR_CODES and "all_targets_failed" not in CLIENT_ERROR_CODES


@pytest.mark.parametrize("n", [1, 2, 3, 20, 101, 1000])
def test_the_p95_is_numpys(tmp_path: Path, n: int) -> None:
    rng = random.Random(n)
    latencies = [rng.lognormvariate(4, 1) for _ in range(n)]
    store = store_at(tmp_path / "keel.db")
    store.migrate()
    conn = store.connect()
    store.write_events(conn, [
        Event(trace_id=f"{i:032x}", ts=NOW - i, feature="f", version="v1",
              decision=Decision.ACCEPTED, confidence=None, latency_ms=ms, timings_ms={},
              input_tokens=0, output_tokens=0, cost_usd=None, attempts=[], validations=[],
              input=None, output=None) for i, ms in enumerate(latencies)])
    conn.close()
    (s,) = slo_status(store, "f", SLOSpec(latency_p95_ms=100), NOW)
    assert s.observed == pytest.approx(float(np.percentile(latencies, 95)))
    (fast,) = slo_status(store, "f", SLOSpec(latency_p95_ms=100), NOW, exact_p95=False)
    assert fast.observed is None and fast.bad == s.bad == sum(ms > 100 for ms in latencies)


def test_status_as_json(store: Store) -> None:
    body = by_objective(slo_status(store, "f", SPEC, NOW))["error_rate"].to_json()
    assert body["objective"] == "error_rate" and body["target"] == 0.01
    assert body["page"] is True and body["met"] is False
    assert set(body["burn_rates"]) == {"5m", "30m", "1h", "6h"}


def spec_of(slo: Any) -> SLOSpec:
    data = {"providers": {"p1": {"type": "scripted"}, "p2": {"type": "scripted"}},
            "features": {"f": basic_feature(slo=slo)}}
    return parse_spec(data).features["f"].slo


def test_keel_yaml_slo_section() -> None:
    slo = spec_of({"latency_p95_ms": 800, "error_rate": 0.01, "review_rate": 0.3,
                   "window_days": 7})
    assert (slo.latency_p95_ms, slo.error_rate, slo.review_rate, slo.window_days) == (800, 0.01, 0.3, 7)
    assert slo.validation_failure_rate is None and slo.page_burn_rate == 14.4
    assert spec_of({}) == SLOSpec() and SLOSpec().window_days == 30


@pytest.mark.parametrize(("slo", "message"), [
    ({"error_rate": 0}, "features.f.slo.error_rate: Input should be greater than 0"),
    ({"error_rate": 1.5}, "features.f.slo.error_rate: Input should be less than 1"),
    ({"latency_p95_ms": -1}, "features.f.slo.latency_p95_ms"),
    ({"window_days": 0.5}, "features.f.slo.window_days"),
    ({"page_burn_rate": 1}, "features.f.slo.page_burn_rate"),
    ({"latency_p95": 800}, "features.f.slo.latency_p95: unknown field"),
])
def test_bad_slo_sections_are_refused(slo: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        spec_of(slo)
