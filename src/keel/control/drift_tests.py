"""The statistics of drift: pure numpy/scipy, vectorised over windows.

One call tests one column in every window at once against the reference sample. The
test is chosen per window by sample size, ``n = min(n_reference, n_window)``:

* **numeric** — ``n <= small_n`` (5000): the two-sample Kolmogorov–Smirnov test (exact
  statistic; p-value from the Kolmogorov distribution with ``n_r·n_w/(n_r+n_w)``
  observations, what :func:`scipy.stats.ks_2samp` computes with ``method="asymp"``).
  Larger: the Wasserstein-1 distance divided by the reference's robust spread
  (IQR / 1.349, the standard deviation of a normal; its standard deviation when the
  IQR is 0; 1 when both are), drifted above ``wasserstein`` (0.1: the distribution moved
  by a tenth of a standard deviation on average). It is computed from histograms with
  edges at ``bins`` quantiles of the reference, plus linear tails out to the extremes.
* **categorical** — the chi-square test of homogeneity on the 2×K table (categories
  whose expected count is below 5 on either side are pooled into one), unless ``n``
  exceeds both ``small_n`` and ``per_category·(K−1)``: then the Jensen–Shannon distance
  (base 2, in [0, 1]) of the two share vectors, drifted above ``jensen_shannon`` (0.1).
  The second bound keeps the distance's own sampling noise, about
  ``sqrt((K−1)(1/n_r+1/n_w)/(8 ln 2))``, below half its threshold.

With large samples every p-value test finds *some* difference; distances with fixed
thresholds ask whether it is big enough to matter. The p-values of all windows and
columns of one report are corrected together by Benjamini–Hochberg
(:func:`benjamini_hochberg`) and a test drifts when its adjusted p-value is below
``alpha``. :func:`alerts` is the alert rule: two drifted windows in a row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

# scipy.stats is imported by the two functions that need it, not here: this module is
# imported by every `keel serve` process (the drift API), and scipy.stats alone is ~70 MB
# of resident memory per process (bench/memory.py) that only a drift report uses

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Array = npt.NDArray[Any]  # counts and values of any numeric dtype

KS: Final = "ks"
CHI2: Final = "chi2"
WASSERSTEIN: Final = "wasserstein"
JENSEN_SHANNON: Final = "jensen_shannon"
CLASSIFIER_AUC: Final = "classifier_auc"
MMD: Final = "mmd"
P_VALUE_METHODS: Final = frozenset({KS, CHI2, MMD})
_TAIL_EDGES: Final = 64  # linear edges between the reference's extremes and the data's
_MIN_EXPECTED: Final = 5.0  # chi-square: categories expected less often are pooled
_MAX_SHARES: Final = 20  # categories listed in a window's summary (the rest: "(other)")
OTHER: Final = "(other)"


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Every number that decides a test or a drift flag (see the module docstring)."""

    small_n: int = 5000  # min(n_reference, n_window) up to this: a p-value test
    per_category: int = 150  # categorical: distances also need this many per extra category
    min_n: int = 30  # fewer values in a window or in the reference: not tested
    alpha: float = 0.01  # Benjamini–Hochberg false-discovery rate over a report's p-values
    wasserstein: float = 0.1  # normalised Wasserstein-1 above this: drifted
    jensen_shannon: float = 0.1  # Jensen–Shannon distance (base 2) above this: drifted
    auc: float = 0.6  # embeddings: domain-classifier ROC AUC above this: drifted
    embedding_small_n: int = 200  # embeddings: fewer texts per side: the MMD test instead
    embedding_sample: int = 500  # embeddings: texts sampled per side (seeded)
    bins: int = 512  # histogram bins (reference quantiles) for the Wasserstein distance

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), not {self.alpha}")
        if min(self.small_n, self.min_n, self.bins, self.embedding_sample) < 1:
            raise ValueError("sample sizes and bins must be >= 1")

    def to_json(self) -> dict[str, float]:
        return asdict(self)


