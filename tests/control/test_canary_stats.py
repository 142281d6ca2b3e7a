"""The canary statistics, alone: the tests, the bounds and the verdicts."""

from __future__ import annotations

import random

import pytest
from scipy.stats import fisher_exact

from keel.control.canary_stats import (
    RATE_METRICS,
    judge,
    p95,
    rate_test_count,
    two_proportion_p,
    wilson_lower,
    z_for,
    z_test_p,
)
from keel.control.live_metrics import VersionMetrics
from keel.spec import RolloutSLOSpec, RolloutSpec

SPEC = RolloutSpec(min_calls=200)


def metrics(version: str, calls: int, errors: int = 0, **kw: object) -> VersionMetrics:
    lat = kw.pop("latencies", tuple(100.0 + (i % 50) for i in range(calls)))
    return VersionMetrics(version, calls=calls, errors=errors, latencies=lat, **kw)  # type: ignore[arg-type]


def test_z_test() -> None:
    # equal rates: p = 0.5; much higher candidate: tiny p; lower candidate: p near 1
    assert z_test_p(20, 1000, 20, 1000) == pytest.approx(0.5)
    assert z_test_p(60, 1000, 20, 1000) < 1e-5
    assert z_test_p(5, 1000, 20, 1000) > 0.99
    # 45/500 vs 30/500: pooled 7.5%, z = 1.80, one-sided p = 0.0359 (scipy: norm.sf)
    assert z_test_p(45, 500, 30, 500) == pytest.approx(0.035859, abs=1e-5)
    assert z_test_p(0, 0, 3, 100) == 1.0
    assert z_test_p(0, 100, 0, 100) == 1.0


@pytest.mark.parametrize("table", [(7, 210, 200, 20000), (0, 50, 3, 100), (3, 100, 0, 1000),
                                   (45, 500, 30, 500), (12, 130, 30, 700), (130, 130, 5, 10)])
def test_two_proportion_p_is_fishers_exact_test_with_few_events(
        table: tuple[int, int, int, int]) -> None:
    cx, cn, bx, bn = table
    expected = fisher_exact([[cx, cn - cx], [bx, bn - bx]], alternative="greater").pvalue
    assert two_proportion_p(*table) == pytest.approx(expected, rel=1e-9)


def test_two_proportion_p_edges_and_large_counts() -> None:
    # no data, or no events at all, or only events: no evidence
    assert two_proportion_p(0, 0, 3, 100) == 1.0
    assert two_proportion_p(0, 100, 0, 100) == 1.0
    assert two_proportion_p(100, 100, 100, 100) == 1.0
    # many events: the z-test
    assert two_proportion_p(600, 15000, 1000, 50000) == z_test_p(600, 15000, 1000, 50000)
    # the z-test's tail is too light with few events: 7/210 vs 1% is rarer by it
    assert z_test_p(7, 210, 200, 20000) < 0.002 < two_proportion_p(7, 210, 200, 20000)


def test_bounds_and_p95() -> None:
    assert z_for(0.05) == pytest.approx(1.645, abs=1e-3)
    assert wilson_lower(0, 0, 2.0) == 0.0
    assert wilson_lower(50, 100, 1.96) == pytest.approx(0.4038, abs=1e-3)
    assert wilson_lower(0, 100, 1.96) == 0.0
    assert p95([]) is None
    assert p95(list(range(1, 101))) == pytest.approx(95.05)


def test_bonferroni_budget() -> None:
    assert rate_test_count(SPEC) == len(RATE_METRICS) * 5 == 25
    j = judge(metrics("v2", 300), metrics("v1", 3000), SPEC)
    assert j.alpha_per_test == pytest.approx(0.05 / 25)


def test_no_judgement_before_min_calls() -> None:
    # a dreadful candidate, but too few calls on one side: wait (below the hard limit)
    j = judge(metrics("v2", 150, errors=40), metrics("v1", 5000, errors=100), SPEC)
    assert j.verdict == "wait" and "150" in j.reason
    j = judge(metrics("v2", 500, errors=10), metrics("v1", 199, errors=4), SPEC)
    assert j.verdict == "wait"


