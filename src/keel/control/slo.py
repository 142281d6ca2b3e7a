"""Service-level objectives per feature: error budgets and multiwindow burn rates,
computed from the events table.

Every objective is read as "good events" over the SLO window (``slo.window_days``):

=========================  ===================================  =====================
objective                  a bad event                          allowed bad share
=========================  ===================================  =====================
``error_rate``             decision ``error``                   the target
``validation_failure_rate`` any output validator failed          the target
``review_rate``            decision ``review``                  the target
``latency_p95_ms``         a call slower than the threshold     5% (what a p95 allows)
``cost_per_call_usd``      (a mean: spent USD vs target × calls)  the target per call
=========================  ===================================  =====================

The **error budget** is the bad events the window allows: ``allowed = share × calls``
(for cost: ``target × calls of known cost``, in USD); ``budget_remaining = 1 -
bad / allowed`` (negative once overspent; 1 with no calls). The **burn rate** over a
short window is how fast the budget goes there: ``(bad / calls) / allowed share`` (cost:
mean cost / target); 1 spends exactly the budget in one SLO window. Alerts follow the
Google SRE workbook's multiwindow, multi-burn-rate rule: **page** when the burn rate is
above ``page_burn_rate`` (14.4: 2% of a 30-day budget in an hour) over both 1 h and 5 m,
**ticket** when above ``ticket_burn_rate`` (6: 5% in six hours) over both 6 h and 30 m.
The short window makes an alert stop soon after the problem does.

Calls refused for bad input (a :class:`~keel.errors.RequestError` code such as
``input_schema_violation``) are the caller's doing: they are left out of every objective.
A call answered by a fallback version is not an error here (the caller got an answer).

One query per feature computes every objective and window (index ``events_feature_ts``);
the exact p95 of the window is one more, sorted query.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from keel.errors import RequestError
from keel.spec import SLOSpec
from keel.store.db import Connection, Store
from keel.types import JSON

OBJECTIVES = ("latency_p95_ms", "error_rate", "validation_failure_rate", "review_rate",
              "cost_per_call_usd")
# burn-rate windows, seconds
WINDOWS: dict[str, float] = {"5m": 300.0, "30m": 1800.0, "1h": 3600.0, "6h": 21600.0}
PAGE_WINDOWS = ("1h", "5m")
TICKET_WINDOWS = ("6h", "30m")
LATENCY_BAD_SHARE = 0.05  # a p95 lets 5% of calls be slower than its threshold
DAY = 86400.0

# how the event writer (orjson, compact) stores a failed ValidationResult
_FAILED_VALIDATION = '%"passed":false%'


def _codes(cls: type[RequestError]) -> set[str]:
    return {cls.code}.union(*(_codes(sub) for sub in cls.__subclasses__()))


CLIENT_ERROR_CODES = tuple(sorted(_codes(RequestError)))


@dataclass(frozen=True, slots=True)
class SLOStatus:
    """One objective of one feature at ``now``."""

    feature: str
    objective: str
    target: float  # as written in keel.yaml
    window_days: float
    calls: int  # calls counted over the window (cost: calls of known cost)
    bad: float  # bad calls over the window (cost: USD spent)
    allowed: float  # the error budget: bad calls allowed so far (cost: USD)
    observed: float | None  # the window's rate, p95 (ms) or mean cost; None: no calls
    budget_remaining: float  # 1 - bad / allowed; negative once overspent
    burn_rates: dict[str, float | None] = field(default_factory=dict)  # window -> rate
    page: bool = False
    ticket: bool = False

    @property
    def met(self) -> bool:
        """The objective holds over the window (the budget is not overspent)."""
        return self.budget_remaining >= 0

    def to_json(self) -> dict[str, JSON]:
        return {
            "feature": self.feature, "objective": self.objective, "target": self.target,
            "window_days": self.window_days, "calls": self.calls, "bad": self.bad,
            "allowed": self.allowed, "observed": self.observed,
            "budget_remaining": self.budget_remaining, "burn_rates": dict(self.burn_rates),
            "page": self.page, "ticket": self.ticket, "met": self.met,
        }


@dataclass(frozen=True, slots=True)
class _Measure:
    """A sum over the events: an SQL expression and its arguments."""

    sql: str
    args: tuple[float | str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Objective:
    name: str
    target: float
    bad: str  # measure names
    calls: str
    per_call: float  # allowed bad per counted call


def objectives(spec: SLOSpec) -> list[_Objective]:
    """The objectives ``spec`` sets, in :data:`OBJECTIVES` order."""
    out = []
    if spec.latency_p95_ms is not None:
        out.append(_Objective("latency_p95_ms", spec.latency_p95_ms, "slow", "calls", LATENCY_BAD_SHARE))
    if spec.error_rate is not None:
        out.append(_Objective("error_rate", spec.error_rate, "errors", "calls", spec.error_rate))
    if spec.validation_failure_rate is not None:
        out.append(_Objective("validation_failure_rate", spec.validation_failure_rate,
                              "validation_failures", "calls", spec.validation_failure_rate))
    if spec.review_rate is not None:
        out.append(_Objective("review_rate", spec.review_rate, "reviews", "calls", spec.review_rate))
    if spec.cost_per_call_usd is not None:
        out.append(_Objective("cost_per_call_usd", spec.cost_per_call_usd, "cost", "cost_known",
                              spec.cost_per_call_usd))
    return out


def _measures(spec: SLOSpec) -> dict[str, _Measure]:
    return {
        "calls": _Measure("1"),
        "errors": _Measure("CASE WHEN decision = 'error' THEN 1 ELSE 0 END"),
        "validation_failures": _Measure("CASE WHEN validations LIKE ? THEN 1 ELSE 0 END",
                                        (_FAILED_VALIDATION,)),
        "reviews": _Measure("CASE WHEN decision = 'review' THEN 1 ELSE 0 END"),
        "slow": _Measure("CASE WHEN latency_ms > ? THEN 1 ELSE 0 END",
                         (spec.latency_p95_ms or 0.0,)),
        "cost": _Measure("COALESCE(cost_usd, 0)"),
        "cost_known": _Measure("CASE WHEN cost_usd IS NOT NULL THEN 1 ELSE 0 END"),
    }


def _valid(feature: str, since: float, now: float) -> tuple[str, tuple[float | str, ...]]:
    """The events an SLO counts: the feature's in ``[since, now]``, bad input left out."""
    marks = ", ".join("?" * len(CLIENT_ERROR_CODES))
    return (f"feature = ? AND ts >= ? AND ts <= ? AND NOT (decision = 'error'"
            f" AND COALESCE(error_code, '') IN ({marks}))",
            (feature, since, now, *CLIENT_ERROR_CODES))


