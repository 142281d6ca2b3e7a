"""Is a canary worse than its champion? The statistics, as pure functions.

:func:`judge` compares one step's live numbers of the candidate with the champion's:

- ``breach``: a hard limit of ``rollout.slo`` is crossed, and confidently so (the
  lower confidence bound of the candidate's rate is above the limit): roll back at once.
  Judged on the candidate alone, from ``slo.min_calls`` calls on, at every tick.
- ``wait``: either side has fewer than ``min_calls`` calls: no judgement yet.
- ``worse``: a rate metric (:data:`RATE_METRICS`) is significantly higher (one-sided
  two-proportion test, exact with few events, else the pooled z-test; p below
  ``alpha / (metrics × steps)``) *and* higher by
  at least ``min_effect``; or a business outcome of ``rollout.outcomes`` (share of calls
  with it, :mod:`keel.control.feedback`) is significantly worse in its declared direction
  by as much (the same test, sides swapped for ``higher``); or the p95 latency ratio is
  above ``max_latency_ratio`` (and above the latency SLO when one is set); or cost per
  call is above ``max_cost_ratio`` times the champion's.
- ``pass``: enough data and nothing worse.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING, Literal

import numpy as np

from keel.types import JSON

if TYPE_CHECKING:
    from keel.control.live_metrics import VersionMetrics
    from keel.spec import RolloutSpec

Verdict = Literal["pass", "worse", "breach", "wait"]
_NORMAL = NormalDist()


@dataclass(frozen=True, slots=True)
class RateMetric:
    name: str
    label: str  # for people
    count: str  # VersionMetrics field counted
    total: str  # VersionMetrics field it is a share of


RATE_METRICS: tuple[RateMetric, ...] = (
    RateMetric("error_rate", "error rate", "errors", "calls"),
    RateMetric("validation_failure_rate", "validation-failure rate", "validation_failures",
               "calls"),
    RateMetric("review_rate", "review rate", "reviews", "calls"),
    RateMetric("refusal_rate", "refusal rate", "refusals", "calls"),
    RateMetric("override_rate", "human-override rate", "overrides", "verdicts"),
)


@dataclass(frozen=True, slots=True)
class Check:
    """One metric compared: the numbers, and whether it made the candidate worse."""

    metric: str
    candidate: float | None
    baseline: float | None
    worse: bool = False
    p_value: float | None = None
    note: str = ""

    def to_json(self) -> dict[str, JSON]:
        return {"metric": self.metric, "candidate": self.candidate, "baseline": self.baseline,
                "worse": self.worse, "p_value": self.p_value, "note": self.note}


@dataclass(frozen=True, slots=True)
class Judgement:
    verdict: Verdict
    reason: str
    metric: str | None = None  # the metric that made it worse or breached
    checks: tuple[Check, ...] = ()
    alpha_per_test: float | None = None

    def to_json(self) -> dict[str, JSON]:
        return {"verdict": self.verdict, "reason": self.reason, "metric": self.metric,
                "alpha_per_test": self.alpha_per_test,
                "checks": [c.to_json() for c in self.checks]}


# --- the building blocks ------------------------------------------------------------


def two_proportion_p(cand_x: int, cand_n: int, base_x: int, base_n: int) -> float:
    """One-sided p-value for "the candidate's rate is higher than the baseline's".

    Exact (Fisher's test: the candidate's share of all events, given their total, is
    hypergeometric under H0) while any expected count of the 2x2 table is below
    :data:`EXACT_BELOW`; the pooled two-proportion z-test above that, where it is
    accurate. The z-test alone is not enough here: at ``alpha / 25`` its normal tail is
    too light for rates of 1-2% on a few hundred calls (the first step), and the
    simulation (2,000 seeds) measured 3.7% false rollbacks with it, 1.2% with this.
    1.0 when it cannot be computed (an empty side, or no events, or only events).
    """
    if cand_n <= 0 or base_n <= 0:
        return 1.0
    events, n = cand_x + base_x, cand_n + base_n
    if events == 0 or events == n:
        return 1.0
    smallest = min(events, n - events) * min(cand_n, base_n) / n
    if smallest >= EXACT_BELOW:
        return z_test_p(cand_x, cand_n, base_x, base_n)
    return _hypergeom_sf(cand_x, n, events, cand_n)


EXACT_BELOW = 100.0  # expected count under which the exact test is used


def z_test_p(cand_x: int, cand_n: int, base_x: int, base_n: int) -> float:
    """One-sided p-value of the pooled two-proportion z-test, H1: candidate rate >
    baseline rate (1.0 when it cannot be computed)."""
    if cand_n <= 0 or base_n <= 0:
        return 1.0
    pooled = (cand_x + base_x) / (cand_n + base_n)
    if pooled <= 0.0 or pooled >= 1.0:
        return 1.0
    se = math.sqrt(pooled * (1 - pooled) * (1 / cand_n + 1 / base_n))
    z = (cand_x / cand_n - base_x / base_n) / se
    return _NORMAL.cdf(-z)


def _hypergeom_sf(x: int, total: int, events: int, drawn: int) -> float:
    """P(X >= x) for X ~ Hypergeometric(total, events, drawn), summed term by term."""
    hi = min(events, drawn)
    if x > hi:
        return 0.0
    x = max(x, drawn - (total - events), 0)

    def log_choose(n: int, k: int) -> float:
        return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)

    log_first = (log_choose(events, x) + log_choose(total - events, drawn - x)
                 - log_choose(total, drawn))
    term, acc = 1.0, 1.0  # relative to the first term
    for k in range(x, hi):
        term *= (events - k) * (drawn - k) / ((k + 1) * (total - events - drawn + k + 1))
        acc += term
        if term < acc * 1e-16:  # past the mode, the rest cannot matter
            break
    return min(1.0, math.exp(log_first + math.log(acc)))


def z_for(alpha: float) -> float:
    """The one-sided critical value: P(Z > z) = alpha."""
    return _NORMAL.inv_cdf(1 - alpha)


def wilson_lower(x: int, n: int, z: float) -> float:
    """Lower bound of the Wilson score interval of the rate x/n (0 without calls)."""
    if n <= 0:
        return 0.0
    p = x / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z * z / n))


def p95(samples: Sequence[float]) -> float | None:
    """The 95th percentile (linear interpolation); None without samples."""
    if not samples:
        return None
    return float(np.percentile(np.asarray(samples, dtype=float), 95))


def rate_test_count(spec: RolloutSpec) -> int:
    """Rate tests one rollout may run: every rate metric and every judged outcome, once
    per step."""
    return (len(RATE_METRICS) + len(spec.outcomes)) * len(spec.steps)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _rate(m: VersionMetrics, metric: RateMetric) -> tuple[int, int]:
    return int(getattr(m, metric.count)), int(getattr(m, metric.total))


# --- the judgements -------------------------------------------------------------------


def breach(candidate: VersionMetrics, spec: RolloutSpec, n_tests: int | None = None) -> Judgement | None:
    """A hard SLO the candidate crosses, or None. Rates count as crossed when even the
    lower confidence bound (at ``1 - alpha_per_test``) is above the limit, so a handful
    of unlucky calls does not roll back; p95 latency when the share of calls slower than
    the limit is confidently above 5%; cost per call on its mean."""
    slo = spec.slo
    if candidate.calls < slo.min_calls:
        return None
    alpha = spec.alpha / (n_tests or rate_test_count(spec))
    z = z_for(alpha)
    limits = (("error_rate", "error rate", slo.error_rate, candidate.errors),
              ("validation_failure_rate", "validation-failure rate", slo.validation_failure_rate,
               candidate.validation_failures))
    for name, label, limit, count in limits:
        if limit is None:
            continue
        low = wilson_lower(count, candidate.calls, z)
        if low > limit:
            rate = count / candidate.calls
            return Judgement(
                "breach", f"hard SLO breach: {label} {_pct(rate)} over {candidate.calls} calls "
                f"(at least {_pct(low)} at {100 * (1 - alpha):.2f}% confidence) > limit "
                f"{_pct(limit)}", name, (Check(name, rate, None, True, note=f"limit {limit}"),),
                alpha)
    lat = candidate.latencies
    if slo.latency_p95_ms is not None and len(lat) >= slo.min_calls:
        slow = sum(1 for x in lat if x > slo.latency_p95_ms)
        if wilson_lower(slow, len(lat), z) > 0.05:
            p = p95(lat)
            return Judgement(
                "breach", f"hard SLO breach: p95 latency {p:.0f} ms > limit "
                f"{slo.latency_p95_ms:.0f} ms ({_pct(slow / len(lat))} of {len(lat)} calls "
                "slower than the limit)", "latency_p95_ms",
                (Check("latency_p95_ms", p, None, True, note=f"limit {slo.latency_p95_ms}"),),
                alpha)
    cost = candidate.cost_per_call
    if (slo.cost_per_call_usd is not None and cost is not None
            and candidate.cost_known >= slo.min_calls and cost > slo.cost_per_call_usd):
        return Judgement(
            "breach", f"hard SLO breach: cost per call ${cost:.6f} > limit "
            f"${slo.cost_per_call_usd:.6f}", "cost_per_call_usd",
            (Check("cost_per_call_usd", cost, None, True, note=f"limit {slo.cost_per_call_usd}"),),
            alpha)
    return None


def judge(candidate: VersionMetrics, baseline: VersionMetrics, spec: RolloutSpec,
          n_tests: int | None = None) -> Judgement:
    """The verdict on one step. ``n_tests``: the rate tests the whole rollout may run
    (default :func:`rate_test_count`).

    Why the false-rollback rate stays under ``alpha``: the controller judges each step
    once (the first time both sides have ``min_calls`` calls after ``min_step_s``), and
    each judgement runs at most one test per rate metric, so a rollout runs at most
    ``n_tests`` tests. Each rejects a candidate that is in truth no worse with
    probability at most ``alpha / n_tests``; by the union bound (Bonferroni, valid
    whatever the dependence between metrics and steps) the chance that any of them does
    is at most ``alpha``. Requiring ``min_effect`` as well only lowers it. The latency
    and cost rules are ratio thresholds on at least ``min_calls`` calls, not tests: with
    equal versions they trip only if the estimates are off by the whole margin.
    """
    n_tests = n_tests or rate_test_count(spec)
    alpha = spec.alpha / n_tests
    hard = breach(candidate, spec, n_tests)
    if hard is not None:
        return hard
    if candidate.calls < spec.min_calls or baseline.calls < spec.min_calls:
        return Judgement(
            "wait", f"not enough calls yet: candidate {candidate.calls}, champion "
            f"{baseline.calls}, {spec.min_calls} each needed", alpha_per_test=alpha)
    checks: list[Check] = []
    for metric in RATE_METRICS:
        cx, cn = _rate(candidate, metric)
        bx, bn = _rate(baseline, metric)
        if metric.total == "verdicts" and min(cn, bn) < spec.min_verdicts:
            checks.append(Check(metric.name, cx / cn if cn else None, bx / bn if bn else None,
                                note=f"not judged: fewer than {spec.min_verdicts} verdicts"))
            continue
        c_rate, b_rate = cx / cn, bx / bn
        p = two_proportion_p(cx, cn, bx, bn)
        worse = p < alpha and c_rate - b_rate >= spec.min_effect
        note = (f"{metric.label} {_pct(c_rate)} vs {_pct(b_rate)} (p={p:.2g} < {alpha:.2g}, "
                f"+{100 * (c_rate - b_rate):.2f} points >= {100 * spec.min_effect:.2f})"
                if worse else "")
        checks.append(Check(metric.name, c_rate, b_rate, worse, p, note))
    checks.extend(_outcome(candidate, baseline, name, better, spec.min_effect, alpha)
                  for name, better in spec.outcomes.items())
    checks.append(_latency(candidate, baseline, spec))
    checks.append(_cost(candidate, baseline, spec))
    bad = next((c for c in checks if c.worse), None)
    if bad is not None:
        return Judgement("worse", f"worse than the champion: {bad.note}", bad.metric,
                         tuple(checks), alpha)
    summary = ", ".join(
        f"{c.metric} {_pct(c.candidate)} vs {_pct(c.baseline)}"
        for c in checks[:2] if c.candidate is not None)
    return Judgement("pass", f"no worse than the champion on {candidate.calls} vs "
                     f"{baseline.calls} calls ({summary})", None, tuple(checks), alpha)


def _outcome(candidate: VersionMetrics, baseline: VersionMetrics, name: str,
             better: Literal["higher", "lower"], min_effect: float, alpha: float) -> Check:
    """A business outcome's rate (calls with it / calls): worse when it moved the wrong way
    significantly and by at least ``min_effect``."""
    cx, cn = candidate.outcomes.get(name, 0), candidate.calls
    bx, bn = baseline.outcomes.get(name, 0), baseline.calls
    c_rate, b_rate = cx / cn, bx / bn
    if better == "higher":  # worse: the candidate's rate is lower
        p, drop = two_proportion_p(bx, bn, cx, cn), b_rate - c_rate
    else:
        p, drop = two_proportion_p(cx, cn, bx, bn), c_rate - b_rate
    worse = p < alpha and drop >= min_effect
    note = (f"outcome {name} {_pct(c_rate)} vs {_pct(b_rate)} ({better} is better; "
            f"p={p:.2g} < {alpha:.2g}, {100 * drop:.2f} points worse >= "
            f"{100 * min_effect:.2f})" if worse else "")
    return Check(f"outcome:{name}", c_rate, b_rate, worse, p, note)


def _latency(candidate: VersionMetrics, baseline: VersionMetrics, spec: RolloutSpec) -> Check:
    c, b = p95(candidate.latencies), p95(baseline.latencies)
    enough = min(len(candidate.latencies), len(baseline.latencies)) >= spec.min_calls
    if c is None or b is None or not enough or b <= 0:
        return Check("latency_p95_ms", c, b, note="not judged: too few latency samples")
    ratio = c / b
    slo = spec.slo.latency_p95_ms
    worse = (ratio > spec.max_latency_ratio and c - b > spec.latency_slack_ms
             and (slo is None or c > slo))
    note = (f"p95 latency {c:.0f} ms vs {b:.0f} ms (x{ratio:.2f} > x{spec.max_latency_ratio}"
            + ("" if slo is None else f", above the SLO {slo:.0f} ms") + ")") if worse else ""
    return Check("latency_p95_ms", c, b, worse, note=note)


def _cost(candidate: VersionMetrics, baseline: VersionMetrics, spec: RolloutSpec) -> Check:
    c, b = candidate.cost_per_call, baseline.cost_per_call
    enough = min(candidate.cost_known, baseline.cost_known) >= spec.min_calls
    if c is None or b is None or not enough or b <= 0:
        return Check("cost_per_call_usd", c, b, note="not judged: cost unknown or zero")
    worse = c / b > spec.max_cost_ratio
    note = (f"cost per call ${c:.6f} vs ${b:.6f} (x{c / b:.2f} > x{spec.max_cost_ratio})"
            if worse else "")
    return Check("cost_per_call_usd", c, b, worse, note=note)