@dataclass(slots=True)
class ColumnTests:
    """One column's tests in every window (arrays indexed by window)."""

    method: list[str | None]  # None: not tested (see note)
    statistic: FloatArray  # KS D, chi-square, normalised W1, JS distance, AUC or MMD²
    p_value: FloatArray  # NaN for distances
    n: IntArray  # the window's values
    summary: list[dict[str, object]]  # per window: n, mean / p50 / p95, or shares / rate
    note: list[str | None] = field(default_factory=list)


# --- numeric ---------------------------------------------------------------------------


def robust_scale(ref: FloatArray) -> float:
    """IQR / 1.349 of ``ref``; its standard deviation when that is 0; else 1."""
    q25, q75 = np.quantile(ref, [0.25, 0.75])
    scale = float(q75 - q25) / 1.349
    if scale <= 0:
        scale = float(np.std(ref))
    return scale if scale > 0 else 1.0


def ks_statistic(ref_sorted: FloatArray, sample: FloatArray) -> float:
    """The two-sample KS statistic sup|F_ref − F_sample|, exact, in O(m log n): both
    ECDFs are evaluated at (and just before) the sample's points only, which is where
    the supremum of two right-continuous step functions can be."""
    x = np.sort(sample)
    n, m = ref_sorted.size, x.size
    at = np.abs(np.searchsorted(ref_sorted, x, "right") / n - np.searchsorted(x, x, "right") / m)
    before = np.abs(np.searchsorted(ref_sorted, x, "left") / n - np.searchsorted(x, x, "left") / m)
    return float(max(at.max(), before.max()))


def ks_pvalue(d: Array | float, n_ref: Array | int, n_sample: Array | int) -> FloatArray:
    """Two-sided p-value of KS statistic ``d`` (scipy's ``method="asymp"``)."""
    from scipy.stats import kstwo  # type: ignore[import-untyped]

    n1 = np.asarray(n_ref, dtype=np.float64)
    n2 = np.asarray(n_sample, dtype=np.float64)
    en = np.round(n1 * n2 / (n1 + n2))
    return np.asarray(np.clip(kstwo.sf(d, en), 0.0, 1.0), dtype=np.float64)


def _edges(ref: FloatArray, values: FloatArray, bins: int) -> FloatArray:
    lo = float(min(ref.min(), values.min())) if values.size else float(ref.min())
    hi = float(max(ref.max(), values.max())) if values.size else float(ref.max())
    parts = [np.quantile(ref, np.linspace(0.0, 1.0, bins + 1))]
    if lo < ref.min():
        parts.append(np.linspace(lo, float(ref.min()), _TAIL_EDGES))
    if hi > ref.max():
        parts.append(np.linspace(float(ref.max()), hi, _TAIL_EDGES))
    return np.unique(np.concatenate(parts))


def _wasserstein(ref: FloatArray, v: FloatArray, g: IntArray, n_groups: int, counts: IntArray,
                 bins: int) -> tuple[FloatArray, FloatArray, FloatArray]:
    """W1(ref, window) for every window from histograms, and each window's CDF at the edges.

    Bin i holds the values in (e[i-1], e[i]]. With D = F_ref − F_window, integration by
    parts gives each bin's integral exactly from the CDFs at its edges and the sums of the
    values in it: ∫ D dx = e[i]·D(e[i]) − e[i-1]·D(e[i-1]) − (S_ref/n_ref − S_win/n_win).
    Summing |per-bin integrals| is W1 = ∫|D| dx exactly when D keeps its sign inside each
    bin, so heavy tails and point masses off the edges cost no accuracy.
    """
    center = float(np.median(ref))  # less cancellation in e·D − S/n
    ref, v = ref - center, v - center
    edges = _edges(ref, v, bins)
    e = edges.size
    cell = g * e + np.searchsorted(edges, v, "left")
    n = np.maximum(counts, 1)[:, None]
    hist = np.bincount(cell, minlength=n_groups * e).reshape(n_groups, e)
    sums = np.bincount(cell, weights=v, minlength=n_groups * e).reshape(n_groups, e) / n
    ref_cell = np.searchsorted(edges, ref, "left")
    cdf_ref = np.cumsum(np.bincount(ref_cell, minlength=e)) / ref.size
    sums_ref = np.bincount(ref_cell, weights=ref, minlength=e) / ref.size
    cdf = np.cumsum(hist, axis=1) / n
    d = cdf_ref[None, :] - cdf
    ed = edges[None, :] * d
    per_bin = ed[:, 1:] - ed[:, :-1] - (sums_ref[None, 1:] - sums[:, 1:])
    return np.abs(per_bin).sum(axis=1), cdf, edges + center