def slo_status(store: Store, feature: str, spec: SLOSpec, now: float, *,
               exact_p95: bool = True) -> list[SLOStatus]:
    """Every objective ``spec`` sets for ``feature``, judged at ``now`` (unix seconds).
    ``exact_p95``: also compute the window's p95 latency (a sorted query) as the latency
    objective's ``observed``; without it that is None."""
    wanted = objectives(spec)
    if not wanted:
        return []
    measures = _measures(spec)
    names = list(dict.fromkeys(n for o in wanted for n in (o.bad, o.calls)))
    columns: list[str] = []
    args: list[float | str] = []
    for window in (None, *WINDOWS):  # None: the whole SLO window
        for name in names:
            m = measures[name]
            if window is None:
                columns.append(f"COALESCE(SUM({m.sql}), 0)")
                args.extend(m.args)
            else:
                columns.append(f"COALESCE(SUM(CASE WHEN ts >= ? THEN {m.sql} ELSE 0 END), 0)")
                args.extend((now - WINDOWS[window], *m.args))
    where, where_args = _valid(feature, now - spec.window_days * DAY, now)
    conn = store.connect()
    try:
        row = conn.execute(f"SELECT {', '.join(columns)} FROM events WHERE {where}",
                           (*args, *where_args)).fetchone()
        values = [float(v) for v in row]
        sums: dict[str | None, dict[str, float]] = {}
        for i, window in enumerate((None, *WINDOWS)):
            sums[window] = dict(zip(names, values[i * len(names):(i + 1) * len(names)], strict=True))
        p95 = None
        if exact_p95 and spec.latency_p95_ms is not None:
            p95 = _p95(conn, where, where_args, int(sums[None]["calls"]))
    finally:
        conn.close()
    return [_status(feature, spec, o, sums, p95) for o in wanted]


def _status(feature: str, spec: SLOSpec, objective: _Objective,
            sums: dict[str | None, dict[str, float]], p95: float | None) -> SLOStatus:
    whole = sums[None]
    calls, bad = whole[objective.calls], whole[objective.bad]
    allowed = objective.per_call * calls
    burn: dict[str, float | None] = {}
    for window in WINDOWS:
        n = sums[window][objective.calls]
        burn[window] = None if n == 0 else (sums[window][objective.bad] / n) / objective.per_call
    mean = bad / calls if calls else None
    observed = p95 if objective.name == "latency_p95_ms" else mean
    return SLOStatus(
        feature=feature, objective=objective.name, target=objective.target,
        window_days=spec.window_days, calls=int(calls), bad=bad if objective.bad == "cost" else int(bad),
        allowed=allowed, observed=observed,
        budget_remaining=1.0 if allowed == 0 else 1.0 - bad / allowed,
        burn_rates=burn,
        page=_above(burn, PAGE_WINDOWS, spec.page_burn_rate),
        ticket=_above(burn, TICKET_WINDOWS, spec.ticket_burn_rate),
    )


def _above(burn: dict[str, float | None], windows: Sequence[str], threshold: float) -> bool:
    rates = [burn[w] for w in windows]
    return all(r is not None and r > threshold for r in rates)


def _p95(conn: Connection, where: str, args: tuple[float | str, ...],
         n: int) -> float | None:
    """The p95 with linear interpolation (as numpy's default), reading only the slowest
    ~5% of rows."""
    if n == 0:
        return None
    h = 0.95 * (n - 1)
    lo, hi = math.floor(h), math.ceil(h)
    rows = conn.execute(f"SELECT latency_ms FROM events WHERE {where} ORDER BY latency_ms DESC"
                        " LIMIT ? OFFSET ?", (*args, hi - lo + 1, n - 1 - hi)).fetchall()
    if len(rows) < hi - lo + 1:  # rows arrived between the two queries: near enough
        return float(rows[0][0]) if rows else None
    upper, lower = float(rows[0][0]), float(rows[-1][0])
    return lower + (upper - lower) * (h - lo)
