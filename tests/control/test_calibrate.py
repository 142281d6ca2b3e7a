"""Calibrated thresholds on synthetic data with a known error curve, edge cases, the
risk–coverage table and validator quality."""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import numpy.typing as npt
import pytest
from scipy.stats import binom  # type: ignore[import-untyped]

from keel.control.calibrate import (
    GRID,
    calibrate,
    clopper_pearson_upper,
    format_risk_coverage,
    min_accepted,
    risk_coverage,
    start_count,
    validator_quality,
)

Bools = npt.NDArray[np.bool_]
Floats = npt.NDArray[np.float64]


# Confidence ~ U(0.5, 1) and P(wrong | c) = 0.8 (1 - c): above t >= 0.5 the error rate is
# R(t) = 0.4 (1 - t) and the share of all items that are accepted and wrong J(t) = 0.8 (1 - t)^2.
def known_curve(seed: int, n: int) -> tuple[Floats, Bools]:
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.5, 1.0, n)
    return conf, rng.uniform(size=n) >= 0.8 * (1 - conf)


def risk(t: float) -> float:
    return 0.4 * (1 - max(t, 0.5))


def joint_risk(t: float) -> float:
    return 0.8 * (1 - max(t, 0.5)) ** 2


@pytest.mark.parametrize("alpha", [0.1, 0.05])
def test_the_guarantee_holds_on_a_known_error_curve(alpha: float) -> None:
    delta, runs = 0.1, 1000
    thresholds = [calibrate(*known_curve(seed, 1000), alpha, delta).threshold
                  for seed in range(runs)]
    chosen = [t for t in thresholds if t is not None]
    # the true error of what each threshold auto-accepts, exactly
    violations = sum(risk(t) > alpha for t in chosen)
    assert violations / runs <= delta
    # and not vacuous: usually a threshold, close to the best one (R(t*) = alpha)
    best = 1 - alpha / 0.4
    assert len(chosen) >= runs / 2
    assert best - 0.01 <= float(np.median(chosen)) <= best + 0.1


def test_the_result_matches_the_risk_coverage_table() -> None:
    conf, correct = known_curve(1, 2000)
    result = calibrate(conf, correct, 0.1, 0.1)
    assert result.threshold is not None and result.start is not None
    rows = risk_coverage(conf, correct, 0.1, 0.1, thresholds=GRID)
    by_t = {row.threshold: row for row in rows}
    row = by_t[result.threshold]
    assert (row.accepted, row.errors, row.ok) == (result.accepted, result.errors, True)
    assert row.ucb == pytest.approx(result.ucb)
    assert result.coverage == pytest.approx(row.accepted / 2000)
    assert result.error == pytest.approx(row.errors / row.accepted)
    # every threshold from the start down to the answer passed; the next one failed
    tested = [r for r in rows if result.threshold <= r.threshold <= result.start]
    assert all(r.ok for r in tested)
    below = [r for r in rows if r.threshold < result.threshold]
    assert below and not below[0].ok
    assert f"({below[0].threshold:g} failed)" in result.reason
    # the start: the highest threshold with start_count items above
    above_start = [r for r in rows if r.threshold > result.start]
    assert by_t[result.start].accepted >= start_count(0.1, 0.1) > above_start[-1].accepted


def test_smaller_alpha_never_gives_a_lower_threshold_from_a_given_start() -> None:
    alphas = [0.02, 0.05, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5]
    for seed in range(200):  # arbitrary, non-monotone error curves
        rng = np.random.default_rng(seed)
        n = int(rng.integers(30, 500))
        conf = rng.uniform(size=n) ** rng.uniform(0.2, 3)
        wrong_p = rng.uniform(0, 0.6) * (1 - conf) + rng.uniform(0, 0.5) * (conf > rng.uniform())
        correct = rng.uniform(size=n) >= wrong_p
        start = float(rng.uniform(0.5, 1))
        found = [calibrate(conf, correct, a, 0.1, start=start).threshold for a in alphas]
        levels = [2.0 if t is None else t for t in found]  # None: nothing accepted
        assert levels == sorted(levels, reverse=True), (seed, found)


def test_smaller_alpha_or_delta_is_more_conservative_with_the_default_start() -> None:
    for seed in range(50):
        conf, correct = known_curve(seed, 1500)
        by_alpha = [calibrate(conf, correct, a, 0.1).threshold for a in (0.03, 0.05, 0.1, 0.15)]
        levels = [2.0 if t is None else t for t in by_alpha]
        assert levels == sorted(levels, reverse=True), (seed, by_alpha)
        by_delta = [calibrate(conf, correct, 0.1, d).threshold for d in (0.01, 0.05, 0.2)]
        levels = [2.0 if t is None else t for t in by_delta]
        assert levels == sorted(levels, reverse=True), (seed, by_delta)


