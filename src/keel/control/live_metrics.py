"""What one version did on live traffic in a time window: the numbers a canary is judged on.

Events are grouped by ``routed``, the version the router chose first, not by the one
that answered: a candidate whose calls fail over to a fallback target is charged with
those calls. Counted per version:

- errors: calls the routed version did not answer (decision ``error``, or ``fallback``:
  a fallback target answered instead);
- validation failures: calls with any failed output validation;
- reviews and refusals: calls decided ``review`` or ``refused``;
- verdicts and overrides: the version's closed review items created in the window, and
  those whose final verdict is ``edit`` or ``reject`` (a human overrode the output);
- latencies: the latest :data:`LATENCY_SAMPLE` calls' ``latency_ms``;
- cost: the sum over calls whose cost is known, and how many those are;
- outcomes: per business outcome name (``POST /api/feedback``, kind ``outcome``), the
  calls in the window that had it (value absent or non-zero), by the call's time: an
  outcome reported later counts for the window its call was in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from keel.control.canary_stats import p95
from keel.store.db import Store
from keel.types import JSON

LATENCY_SAMPLE = 5000  # the latest calls' latencies that p95 is computed from
# how the event writer (orjson, compact) stores a failed ValidationResult
_FAILED_VALIDATION = '%"passed":false%'


@dataclass(frozen=True, slots=True)
class VersionMetrics:
    version: str
    calls: int = 0
    errors: int = 0
    validation_failures: int = 0
    reviews: int = 0
    refusals: int = 0
    overrides: int = 0
    verdicts: int = 0
    latencies: tuple[float, ...] = ()
    cost_sum: float = 0.0
    cost_known: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)

    @property
    def latency_p95_ms(self) -> float | None:
        return p95(self.latencies)

    @property
    def cost_per_call(self) -> float | None:
        return self.cost_sum / self.cost_known if self.cost_known else None

    def to_json(self) -> dict[str, JSON]:
        """The numbers as recorded with a rollout transition (no latency samples)."""
        p = self.latency_p95_ms
        cost = self.cost_per_call
        return {
            "version": self.version, "calls": self.calls, "errors": self.errors,
            "validation_failures": self.validation_failures, "reviews": self.reviews,
            "refusals": self.refusals, "overrides": self.overrides, "verdicts": self.verdicts,
            "latency_p95_ms": None if p is None else round(p, 3),
            "latency_samples": len(self.latencies),
            "cost_per_call_usd": cost, "cost_known": self.cost_known,
            "outcomes": dict(self.outcomes),
        }


def live_metrics(store: Store, feature: str, version: str, since: float,
                 until: float | None = None) -> VersionMetrics:
    """``version``'s calls of ``feature`` with ``since <= ts < until`` (until: now).

    Three queries: on the index ``events_feature_routed_ts`` the counts (with the review
    items as subqueries) and the latest latencies; on ``feedback_feature_routed_ts`` the
    outcomes.
    """
    window = "ts >= ?" + ("" if until is None else " AND ts < ?")
    called = "call_ts >= ?" + ("" if until is None else " AND call_ts < ?")
    bounds: tuple[float, ...] = (since,) if until is None else (since, until)
    counts_sql = (
        "SELECT COUNT(*) AS calls,"
        " COALESCE(SUM(CASE WHEN decision IN ('error', 'fallback') THEN 1 ELSE 0 END), 0),"
        " COALESCE(SUM(CASE WHEN validations LIKE ? THEN 1 ELSE 0 END), 0),"
        " COALESCE(SUM(CASE WHEN decision = 'review' THEN 1 ELSE 0 END), 0),"
        " COALESCE(SUM(CASE WHEN decision = 'refused' THEN 1 ELSE 0 END), 0),"
        " COALESCE(SUM(cost_usd), 0), COUNT(cost_usd),"
        " (SELECT COUNT(*) FROM review_items WHERE feature = ? AND version = ?"
        f"  AND status = 'done' AND {window}),"
        " (SELECT COUNT(*) FROM review_items WHERE feature = ? AND version = ?"
        f"  AND status = 'done' AND final_verdict IN ('edit', 'reject') AND {window})"
        f" FROM events WHERE feature = ? AND routed = ? AND {window}"
    )
    args = (_FAILED_VALIDATION, feature, version, *bounds, feature, version, *bounds,
            feature, version, *bounds)
    conn = store.connect()
    try:
        row = conn.execute(counts_sql, args).fetchone()
        latencies = conn.execute(
            f"SELECT latency_ms FROM events WHERE feature = ? AND routed = ? AND {window}"
            " ORDER BY ts DESC LIMIT ?", (feature, version, *bounds, LATENCY_SAMPLE)).fetchall()
        outcomes = conn.execute(
            "SELECT name, COUNT(DISTINCT trace_id) FROM feedback WHERE feature = ?"
            f" AND routed = ? AND kind = 'outcome' AND {called}"
            " AND (value IS NULL OR value <> 0) GROUP BY name",
            (feature, version, *bounds)).fetchall()
    finally:
        conn.close()
    return VersionMetrics(
        version=version, calls=int(row[0]), errors=int(row[1]), validation_failures=int(row[2]),
        reviews=int(row[3]), refusals=int(row[4]), cost_sum=float(row[5]),
        cost_known=int(row[6]), verdicts=int(row[7]), overrides=int(row[8]),
        latencies=tuple(float(r[0]) for r in latencies),
        outcomes={str(r[0]): int(r[1]) for r in outcomes})
