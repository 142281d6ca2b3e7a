"""``accept_at`` from human verdicts, with a finite-sample guarantee.

A feature's policy auto-accepts an output when its confidence is ``>= accept_at``. Given
n reviewed outputs — a confidence each, and whether the reviewer approved it as is
(``correct``) or edited/rejected it — :func:`calibrate` picks the **lowest** threshold t
(the most coverage) such that, with probability ``>= 1 - delta`` over which outputs were
reviewed, the error rate of future outputs with confidence ``>= t`` is ``<= alpha``.
Reviewed outputs must be a random sample of the traffic (i.i.d.).

**Method "ltt" (default): Clopper–Pearson p-values + fixed-sequence testing** (Learn then
Test; Angelopoulos, Bates, Candès, Jordan & Lei, 2021).

* For a fixed t, let R(t) = P(wrong | confidence >= t). Given that m calibration items
  have confidence >= t, they are i.i.d. draws from above t, so their k errors are
  Binomial(m, R(t)). So ``P(Binomial(m, alpha) <= k)`` is a valid p-value for the null
  "R(t) > alpha"; it is ``<= delta`` exactly when the (1 - delta) Clopper–Pearson upper
  bound on R(t) is ``<= alpha``, and then t *passes*.
* Thresholds on a fixed grid are tested most confident first and the scan **stops at the
  first failure**; the answer is the last pass. No multiplicity correction is needed: to
  pass any bad threshold (R > alpha) the scan must first pass the first bad one on its
  way down — a single threshold, passed with probability ``<= delta``. So
  P(R(t̂) > alpha) <= delta, with the full delta at every step and no assumption that R
  falls as t rises. Taking the lowest passing threshold anywhere would pick after
  looking, and need delta split over the grid (Bonferroni).
* The start. Near confidence 1 few items are accepted and nothing can pass — with no
  error at all, m items certify alpha only if m >= log(delta) / log(1 - alpha)
  (:func:`min_accepted`: 22 for alpha = delta = 0.1) — and starting with just that many,
  one early error would end the scan. So by default it starts at the highest grid
  threshold with :func:`start_count` items above it, the fewest among which one error
  still passes (38 for alpha = delta = 0.1; the selective-classification example of
  Angelopoulos & Bates starts at 30). The start is read from confidences, never from
  verdicts. The guarantee is exact when no bad threshold lies above the start; else the
  start also reveals that few items lie above some bad threshold, which only makes
  passing harder while errors are not more frequent at higher confidence (the premise of
  a confidence threshold). A ``start`` chosen without this sample (e.g. from the
  confidences of unreviewed traffic) leaves no condition at all.
* From a given start, a smaller alpha never gives a lower threshold. The default start
  moves with alpha, so in rare samples (errors among the very top items) a larger alpha
  can stop above a smaller one's start; pass one ``start`` to compare alphas exactly.

**Method "crc": conformal risk control** (Angelopoulos, Bates, Fisch, Lei & Schuster,
2022) bounds another quantity: the *expected* share of **all** items that are
auto-accepted and wrong, ``E[P(wrong and confidence >= t̂)] <= alpha``, taking the lowest
t with ``(errors(t) + 1) / (n + 1) <= alpha``. It is valid because that loss falls as t
rises; the error rate *among accepted* items does not, so CRC cannot target it. Not the
default: it holds on average over calibration samples, not with probability 1 - delta,
and the error among what is accepted can be far above alpha (14% at alpha = 0.1 on
BANKING77). ``delta`` is not used.

Ties: accepting is ``confidence >= t``, so items of equal confidence are accepted or not
together; a threshold never splits them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

# scipy.stats is imported where it is used: `keel serve` imports this module (through the
# CLI), and scipy.stats alone is ~70 MB of resident memory per process (bench/memory.py)

Method = Literal["ltt", "crc"]
Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]

#: Candidate thresholds, 0.000 to 1.000 by 0.001. The local classifier's confidences crowd
#: near 1 (a tenth of BANKING77 is above 0.99), where steps of 0.01 would span hundreds of
#: items; coverage on BANKING77 by grid is in docs/calibration.md.
GRID: tuple[float, ...] = tuple(i / 1000 for i in range(1001))
#: Thresholds of the printed risk–coverage table.
TABLE: tuple[float, ...] = (0.99, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5,
                            0.45, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05, 0.0)


@dataclass(frozen=True, slots=True)
class Calibration:
    """The chosen threshold and what it means on the calibration set."""

    threshold: float | None  # accept_at; None: no threshold meets alpha, accept nothing
    method: Method
    alpha: float
    delta: float
    n: int  # labelled items used
    accepted: int  # calibration items with confidence >= threshold (0 when None)
    errors: int  # of which the reviewer edited or rejected
    coverage: float  # accepted / n: the share answered without a human
    error: float | None  # errors / accepted; None when nothing is accepted
    # ltt: (1 - delta) Clopper–Pearson upper bound on the error among accepted;
    # crc: (errors + 1) / (n + 1), the bound on the expected wrong-and-accepted share
    ucb: float | None
    start: float | None  # ltt: the first threshold the scan tested; crc: None
    reason: str  # one sentence for people: why this threshold, or why none


@dataclass(frozen=True, slots=True)
class RiskRow:
    """One threshold of a risk–coverage table."""

    threshold: float
    accepted: int
    errors: int
    coverage: float
    error: float | None  # empirical error among accepted; None when none is accepted
    ucb: float  # (1 - delta) Clopper–Pearson upper bound on it; 1.0 when none accepted
    ok: bool  # ucb <= alpha (the scan also needs every threshold above it to pass)


@dataclass(frozen=True, slots=True)
class ValidatorQuality:
    """One output validator judged against reviewers: 'bad' = edited or rejected."""

    true_pos: int  # flagged, and the reviewer found it bad
    false_pos: int  # flagged, but the reviewer approved it as is
    false_neg: int  # passed, but the reviewer found it bad
    true_neg: int
    precision: float | None  # of what it flagged, the share that was bad; None: no flags
    recall: float | None  # of what was bad, the share it flagged; None: nothing bad


def _level(value: float, name: str) -> float:
    try:
        level = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        level = math.nan
    if not 0 < level < 1:  # NaN fails too
        raise ValueError(f"{name} must be a number strictly between 0 and 1, got {value!r}")
    return level


def _flags(values: npt.ArrayLike, name: str) -> npt.NDArray[np.bool_]:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a flat list, got shape {arr.shape}")
    if arr.dtype != np.bool_ and not (
        arr.dtype.kind in "iuf" and np.isin(arr, (0, 1)).all()
    ):
        raise ValueError(f"{name} must hold booleans (or 0/1)")
    return arr.astype(np.bool_)


def _items(confidence: npt.ArrayLike, correct: npt.ArrayLike) -> tuple[Floats, npt.NDArray[np.bool_]]:
    try:
        conf = np.asarray(confidence, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("confidence must hold numbers") from None
    if conf.ndim != 1:
        raise ValueError(f"confidence must be a flat list, got shape {conf.shape}")
    ok = _flags(correct, "correct")
    if conf.size != ok.size:
        raise ValueError(f"{conf.size} confidences but {ok.size} verdicts")
    if conf.size == 0:
        raise ValueError("no labelled items: calibration needs reviewed outputs")
    if not (np.isfinite(conf).all() and (conf >= 0).all() and (conf <= 1).all()):
        raise ValueError("confidence must be in [0, 1] (no NaN)")
    return conf, ~ok


def _counts(conf: Floats, wrong: npt.NDArray[np.bool_], thresholds: Floats) -> tuple[Ints, Ints]:
    """Items with confidence >= t, and errors among them, for each threshold."""
    order = np.argsort(conf, kind="stable")
    cum = np.concatenate([[0], np.cumsum(wrong[order])])
    below = np.searchsorted(conf[order], thresholds, side="left")
    return (conf.size - below).astype(np.int64), (cum[-1] - cum[below]).astype(np.int64)


def clopper_pearson_upper(errors: int, n: int, delta: float) -> float:
    """The exact one-sided (1 - delta) upper confidence bound on an error rate."""
    if n == 0 or errors >= n:
        return 1.0
    from scipy.stats import beta  # type: ignore[import-untyped]

    return float(beta.ppf(1 - delta, errors + 1, n - errors))


def _passes(errors: Ints, accepted: Ints, alpha: float, delta: float) -> npt.NDArray[np.bool_]:
    # P(Binomial(m, alpha) <= k) <= delta  <=>  Clopper–Pearson upper bound <= alpha
    from scipy.stats import binom  # type: ignore[import-untyped]

    p = binom.cdf(errors, np.maximum(accepted, 1), alpha)
    result: npt.NDArray[np.bool_] = (accepted > 0) & (p <= delta)
    return result


def _fewest(errors: int, alpha: float, delta: float) -> int:
    """The fewest items among which ``errors`` errors still pass (bisection: P falls in m)."""
    from scipy.stats import binom  # type: ignore[import-untyped]

    alpha, delta = _level(alpha, "alpha"), _level(delta, "delta")
    lo, hi = errors, max(errors + 1, math.ceil(math.log(delta) / math.log1p(-alpha)))
    while binom.cdf(errors, hi, alpha) > delta:  # lo fails (or is below errors + 1)
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if binom.cdf(errors, mid, alpha) <= delta else (mid, hi)
    return hi


def min_accepted(alpha: float, delta: float) -> int:
    """The fewest items that can pass, all correct: log(delta) / log(1 - alpha), rounded up."""
    return _fewest(0, alpha, delta)


def start_count(alpha: float, delta: float) -> int:
    """Items above the first threshold the scan tests by default: the fewest among which
    one error still passes, so that a single early error does not end it."""
    return _fewest(1, alpha, delta)


def _grid(grid: npt.ArrayLike | None) -> Floats:
    try:
        values = np.asarray(GRID if grid is None else grid, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("grid thresholds must be numbers") from None
    if values.ndim != 1 or values.size == 0:
        raise ValueError("grid must be a non-empty flat list of thresholds")
    if not (np.isfinite(values).all() and (values >= 0).all() and (values <= 1).all()):
        raise ValueError("grid thresholds must be in [0, 1]")
    result: Floats = np.unique(values)[::-1]  # most confident first
    return result


def calibrate(
    confidence: npt.ArrayLike,
    correct: npt.ArrayLike,
    alpha: float,
    delta: float = 0.1,
    *,
    method: Method = "ltt",
    grid: npt.ArrayLike | None = None,
    start: float | None = None,
) -> Calibration:
    """The lowest ``accept_at`` on ``grid`` meeting ``alpha`` (see the module docstring).

    ``correct[i]``: the reviewer approved output i as is. ``start`` (ltt only): the
    highest threshold to test; default: the highest with :func:`start_count` items above.
    Raises ValueError on empty or mismatched input, or alpha/delta outside (0, 1).
    """
    conf, wrong = _items(confidence, correct)
    alpha, delta = _level(alpha, "alpha"), _level(delta, "delta")
    thresholds = _grid(grid)
    accepted, errors = _counts(conf, wrong, thresholds)
    n = int(conf.size)

    def result(i: int | None, reason: str, ucb: float | None = None,
               first: int | None = None) -> Calibration:
        begin = float(thresholds[first]) if first is not None else None
        if i is None:
            return Calibration(None, method, alpha, delta, n, 0, 0, 0.0, None, None, begin,
                               reason)
        m, k = int(accepted[i]), int(errors[i])
        return Calibration(float(thresholds[i]), method, alpha, delta, n, m, k, m / n,
                           k / m if m else None, ucb, begin, reason)

    if method == "crc":
        bound = (errors + 1) / (n + 1)  # rises as the threshold falls: passes form a prefix
        run = int(np.argmin(bound <= alpha)) if not (bound <= alpha).all() else bound.size
        if run == 0:
            return result(None, f"(errors + 1) / (n + 1) = {bound[0]:.3f} > alpha {alpha:g} "
                                f"even at {thresholds[0]:g} (n = {n})")
        return result(run - 1, f"lowest threshold whose (errors + 1) / (n + 1) is <= {alpha:g}: "
                               "expected share of all items auto-accepted and wrong <= "
                               f"{alpha:g}", float(bound[run - 1]))
    if method != "ltt":
        raise ValueError(f"method must be 'ltt' or 'crc', got {method!r}")

    if start is None:
        need = min_accepted(alpha, delta)
        if accepted[-1] < need:
            return result(None, f"{n} labelled items; certifying alpha {alpha:g} at delta "
                                f"{delta:g} needs at least {need} above the threshold")
        first = int(np.argmax(accepted >= min(start_count(alpha, delta), accepted[-1])))
    else:
        if not 0 <= start <= 1:
            raise ValueError(f"start must be in [0, 1], got {start!r}")
        if thresholds[-1] > start:
            raise ValueError(f"no grid threshold at or below start {start:g}")
        first = int(np.argmax(thresholds <= start))
    ok = _passes(errors[first:], accepted[first:], alpha, delta)
    run = int(np.argmin(ok)) if not ok.all() else ok.size  # passes before the first failure
    if run == 0:
        m, k = int(accepted[first]), int(errors[first])
        return result(None, f"at {thresholds[first]:g}, the first threshold tested, {k} of {m} "
                            f"accepted items were wrong: upper bound "
                            f"{clopper_pearson_upper(k, m, delta):.3f} > alpha {alpha:g}",
                      first=first)
    i = first + run - 1
    ucb = clopper_pearson_upper(int(errors[i]), int(accepted[i]), delta)
    stop = f" ({thresholds[i + 1]:g} failed)" if i + 1 < thresholds.size else ""
    return result(i, f"lowest threshold, scanning down from {thresholds[first]:g} until the "
                     f"first failure{stop}, whose {1 - delta:.0%} upper bound on the error "
                     f"of accepted items is <= {alpha:g}", ucb, first)


def risk_coverage(
    confidence: npt.ArrayLike,
    correct: npt.ArrayLike,
    alpha: float,
    delta: float = 0.1,
    thresholds: npt.ArrayLike = TABLE,
) -> tuple[RiskRow, ...]:
    """Coverage, error and its upper bound at each threshold, most confident first."""
    conf, wrong = _items(confidence, correct)
    alpha, delta = _level(alpha, "alpha"), _level(delta, "delta")
    ts = _grid(thresholds)
    accepted, errors = _counts(conf, wrong, ts)
    ok = _passes(errors, accepted, alpha, delta).tolist()
    return tuple(
        RiskRow(t, m, k, m / conf.size, k / m if m else None,
                clopper_pearson_upper(k, m, delta), passed)
        for t, m, k, passed in zip(ts.tolist(), accepted.tolist(), errors.tolist(), ok,
                                   strict=True))


def format_risk_coverage(rows: tuple[RiskRow, ...], chosen: float | None = None) -> str:
    """A plain-text table; ``<-`` marks ``chosen``."""
    lines = ["threshold  accepted  coverage   error     ucb  ok"]
    for r in rows:
        error = f"{r.error:.3f}" if r.error is not None else "    -"
        mark = "  <-" if chosen is not None and math.isclose(r.threshold, chosen) else ""
        lines.append(f"{r.threshold:9.3f}  {r.accepted:8d}  {r.coverage:8.3f}  {error:>6}  "
                     f"{r.ucb:6.3f}  {'yes' if r.ok else 'no':>3}{mark}")
    return "\n".join(lines)


def validator_quality(flags: npt.ArrayLike, human_bad: npt.ArrayLike) -> ValidatorQuality:
    """How well one validator's failures (``flags``) match reviewers' edits and rejections."""
    flagged, bad = _flags(flags, "flags"), _flags(human_bad, "human_bad")
    if flagged.size != bad.size:
        raise ValueError(f"{flagged.size} validator results but {bad.size} verdicts")
    if flagged.size == 0:
        raise ValueError("no reviewed outputs to judge the validator on")
    tp = int((flagged & bad).sum())
    fp = int((flagged & ~bad).sum())
    fn = int((~flagged & bad).sum())
    tn = int((~flagged & ~bad).sum())
    return ValidatorQuality(tp, fp, fn, tn, tp / (tp + fp) if tp + fp else None,
                            tp / (tp + fn) if tp + fn else None)