def test_the_scan_stops_at_the_first_failure() -> None:
    # 100 right at 0.95; 30 at 0.85 of which 20 wrong; 1000 right at 0.75
    conf = np.array([0.95] * 100 + [0.85] * 30 + [0.75] * 1000)
    correct = np.array([True] * 100 + [False] * 20 + [True] * 10 + [True] * 1000)
    grid = [0.9, 0.8, 0.7]
    table = {r.threshold: r.ok for r in risk_coverage(conf, correct, 0.1, 0.1, grid)}
    assert table == {0.9: True, 0.8: False, 0.7: True}  # 0.7 passes on its own ...
    result = calibrate(conf, correct, 0.1, 0.1, grid=grid)
    assert result.threshold == 0.9 and result.accepted == 100  # ... but is never reached
    assert "0.8 failed" in result.reason
    # a start chosen elsewhere: below 0.8 the scan begins at 0.7
    assert calibrate(conf, correct, 0.1, 0.1, grid=grid, start=0.75).threshold == 0.7
    none = calibrate(conf, correct, 0.1, 0.1, grid=grid, start=0.85)
    assert none.threshold is None and none.start == 0.8 and "20 of 130" in none.reason


def test_no_threshold_meets_alpha() -> None:
    conf, _ = known_curve(0, 500)
    for correct in (np.zeros(500, bool), np.random.default_rng(0).uniform(size=500) < 0.5):
        result = calibrate(conf, correct, 0.1)
        assert result.threshold is None
        assert (result.accepted, result.coverage, result.error, result.ucb) == (0, 0.0, None, None)
        assert "upper bound" in result.reason and "> alpha 0.1" in result.reason


def test_too_few_items_to_certify_anything() -> None:
    need = min_accepted(0.1, 0.1)
    assert need == 22 == math.ceil(math.log(0.1) / math.log(0.9))
    result = calibrate(np.full(need - 1, 0.99), np.ones(need - 1, bool), 0.1, 0.1)
    assert result.threshold is None and result.start is None
    assert f"needs at least {need}" in result.reason
    assert calibrate(np.full(need, 0.99), np.ones(need, bool), 0.1, 0.1).threshold is not None


def test_all_correct_accepts_everything_and_reports_the_bound() -> None:
    conf = np.random.default_rng(3).uniform(size=100)
    result = calibrate(conf, np.ones(100, bool), 0.1, 0.1)
    assert result.threshold == 0.0 and result.coverage == 1.0
    assert (result.accepted, result.errors, result.error) == (100, 0, 0.0)
    assert result.ucb == pytest.approx(1 - 0.1 ** (1 / 100))


def test_tied_confidences_are_never_split() -> None:
    # 200 right at 0.9 and 200 at 0.6 of which half wrong: any threshold in (0.6, 0.9]
    conf = np.array([0.9] * 200 + [0.6] * 200)
    correct = np.array([True] * 200 + [True, False] * 100)
    result = calibrate(conf, correct, 0.1, 0.1)
    assert result.threshold is not None and 0.6 < result.threshold <= 0.9
    assert result.accepted == 200 and result.errors == 0
    # all equal: everything or nothing
    same = np.full(400, 0.8)
    ok = calibrate(same, np.arange(400) % 20 != 0, 0.1, 0.1)  # 5% wrong
    assert ok.threshold is not None and ok.threshold <= 0.8 and ok.accepted == 400
    bad = calibrate(same, np.arange(400) % 5 != 0, 0.1, 0.1)  # 20% wrong
    assert bad.threshold is None


def test_clopper_pearson_and_the_counts() -> None:
    assert clopper_pearson_upper(0, 22, 0.1) == pytest.approx(1 - 0.1 ** (1 / 22))
    assert clopper_pearson_upper(5, 5, 0.1) == 1.0 and clopper_pearson_upper(0, 0, 0.1) == 1.0
    for k, m in [(1, 10), (7, 100), (90, 1000)]:
        upper = clopper_pearson_upper(k, m, 0.05)
        assert binom.cdf(k, m, upper) == pytest.approx(0.05)  # exact by definition
    assert (min_accepted(0.05, 0.1), start_count(0.1, 0.1), start_count(0.05, 0.1)) == (45, 38, 77)
    assert clopper_pearson_upper(1, 38, 0.1) <= 0.1 < clopper_pearson_upper(1, 37, 0.1)
    assert min_accepted(1e-6, 0.1) == math.ceil(math.log(0.1) / math.log1p(-1e-6))


@pytest.mark.parametrize("alpha", [0.1, 0.05])
def test_conformal_risk_control_bounds_the_expected_joint_error(alpha: float) -> None:
    runs = 1000
    joint = []
    for seed in range(runs):
        result = calibrate(*known_curve(seed, 1000), alpha, method="crc")
        assert result.start is None and result.ucb is not None and result.ucb <= alpha
        joint.append(joint_risk(result.threshold) if result.threshold is not None else 0.0)
    # E[J(t̂)] <= alpha is exact; the mean of `runs` independent runs may exceed its
    # expectation by Monte Carlo error: allow 3 standard errors (exceeded with p < 0.0014)
    mean, se = float(np.mean(joint)), float(np.std(joint) / math.sqrt(runs))
    assert mean <= alpha + 3 * se
    assert mean >= alpha - 0.01  # tight, not vacuous


