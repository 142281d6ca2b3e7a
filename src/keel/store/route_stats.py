"""What routing policies did for one feature over a range: calls, cost and saved USD per
policy choice (``cascade:kept``, ``cheapest:picked``, ...) and served version.

Read from the events (``events_feature_ts`` bounds the scan to the feature's calls in
the range): the rollups do not carry the policy columns. Calls with no policy (the fixed
route, cache hits) are not counted here. ``saved_usd`` sums the events' saved_usd
(see :mod:`keel.stages.route_policy` for its definition); ``saved_unknown`` counts the
calls whose saving is unknown (a price missing, or no answer).
"""

from __future__ import annotations

import math

from keel.store.db import Store
from keel.types import JSON


def routing(store: Store, feature: str, since: float, until: float) -> dict[str, JSON]:
    """``{"saved_usd", "calls", "rows": [{policy, version, calls, cost_usd, saved_usd,
    saved_unknown}]}``, rows by calls, most first."""
    conn = store.connect()
    try:
        rows = conn.execute(
            "SELECT policy, version, COUNT(*), SUM(cost_usd), SUM(saved_usd), COUNT(saved_usd)"
            " FROM events WHERE feature = ? AND ts >= ? AND ts < ? AND policy IS NOT NULL"
            " GROUP BY policy, version", (feature, since, until)).fetchall()
    finally:
        conn.close()
    out: list[JSON] = []
    for r in rows:  # by position: the row types of both engines allow it
        calls = int(r[2])
        out.append({"policy": r[0], "version": r[1], "calls": calls,
                    "cost_usd": float(r[3] or 0.0), "saved_usd": _clean(float(r[4] or 0.0)),
                    "saved_unknown": calls - int(r[5])})
    out.sort(key=lambda r: (-r["calls"], r["policy"], r["version"] or ""))
    return {"calls": sum(r["calls"] for r in out),
            "saved_usd": _clean(sum(r["saved_usd"] for r in out)), "rows": out}


def _clean(value: float) -> float:
    """Sums of tiny float savings: no -0.0 and no 1e-19 noise in the API."""
    value = round(value, 12)
    return 0.0 if value == 0 or not math.isfinite(value) else value