def _quantiles_from_cdf(cdf: FloatArray, edges: FloatArray, qs: Sequence[float]) -> FloatArray:
    """Per row of ``cdf`` (F at each edge), the first edge where F reaches each q."""
    out = np.empty((cdf.shape[0], len(qs)))
    for j, q in enumerate(qs):
        idx = np.minimum((cdf < q - 1e-12).sum(axis=1), edges.size - 1)
        out[:, j] = edges[idx]
    return out


def numeric_tests(ref: Array, values: Array, groups: IntArray, n_groups: int,
                  th: Thresholds) -> ColumnTests:
    """Test ``values`` (window ``groups[i]`` each; −1: in none) against ``ref`` in every
    window. NaNs (missing values) are left out on both sides."""
    ref = ref[~np.isnan(ref)]
    keep = ~np.isnan(values) & (groups >= 0)
    v, g = values[keep], groups[keep]
    counts = np.bincount(g, minlength=n_groups).astype(np.int64)
    method: list[str | None] = [None] * n_groups
    stat = np.full(n_groups, np.nan)
    pval = np.full(n_groups, np.nan)
    note: list[str | None] = [None] * n_groups
    summary: list[dict[str, object]] = [{"n": int(c)} for c in counts]
    sums = np.bincount(g, weights=v, minlength=n_groups)
    for w in np.flatnonzero(counts):
        summary[w]["mean"] = float(sums[w] / counts[w])
    if ref.size < th.min_n:
        return ColumnTests(method, stat, pval, counts, summary,
                           [f"the reference has {ref.size} value(s), fewer than {th.min_n}"] * n_groups)
    w1, cdf, edges = _wasserstein(ref, v, g, n_groups, counts, th.bins)
    w1 /= robust_scale(ref)
    quantiles = _quantiles_from_cdf(cdf, edges, (0.5, 0.95))
    for w in np.flatnonzero(counts):
        summary[w]["p50"], summary[w]["p95"] = float(quantiles[w, 0]), float(quantiles[w, 1])
    small = np.minimum(counts, ref.size) <= th.small_n
    ks_windows = np.flatnonzero(small & (counts >= th.min_n))
    if ks_windows.size:
        ref_sorted = np.sort(ref)
        order = np.argsort(g, kind="stable")
        bounds = np.searchsorted(g[order], np.arange(n_groups + 1))
        for w in ks_windows:
            stat[w] = ks_statistic(ref_sorted, v[order[bounds[w]:bounds[w + 1]]])
            method[w] = KS
        pval[ks_windows] = ks_pvalue(stat[ks_windows], ref.size, counts[ks_windows])
    large = np.flatnonzero(~small)
    stat[large] = w1[large]
    for w in large:
        method[w] = WASSERSTEIN
    for w in np.flatnonzero(counts < th.min_n):
        note[w] = f"{counts[w]} value(s), fewer than {th.min_n}"
    return ColumnTests(method, stat, pval, counts, summary, note)


def numeric_summary(values: Array) -> dict[str, object]:
    """n, mean, p50 and p95 of one sample (the reference's line in a report)."""
    v = values[~np.isnan(values)]
    if not v.size:
        return {"n": 0}
    p50, p95 = np.quantile(v, [0.5, 0.95])
    return {"n": int(v.size), "mean": float(v.mean()), "p50": float(p50), "p95": float(p95)}