def test_crc_refuses_when_n_is_too_small_for_alpha() -> None:
    result = calibrate([0.9] * 5, [True] * 5, 0.1, method="crc")  # 1 / (n + 1) > alpha
    assert result.threshold is None and "n = 5" in result.reason


@pytest.mark.parametrize(
    ("confidence", "correct", "alpha", "delta", "message"),
    [
        ([], [], 0.1, 0.1, "no labelled items"),
        ([0.5, 0.6], [True], 0.1, 0.1, "2 confidences but 1 verdicts"),
        ([0.5], [True], 0.0, 0.1, "alpha must be a number strictly between 0 and 1"),
        ([0.5], [True], 1.0, 0.1, "alpha must be"),
        ([0.5], [True], float("nan"), 0.1, "alpha must be"),
        ([0.5], [True], True, 0.1, "alpha must be"),
        ([0.5], [True], 0.1, 1.5, "delta must be"),
        ([1.2], [True], 0.1, 0.1, "confidence must be in [0, 1]"),
        ([float("nan")], [True], 0.1, 0.1, "confidence must be in [0, 1]"),
        (["high"], [True], 0.1, 0.1, "confidence must hold numbers"),
        ([0.5], ["yes"], 0.1, 0.1, "correct must hold booleans"),
        ([0.5], [2], 0.1, 0.1, "correct must hold booleans"),
        ([[0.5]], [True], 0.1, 0.1, "confidence must be a flat list"),
    ],
)
def test_bad_input_is_refused_clearly(
    confidence: list[object], correct: list[object], alpha: float, delta: float, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        calibrate(confidence, correct, alpha, delta)  # type: ignore[arg-type]


def test_bad_options_are_refused_clearly() -> None:
    conf, correct = known_curve(0, 100)
    with pytest.raises(ValueError, match="method must be 'ltt' or 'crc'"):
        calibrate(conf, correct, 0.1, method="bonferroni")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="grid thresholds must be in"):
        calibrate(conf, correct, 0.1, grid=[0.5, 1.5])
    with pytest.raises(ValueError, match="grid thresholds must be"):
        risk_coverage(conf, correct, 0.1, thresholds=[0.5, None])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="grid thresholds must be numbers"):
        risk_coverage(conf, correct, 0.1, thresholds=[0.5, "high"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty"):
        calibrate(conf, correct, 0.1, grid=[])
    with pytest.raises(ValueError, match="start must be in"):
        calibrate(conf, correct, 0.1, start=2.0)
    with pytest.raises(ValueError, match="no grid threshold at or below start"):
        calibrate(conf, correct, 0.1, grid=[0.8, 0.9], start=0.5)


def test_the_printed_table() -> None:
    conf, correct = known_curve(2, 1000)
    result = calibrate(conf, correct, 0.1)
    assert result.threshold is not None
    rows = risk_coverage(conf, correct, 0.1, thresholds=(1.0, 0.9, 0.8, 0.7, result.threshold))
    assert [r.threshold for r in rows] == sorted({1.0, 0.9, 0.8, 0.7, result.threshold},
                                                 reverse=True)
    assert all(a.coverage <= b.coverage for a, b in itertools.pairwise(rows))
    assert all(r.ok == (r.ucb <= 0.1) for r in rows)
    empty = rows[0]  # nothing reaches 1.0
    assert (empty.accepted, empty.error, empty.ucb, empty.ok) == (0, None, 1.0, False)
    text = format_risk_coverage(rows, result.threshold)
    lines = text.splitlines()
    assert lines[0].split() == ["threshold", "accepted", "coverage", "error", "ucb", "ok"]
    assert len(lines) == len(rows) + 1
    marked = [line for line in lines if line.endswith("<-")]
    assert len(marked) == 1 and marked[0].split()[0] == f"{result.threshold:.3f}"


def test_validator_quality() -> None:
    flags = [True, True, True, False, False, False, False, True]
    bad = [True, True, False, True, False, False, False, True]
    quality = validator_quality(flags, bad)
    assert (quality.true_pos, quality.false_pos, quality.false_neg, quality.true_neg) == (3, 1, 1, 3)
    assert quality.precision == pytest.approx(0.75) and quality.recall == pytest.approx(0.75)
    silent = validator_quality([False, False], [True, False])  # never flags
    assert silent.precision is None and silent.recall == 0.0
    clean = validator_quality([True, False], [False, False])  # nothing was bad
    assert clean.precision == 0.0 and clean.recall is None
    assert validator_quality(np.array([1, 0]), np.array([1, 0])).precision == 1.0
    with pytest.raises(ValueError, match="2 validator results but 1 verdicts"):
        validator_quality([True, False], [True])
    with pytest.raises(ValueError, match="no reviewed outputs"):
        validator_quality([], [])
    with pytest.raises(ValueError, match="flags must hold booleans"):
        validator_quality(["x"], [True])