def test_worse_needs_significance_and_effect() -> None:
    base = metrics("v1", 20000, errors=400)  # 2%
    j = judge(metrics("v2", 2000, errors=100), base, SPEC)  # 5%: significant, +3 points
    assert j.verdict == "worse" and j.metric == "error_rate"
    assert "error rate 5.00% vs 2.00%" in j.reason
    # significant but smaller than min_effect (2.6% vs 2%): not worse
    j = judge(metrics("v2", 20000, errors=520), base, SPEC)
    check = next(c for c in j.checks if c.metric == "error_rate")
    assert check.p_value is not None and check.p_value < 0.002
    assert j.verdict == "pass"
    # a big but noisy difference (3/200 more): not significant at alpha/25
    j = judge(metrics("v2", 200, errors=9), metrics("v1", 200, errors=4), SPEC)
    assert j.verdict == "pass"


def test_other_rates_and_overrides() -> None:
    base = metrics("v1", 5000, reviews=250, refusals=50, validation_failures=100)
    assert judge(metrics("v2", 2000, reviews=300), base, SPEC).metric == "review_rate"
    assert judge(metrics("v2", 2000, refusals=100), base, SPEC).metric == "refusal_rate"
    assert judge(metrics("v2", 2000, validation_failures=200), base,
                 SPEC).metric == "validation_failure_rate"
    # overrides count only with enough verdicts on both sides
    few = judge(metrics("v2", 2000, verdicts=20, overrides=15),
                metrics("v1", 5000, verdicts=200, overrides=20), SPEC)
    assert few.verdict == "pass"
    assert "fewer than 30 verdicts" in next(c for c in few.checks if c.metric == "override_rate").note
    many = judge(metrics("v2", 2000, verdicts=100, overrides=40),
                 metrics("v1", 5000, verdicts=200, overrides=20), SPEC)
    assert many.verdict == "worse" and many.metric == "override_rate"


def test_latency_and_cost() -> None:
    rng = random.Random(1)
    fast = tuple(rng.lognormvariate(4.6, 0.3) for _ in range(1000))  # ~100 ms
    slow = tuple(2 * x for x in fast)
    base = metrics("v1", 1000, latencies=fast)
    j = judge(metrics("v2", 1000, latencies=slow), base, SPEC)
    assert j.verdict == "worse" and j.metric == "latency_p95_ms"
    # with an SLO the ratio alone is not enough: the candidate must also be above it
    lenient = RolloutSpec(min_calls=200, slo=RolloutSLOSpec(latency_p95_ms=10_000))
    assert judge(metrics("v2", 1000, latencies=slow), base, lenient).verdict == "pass"
    assert judge(metrics("v2", 1000, latencies=tuple(1.2 * x for x in fast)), base,
                 SPEC).verdict == "pass"
    # cost per call: 1.5x the champion's
    priced = metrics("v1", 1000, cost_sum=1.0, cost_known=1000)
    j = judge(metrics("v2", 1000, cost_sum=1.5, cost_known=1000), priced, SPEC)
    assert j.verdict == "worse" and j.metric == "cost_per_call_usd"
    assert judge(metrics("v2", 1000, cost_sum=1.1, cost_known=1000), priced,
                 SPEC).verdict == "pass"


def test_hard_slo_breach_needs_only_a_few_calls() -> None:
    spec = RolloutSpec(slo=RolloutSLOSpec(error_rate=0.5, latency_p95_ms=500))
    empty = metrics("v1", 0)
    # every call fails: a breach at 20 calls, long before min_calls, without a baseline
    j = judge(metrics("v2", 20, errors=20), empty, spec)
    assert j.verdict == "breach" and j.metric == "error_rate"
    # 60% over 20 calls is not confidently above 50%: no breach yet
    assert judge(metrics("v2", 20, errors=12), empty, spec).verdict == "wait"
    assert judge(metrics("v2", 19, errors=19), empty, spec).verdict == "wait"
    j = judge(metrics("v2", 40, latencies=(900.0,) * 40), empty, spec)
    assert j.verdict == "breach" and j.metric == "latency_p95_ms"
    cost = RolloutSpec(slo=RolloutSLOSpec(cost_per_call_usd=0.01))
    j = judge(metrics("v2", 30, cost_sum=0.6, cost_known=30), empty, cost)
    assert j.verdict == "breach" and j.metric == "cost_per_call_usd"


def test_judgement_is_recordable() -> None:
    j = judge(metrics("v2", 2000, errors=100), metrics("v1", 20000, errors=400), SPEC)
    data = j.to_json()
    assert data["verdict"] == "worse" and isinstance(data["checks"], list)
    assert {c["metric"] for c in data["checks"]} >= {m.name for m in RATE_METRICS}
