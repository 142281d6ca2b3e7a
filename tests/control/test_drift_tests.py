"""The statistics of drift (keel.control.drift_tests) against scipy, and their behaviour:
the test chosen by sample size, the correction, the alert rule, false alarms, detection."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from keel.control.drift_tests import (
    CHI2,
    JENSEN_SHANNON,
    KS,
    WASSERSTEIN,
    Thresholds,
    alerts,
    benjamini_hochberg,
    categorical_tests,
    chi2_homogeneity,
    jensen_shannon,
    ks_pvalue,
    ks_statistic,
    numeric_tests,
    robust_scale,
)

TH = Thresholds()


def one_window(values: np.ndarray) -> np.ndarray:
    return np.zeros(values.size, dtype=np.int64)


@pytest.mark.parametrize("seed", range(4))
def test_ks_matches_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 1, 700)
    b = rng.normal(0.1 * seed, 1 + 0.1 * seed, 450)
    if seed == 3:  # heavy ties
        a, b = np.round(a), np.round(b)
    expected = stats.ks_2samp(a, b, method="asymp")
    d = ks_statistic(np.sort(a), b)
    assert d == pytest.approx(expected.statistic, abs=1e-12)
    assert float(ks_pvalue(d, a.size, b.size)) == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300)


def test_chi_square_matches_scipy_without_pooling() -> None:
    ref = np.array([100.0, 50, 30, 20])
    windows = np.array([[90.0, 60, 25, 25], [10, 10, 10, 10], [200, 20, 20, 40]])
    stat, p, dof = chi2_homogeneity(ref, windows)
    for i, row in enumerate(windows):
        expected = stats.chi2_contingency(np.vstack([ref, row]), correction=False)
        assert stat[i] == pytest.approx(expected.statistic)
        assert p[i] == pytest.approx(expected.pvalue)
        assert dof[i] == expected.dof


def test_chi_square_pools_rare_categories_and_ignores_absent_ones() -> None:
    ref = np.array([500.0, 400, 2, 1, 0])
    stat, p, dof = chi2_homogeneity(ref, np.array([[50.0, 40, 0, 1, 0]]))
    assert dof[0] == 2  # a, b and one pooled bucket; the empty category does not count
    assert np.isfinite(stat[0]) and 0 <= p[0] <= 1
    # one category only: nothing to test
    _, p1, dof1 = chi2_homogeneity(np.array([10.0, 0]), np.array([[5.0, 0]]))
    assert dof1[0] == 0 and p1[0] == 1.0


def test_jensen_shannon_matches_scipy() -> None:
    ref = np.array([100.0, 50, 30, 20, 0])
    windows = np.array([[90.0, 60, 25, 25, 0], [0, 0, 0, 0, 7], [100, 50, 30, 20, 0]])
    got = jensen_shannon(ref, windows)
    for i, row in enumerate(windows):
        assert got[i] == pytest.approx(jensenshannon(ref, row, base=2), abs=1e-12)
    assert got[2] == 0.0 and got[1] == pytest.approx(1.0)


@pytest.mark.parametrize("kind", ["normal", "lognormal", "poisson", "ties", "outliers"])
@pytest.mark.parametrize("shift", [0.0, 0.2, 1.0])
def test_histogram_wasserstein_is_close_to_the_exact_one(kind: str, shift: float) -> None:
    rng = np.random.default_rng(7)
    if kind == "normal":
        a, b = rng.normal(0, 1, 20_000), rng.normal(shift, 1, 30_000)
    elif kind == "lognormal":
        a, b = rng.lognormal(3, 1, 20_000), rng.lognormal(3 + shift, 1, 30_000)
    elif kind == "poisson":
        a, b = rng.poisson(20, 20_000) * 1.0, rng.poisson(20 * (1 + shift), 30_000) * 1.0
    elif kind == "ties":
        a, b = rng.integers(0, 5, 20_000) * 1.0, rng.integers(0, 5, 30_000) + shift
    else:
        a = rng.normal(0, 1, 20_000)
        b = np.concatenate([rng.normal(shift, 1, 29_900), rng.normal(0, 1, 100) * 1e4])
    exact = stats.wasserstein_distance(a, b) / robust_scale(a)
    got = numeric_tests(a, b, one_window(b), 1, Thresholds(small_n=1000))
    assert got.method == [WASSERSTEIN]
    assert got.statistic[0] == pytest.approx(exact, rel=0.03, abs=0.005)
    assert got.statistic[0] <= exact + 1e-9  # per-bin |∫D| never exceeds ∫|D|


def test_robust_scale() -> None:
    assert robust_scale(np.array([0.0, 1, 2, 3, 4, 5, 6, 7])) == pytest.approx(3.5 / 1.349)
    assert robust_scale(np.array([0.0] * 9 + [10.0])) == pytest.approx(3.0)  # IQR 0: std
    assert robust_scale(np.zeros(5)) == 1.0


def test_the_test_is_chosen_by_sample_size() -> None:
    rng = np.random.default_rng(1)
    th = Thresholds(small_n=500, min_n=30, per_category=150)
    ref = rng.normal(0, 1, 2000)
    values = np.concatenate([rng.normal(0, 1, 20), rng.normal(0, 1, 400), rng.normal(0, 1, 1500)])
    groups = np.repeat([0, 1, 2], [20, 400, 1500]).astype(np.int64)
    got = numeric_tests(ref, values, groups, 4, th)
    assert got.method == [None, KS, WASSERSTEIN, None]
    assert got.note[0] == "20 value(s), fewer than 30" and list(got.n) == [20, 400, 1500, 0]
    assert np.isnan(got.p_value[2]) and 0 <= got.p_value[1] <= 1
    # a small reference keeps every window on the p-value test
    assert numeric_tests(ref[:300], values, groups, 4, th).method == [None, KS, KS, None]
    # categorical: the distance needs n > small_n and n > per_category·(K−1)
    codes_2 = rng.integers(0, 2, 3500)
    codes_9 = rng.integers(0, 9, 3500)
    g = np.repeat([0, 1], [700, 2800]).astype(np.int64)
    two = categorical_tests(rng.integers(0, 2, 3000), codes_2, g, 2, ["x", "y"], th)
    nine = categorical_tests(rng.integers(0, 9, 3000), codes_9, g, 2, [str(i) for i in range(9)], th)
    assert two.method == [JENSEN_SHANNON, JENSEN_SHANNON]
    assert nine.method == [CHI2, JENSEN_SHANNON]  # 700 <= 150·8 = 1200 < 2800


def test_a_reference_too_small_is_not_tested() -> None:
    got = numeric_tests(np.array([1.0, 2.0, np.nan]), np.arange(100.0), np.zeros(100, dtype=np.int64), 1, TH)
    assert got.method == [None] and "the reference has 2 value(s)" in str(got.note[0])


def test_benjamini_hochberg_matches_scipy_and_skips_nans() -> None:
    rng = np.random.default_rng(3)
    p = rng.random(40) ** 3
    assert np.allclose(benjamini_hochberg(p), stats.false_discovery_control(p, method="bh"))
    with_nan = np.array([0.01, np.nan, 0.04, 0.03])
    adjusted = benjamini_hochberg(with_nan)
    assert np.isnan(adjusted[1])
    assert np.allclose(adjusted[[0, 2, 3]], stats.false_discovery_control([0.01, 0.04, 0.03]))
    assert np.isnan(benjamini_hochberg(np.array([np.nan]))).all()


@pytest.mark.parametrize(("flags", "expected"), [
    ([True], [False]),
    ([False, True], [False, False]),
    ([True, True], [False, True]),
    ([True, False, True], [False, False, False]),
    ([True, True, True, False, True], [False, True, True, False, False]),
    ([True, None, True], [False, False, True]),  # an untested window is skipped over
    ([None, None], [False, False]),
])
def test_the_alert_rule(flags: list[bool | None], expected: list[bool]) -> None:
    assert alerts(flags) == expected


def _drifted(ref_num: np.ndarray, num: np.ndarray, ref_cat: np.ndarray, cat: np.ndarray,
             groups: np.ndarray, n_groups: int) -> list[bool]:
    """Per window: any of the two columns drifted after the correction (as a report does)."""
    a = numeric_tests(ref_num, num, groups, n_groups, TH)
    b = categorical_tests(ref_cat, cat, groups, n_groups, ["x", "y", "z"], TH)
    flags = np.zeros(n_groups, dtype=bool)
    p = np.concatenate([a.p_value, b.p_value])
    adjusted = benjamini_hochberg(p)
    for k, t in enumerate((a, b)):
        for w, method in enumerate(t.method):
            if method in (KS, CHI2):
                flags[w] |= adjusted[k * n_groups + w] < TH.alpha
            elif method == WASSERSTEIN:
                flags[w] |= t.statistic[w] > TH.wasserstein
            elif method == JENSEN_SHANNON:
                flags[w] |= t.statistic[w] > TH.jensen_shannon
    return flags.tolist()


@pytest.mark.parametrize(("n", "seeds"), [(400, 60), (8000, 12)])
def test_identical_distributions_rarely_drift(n: int, seeds: int) -> None:
    windows, drifted, alerted = 6, 0, 0
    for seed in range(seeds):
        rng = np.random.default_rng(100 + seed)
        groups = np.repeat(np.arange(windows), n).astype(np.int64)
        flags = _drifted(rng.lognormal(2, 0.5, n), rng.lognormal(2, 0.5, n * windows),
                         rng.choice(3, n, p=[0.6, 0.3, 0.1]),
                         rng.choice(3, n * windows, p=[0.6, 0.3, 0.1]), groups, windows)
        drifted += sum(flags)
        alerted += any(alerts(flags))
    assert drifted / (seeds * windows) <= 0.02  # alpha 0.01 over the report: a window seldom
    assert alerted <= 1


@pytest.mark.parametrize("n", [400, 8000])
def test_a_shifted_distribution_and_a_label_share_shift_are_found(n: int) -> None:
    rng = np.random.default_rng(5)
    ref_num, ref_cat = rng.normal(50, 10, n), rng.choice(3, n, p=[0.6, 0.3, 0.1])
    groups = np.repeat([0, 1, 2], n).astype(np.int64)
    num = np.concatenate([rng.normal(50, 10, n), rng.normal(56, 10, n), rng.normal(50, 10, n)])
    cat = np.concatenate([rng.choice(3, n, p=[0.6, 0.3, 0.1]), rng.choice(3, n, p=[0.6, 0.3, 0.1]),
                          rng.choice(3, n, p=[0.2, 0.3, 0.5])])
    assert _drifted(ref_num, num, ref_cat, cat, groups, 3) == [False, True, True]
    shares = categorical_tests(ref_cat, cat, groups, 3, ["x", "y", "z"], TH).summary[2]["shares"]
    assert isinstance(shares, dict) and shares["z"] == pytest.approx(0.5, abs=0.05)


def test_summaries() -> None:
    rng = np.random.default_rng(2)
    values = rng.normal(10, 2, 5000)
    got = numeric_tests(values, values, one_window(values), 1, TH).summary[0]
    assert got["n"] == 5000 and got["mean"] == pytest.approx(values.mean())
    assert got["p50"] == pytest.approx(np.median(values), abs=0.05)
    assert got["p95"] == pytest.approx(np.quantile(values, 0.95), abs=0.05)
    codes = np.array([1, 1, 0, -1])
    binary = categorical_tests(codes, codes, np.zeros(4, dtype=np.int64), 1, ["0", "1"], TH,
                               binary=True).summary[0]
    assert binary["n"] == 3 and binary["rate"] == pytest.approx(2 / 3)


def test_thresholds_are_validated() -> None:
    with pytest.raises(ValueError):
        Thresholds(alpha=0)
    with pytest.raises(ValueError):
        Thresholds(bins=0)
