"""What the cache did for one feature over a range: calls, hits by kind, the share of
calls a hit answered, and the cost the hits saved (``/api/stats/features/{feature}``'s
``cache``, for features with a cache; see docs/caching.md).

Read from the events (``events_feature_ts`` bounds the scan to the feature's calls in
the range), like :mod:`keel.store.route_stats`: the rollups do not carry the cache columns.
A hit's event has ``cache`` = ``exact`` or ``semantic`` and ``saved_usd`` = the cost of the
call it avoided (``null`` when that call's price was unknown: counted in ``saved_unknown``).
"""

from __future__ import annotations

from keel.store.db import Store
from keel.types import JSON


def cache_stats(store: Store, feature: str, since: float, until: float) -> dict[str, JSON]:
    """``{"calls", "hits": {"exact", "semantic"}, "hit_rate", "saved_usd", "saved_unknown"}``."""
    conn = store.connect()
    try:
        row = conn.execute(
            "SELECT COUNT(*),"
            " SUM(CASE WHEN cache = 'exact' THEN 1 ELSE 0 END),"
            " SUM(CASE WHEN cache = 'semantic' THEN 1 ELSE 0 END),"
            " SUM(CASE WHEN cache IS NOT NULL THEN saved_usd ELSE 0 END),"
            " SUM(CASE WHEN cache IS NOT NULL AND saved_usd IS NULL THEN 1 ELSE 0 END)"
            " FROM events WHERE feature = ? AND ts >= ? AND ts < ?",
            (feature, since, until)).fetchone()
    finally:
        conn.close()
    calls, exact, semantic = int(row[0]), int(row[1] or 0), int(row[2] or 0)
    return {"calls": calls, "hits": {"exact": exact, "semantic": semantic},
            "hit_rate": (exact + semantic) / calls if calls else None,
            "saved_usd": round(float(row[3] or 0.0), 12), "saved_unknown": int(row[4] or 0)}