# --- categorical -----------------------------------------------------------------------


def chi2_homogeneity(ref_counts: Array, counts: Array) -> tuple[FloatArray, FloatArray, IntArray]:
    """Chi-square test of homogeneity of ``ref_counts`` [K] against each row of
    ``counts`` [W, K]: (statistic, p-value, degrees of freedom) per row. Categories with
    an expected count below 5 in either row are pooled into one; with no pooling this is
    :func:`scipy.stats.chi2_contingency` with ``correction=False``."""
    from scipy.stats import chi2  # type: ignore[import-untyped]

    ref = np.asarray(ref_counts, dtype=np.float64)[None, :]
    win = np.asarray(counts, dtype=np.float64)
    n_ref, n_win = ref.sum(), win.sum(axis=1, keepdims=True)
    col = win + ref
    total = np.maximum(n_ref + n_win, 1.0)
    e_ref, e_win = n_ref * col / total, n_win * col / total
    present = col > 0
    rare = present & (np.minimum(e_ref, e_win) < _MIN_EXPECTED)
    keep = present & ~rare
    with np.errstate(divide="ignore", invalid="ignore"):
        cell = np.where(keep, (win - e_win) ** 2 / e_win + (ref - e_ref) ** 2 / e_ref, 0.0)
        stat = cell.sum(axis=1)
        pooled_e_win, pooled_e_ref = (e_win * rare).sum(axis=1), (e_ref * rare).sum(axis=1)
        pooled = ((win * rare).sum(axis=1) - pooled_e_win) ** 2 / pooled_e_win \
            + ((ref * rare).sum(axis=1) - pooled_e_ref) ** 2 / pooled_e_ref
    has_pool = rare.any(axis=1) & (pooled_e_win > 0) & (pooled_e_ref > 0)
    stat = stat + np.where(has_pool, pooled, 0.0)
    dof = (keep.sum(axis=1) + has_pool - 1).astype(np.int64)
    p = np.where(dof >= 1, chi2.sf(stat, np.maximum(dof, 1)), 1.0)
    return stat, np.asarray(p, dtype=np.float64), dof


def jensen_shannon(ref_counts: Array, counts: Array) -> FloatArray:
    """Jensen–Shannon distance (base 2) of the shares ``ref_counts`` [K] and each row of
    ``counts`` [W, K] (scipy.spatial.distance.jensenshannon(p, q, base=2))."""
    p = np.asarray(ref_counts, dtype=np.float64)
    p = (p / max(p.sum(), 1.0))[None, :]
    q = np.asarray(counts, dtype=np.float64)
    q = q / np.maximum(q.sum(axis=1, keepdims=True), 1.0)
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log2(p / m), 0.0).sum(axis=1)
        kl_q = np.where(q > 0, q * np.log2(q / m), 0.0).sum(axis=1)
    return np.asarray(np.sqrt(np.clip((kl_p + kl_q) / 2, 0.0, 1.0)), dtype=np.float64)


def shares(counts: FloatArray, categories: Sequence[str], keep: Sequence[int] | None = None) -> dict[str, float]:
    """Shares of the ``keep`` categories (default: all), the rest as ``(other)``."""
    total = float(counts.sum())
    if total <= 0:
        return {}
    chosen = range(len(categories)) if keep is None else keep
    out = {categories[k]: float(counts[k]) / total for k in chosen if counts[k] > 0}
    rest = 1.0 - sum(out.values())
    if keep is not None and rest > 1e-12:
        out[OTHER] = rest
    return out


def top_categories(counts: FloatArray, limit: int = _MAX_SHARES) -> list[int]:
    """The ``limit`` most frequent categories of ``counts`` (ties by index)."""
    order = np.argsort(-np.asarray(counts), kind="stable")
    return [int(k) for k in order[:limit] if counts[k] > 0]


def categorical_tests(ref_codes: IntArray, codes: IntArray, groups: IntArray, n_groups: int,
                      categories: Sequence[str], th: Thresholds, *, binary: bool = False) -> ColumnTests:
    """Test category ``codes`` (−1: missing; window ``groups[i]``, −1: in none) against
    ``ref_codes`` in every window. ``binary`` columns (categories "0"/"1") also report
    the rate of "1"."""
    k = len(categories)
    ref_counts = np.bincount(ref_codes[ref_codes >= 0], minlength=k).astype(np.float64)
    keep = (codes >= 0) & (groups >= 0)
    table = np.bincount(groups[keep] * k + codes[keep], minlength=n_groups * k)
    table = table.reshape(n_groups, k).astype(np.float64)
    counts = table.sum(axis=1).astype(np.int64)
    method: list[str | None] = [None] * n_groups
    stat = np.full(n_groups, np.nan)
    pval = np.full(n_groups, np.nan)
    note: list[str | None] = [None] * n_groups
    listed = top_categories(ref_counts + table.sum(axis=0))
    summary: list[dict[str, object]] = []
    for w in range(n_groups):
        entry: dict[str, object] = {"n": int(counts[w]), "shares": shares(table[w], categories, listed)}
        if binary:
            entry["rate"] = _rate(table[w], categories)
        summary.append(entry)
    n_ref = int(ref_counts.sum())
    if n_ref < th.min_n:
        return ColumnTests(method, stat, pval, counts, summary,
                           [f"the reference has {n_ref} value(s), fewer than {th.min_n}"] * n_groups)
    cats_present = ((table + ref_counts) > 0).sum(axis=1)
    n_min = np.minimum(counts, n_ref)
    large = (n_min > th.small_n) & (n_min > th.per_category * np.maximum(cats_present - 1, 1))
    tested = counts >= th.min_n
    c_stat, c_p, _ = chi2_homogeneity(ref_counts, table)
    js = jensen_shannon(ref_counts, table)
    for w in range(n_groups):
        if not tested[w]:
            note[w] = f"{counts[w]} value(s), fewer than {th.min_n}"
        elif large[w]:
            method[w], stat[w] = JENSEN_SHANNON, js[w]
        else:
            method[w], stat[w], pval[w] = CHI2, c_stat[w], c_p[w]
    return ColumnTests(method, stat, pval, counts, summary, note)


def categorical_summary(codes: IntArray, categories: Sequence[str], *, binary: bool = False) -> dict[str, object]:
    counts = np.bincount(codes[codes >= 0], minlength=len(categories)).astype(np.float64)
    out: dict[str, object] = {"n": int(counts.sum()),
                              "shares": shares(counts, categories, top_categories(counts))}
    if binary:
        out["rate"] = _rate(counts, categories)
    return out


def _rate(counts: FloatArray, categories: Sequence[str]) -> float | None:
    total = float(counts.sum())
    if total <= 0:
        return None
    return float(sum(counts[k] for k, c in enumerate(categories) if c == "1")) / total


# --- corrections and the alert rule ----------------------------------------------------


def benjamini_hochberg(p_values: FloatArray) -> FloatArray:
    """Benjamini–Hochberg adjusted p-values (NaNs stay NaN and do not count as tests);
    as :func:`scipy.stats.false_discovery_control` with ``method="bh"``."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    valid = ~np.isnan(p)
    m = int(valid.sum())
    if m == 0:
        return out
    pv = p[valid]
    order = np.argsort(pv)
    ranked = pv[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1]
    result = np.empty(m)
    result[order] = np.clip(adjusted, 0.0, 1.0)
    out[valid] = result
    return out


def alerts(drifted: Sequence[bool | None]) -> list[bool]:
    """The alert rule: window i alerts when it drifted and so did the tested window
    before it. ``None`` (nothing tested: no data) is skipped over, neither breaking nor
    extending a run."""
    out: list[bool] = []
    previous = False
    for flag in drifted:
        if flag is None:
            out.append(False)
            continue
        out.append(flag and previous)
        previous = flag
    return out
