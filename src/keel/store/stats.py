"""The dashboard's numbers, read from the rollups and the ledger, never from the events.

A time range is read at minute resolution: ``since`` is rounded down and ``until`` up to
whole minutes. Its whole days come from the daily tables, the whole hours left from the
hourly ones and the minutes at the edges from the minute tables (only tables at least as
fine as the series' bucket), so a 30-day overview reads ~30 rows per (feature, version,
decision) rather than ~43,000. Series are cut at bucket starts (UTC); the first and last
points can be partial. Percentiles come from the summed latency histograms (see
:mod:`keel.store.rollups`: in the true value's bin, at most 26 % off).

Each overview is four grouped queries over those rows: counters per (series bucket,
decision) and per (feature, version, decision), latency per series bucket and per
(feature, version); totals, series, features and versions are put together from them.

Costs (:func:`costs`) are day-granular like :func:`keel.store.rollups.spend`: the UTC
days from the one holding ``since`` to the last one starting before ``until``.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from keel.store import rollups
from keel.store.db import Connection, Store
from keel.store.rollups import COUNTS, HIST, LEVELS, N_BINS, day_start
from keel.types import JSON, Decision

Bucket = Literal["minute", "hour", "day"]
BUCKETS: dict[str, int] = {"minute": 60, "hour": 3600, "day": 86400}
MAX_POINTS = 5000  # a series longer than this asks for a coarser bucket
DECISIONS = tuple(d.value for d in Decision)
Group = Literal["key", "user", "feature", "version", "day"]
GROUPS: tuple[str, ...] = ("key", "user", "feature", "version", "day")

# a counters vector: COUNTS, then calls per decision; a latency vector: min, max, bins
_CALLS, _CLIENT, _VFAIL, _TIN, _TOUT, _COST, _UNKNOWN, _LSUM = range(len(COUNTS))
_DEC = len(COUNTS)
Vec = list[float]


def choose_bucket(since: float, until: float) -> Bucket:
    """The bucket of a series when none is asked for: at most a few hundred points."""
    span = until - since
    return "minute" if span <= 3 * 3600 else "hour" if span <= 8 * 86400 else "day"


def points(since: float, until: float, step: int) -> int:
    return max(0, math.ceil(until / step) - math.floor(since / step))


def segments(since: float, until: float, step: int) -> list[tuple[int, int, int]]:
    """[since, until) rounded out to minutes, covered by (level, lo, hi) ranges of bucket
    starts (level: an index into LEVELS): the coarsest level whose bucket divides
    ``step`` for the aligned middle, finer ones for the edges."""
    lo, hi = math.floor(since / 60) * 60, math.ceil(until / 60) * 60
    levels = [i for i, (_, _, s) in enumerate(LEVELS) if s <= step and step % s == 0]

    def cover(a: int, b: int, i: int) -> list[tuple[int, int, int]]:
        if a >= b:
            return []
        s = LEVELS[levels[i]][2]
        if i == 0:
            return [(levels[0], a, b)]
        mid_lo, mid_hi = -(-a // s) * s, b // s * s
        if mid_lo >= mid_hi:
            return cover(a, b, i - 1)
        return [*cover(a, mid_lo, i - 1), (levels[i], mid_lo, mid_hi), *cover(mid_hi, b, i - 1)]

    return cover(lo, hi, len(levels) - 1)


class _Reader:
    """The grouped queries of one range (and feature). Per series bucket they read tables
    as fine as the bucket; over the whole range (per feature and version) the coarsest
    ones, whatever the bucket."""

    def __init__(self, conn: Connection, since: float, until: float, step: int,
                 feature: str | None) -> None:
        self.conn, self.step, self.feature = conn, step, feature
        self.by_bucket = segments(since, until, step)
        self.whole = segments(since, until, BUCKETS["day"])

    def _rows(self, table: int, keys: str, columns: str, per_bucket: bool) -> list[Any]:
        parts: list[str] = []
        args: list[Any] = []
        for level, lo, hi in self.by_bucket if per_bucket else self.whole:
            where = "bucket >= ? AND bucket < ?" + (" AND feature = ?" if self.feature else "")
            parts.append(f"SELECT * FROM {LEVELS[level][table]} WHERE {where}")
            args += [lo, hi, self.feature] if self.feature else [lo, hi]
        if not parts:
            return []
        n_keys = keys.count(",") + 1
        sql = (f"SELECT {keys}, {columns} FROM ({' UNION ALL '.join(parts)}) AS r"
               f" GROUP BY {', '.join(str(i) for i in range(1, n_keys + 1))}")
        return list(self.conn.execute(sql, args).fetchall())

    def counts(self, keys: str, per_bucket: bool = False) -> list[Any]:
        return self._rows(0, keys, ", ".join(f"SUM({c})" for c in COUNTS), per_bucket)

    def latency(self, keys: str, per_bucket: bool = False) -> list[Any]:
        return self._rows(1, keys, "MIN(latency_min), MAX(latency_max), "
                          + ", ".join(f"SUM({c})" for c in HIST), per_bucket)

    @property
    def t(self) -> str:
        return f"(bucket / {int(self.step)}) * {int(self.step)}"


def _count_vecs(rows: list[Any], n_keys: int) -> dict[Any, Vec]:
    """Counter rows (keys..., decision, COUNTS) summed per keys, with calls per decision."""
    out: dict[Any, Vec] = {}
    for r in rows:
        key = tuple(r[:n_keys]) if n_keys != 1 else r[0]
        vec = out.get(key)
        if vec is None:
            vec = out[key] = [0.0] * (_DEC + len(DECISIONS))
        values = r[n_keys + 1:]
        for i, v in enumerate(values):
            vec[i] += v
        decision = r[n_keys]
        if decision in DECISIONS:
            vec[_DEC + DECISIONS.index(decision)] += values[_CALLS]
    return out


def _latency_vecs(rows: list[Any], n_keys: int) -> dict[Any, Vec]:
    out: dict[Any, Vec] = {}
    for r in rows:
        key = tuple(r[:n_keys]) if n_keys != 1 else r[0]
        values = list(r[n_keys:])
        have = out.get(key)
        if have is None:
            out[key] = values
        else:
            have[0], have[1] = min(have[0], values[0]), max(have[1], values[1])
            for i in range(2, len(values)):
                have[i] += values[i]
    return out


def _sum(vecs: Sequence[Vec], width: int) -> Vec:
    out = [0.0] * width
    for v in vecs:
        for i, x in enumerate(v):
            out[i] += x
    return out


def _merged(vecs: Sequence[Vec]) -> Vec:
    out = [math.inf, -math.inf, *(0.0,) * N_BINS]
    for v in vecs:
        out[0], out[1] = min(out[0], v[0]), max(out[1], v[1])
        for i in range(2, len(v)):
            out[i] += v[i]
    return out


def _percentiles(vecs: Sequence[Vec], qs: Sequence[float]) -> list[list[float | None]]:
    if not vecs:
        return []
    a = np.array(vecs, dtype=np.float64)
    got = rollups.percentiles(a[:, 2:], a[:, 0], a[:, 1], qs)
    return [[None if math.isnan(x) else round(float(x), 3) for x in row] for row in got]


def _decisions(c: Vec) -> dict[str, int]:
    return {d: int(c[_DEC + j]) for j, d in enumerate(DECISIONS)}


def _errors(c: Vec) -> int:
    return int(c[_DEC + DECISIONS.index("error")])


def _empty_counts() -> Vec:
    return [0.0] * (_DEC + len(DECISIONS))


def summary(c: Vec, pct: list[float | None]) -> dict[str, JSON]:
    calls = int(c[_CALLS])
    return {
        "calls": calls, "errors": _errors(c), "client_errors": int(c[_CLIENT]),
        "validation_failures": int(c[_VFAIL]), "cost_usd": c[_COST],
        "cost_unknown": int(c[_UNKNOWN]), "input_tokens": int(c[_TIN]),
        "output_tokens": int(c[_TOUT]), "decisions": _decisions(c),
        "latency_ms": {"p50": pct[0], "p95": pct[1], "p99": pct[2],
                       "mean": round(c[_LSUM] / calls, 3) if calls else None},
    }


def overview(store: Store, since: float, until: float, bucket: Bucket,
             feature: str | None = None) -> dict[str, JSON]:
    """Totals, a series per bucket and a row per feature (one feature: also its versions)."""
    step = BUCKETS[bucket]
    conn = store.connect()
    try:
        conn.execute("BEGIN")  # one snapshot: totals, series and rows agree
        q = _Reader(conn, since, until, step, feature)
        by_t = _count_vecs(q.counts(f"{q.t}, decision", per_bucket=True), 1)
        lat_t = _latency_vecs(q.latency(q.t, per_bucket=True), 1)
        by_fv = _count_vecs(q.counts("feature, version, decision"), 2)
        lat_fv = _latency_vecs(q.latency("feature, version"), 2)
    finally:
        conn.close()
    width = _DEC + len(DECISIONS)
    total = _sum(list(by_fv.values()), width)
    out: dict[str, JSON] = {
        "range": {"since": math.floor(since / 60) * 60, "until": math.ceil(until / 60) * 60,
                  "bucket": bucket},
        "totals": summary(total, _percentiles([_merged(list(lat_fv.values()))],
                                              (0.5, 0.95, 0.99))[0]),
        "series": _series(by_t, lat_t, since, until, step),
        "features": _rows(by_fv, lat_fv, 0, "name", _feature_row),
    }
    if feature is not None:
        out["versions"] = _rows(by_fv, lat_fv, 1, "version", _version_row)
    return out


def _series(counts: dict[Any, Vec], latency: dict[Any, Vec], since: float, until: float,
            step: int) -> list[JSON]:
    first = math.floor(since / step) * step
    ts = range(first, first + points(since, until, step) * step, step)
    have = [t for t in ts if t in latency]
    pct = dict(zip(have, _percentiles([latency[t] for t in have], (0.5, 0.95)), strict=True))
    series: list[JSON] = []
    for t in ts:
        c = counts.get(t) or _empty_counts()
        p50, p95 = pct.get(t, (None, None))
        series.append({"t": t, "calls": int(c[_CALLS]), "errors": _errors(c),
                       "cost_usd": c[_COST], "input_tokens": int(c[_TIN]),
                       "output_tokens": int(c[_TOUT]), "decisions": _decisions(c),
                       "p50": p50, "p95": p95})
    return series


def _feature_row(c: Vec, pct: list[float | None]) -> dict[str, JSON]:
    return {"calls": int(c[_CALLS]), "errors": _errors(c), "cost_usd": c[_COST],
            "decisions": _decisions(c), "p50": pct[0], "p95": pct[1]}


def _version_row(c: Vec, pct: list[float | None]) -> dict[str, JSON]:
    calls = c[_CALLS]
    priced = calls - c[_UNKNOWN]
    return {
        "calls": int(calls), "decisions": _decisions(c), "p50": pct[0], "p95": pct[1],
        "errors": _errors(c), "cost_usd": c[_COST],
        "error_rate": _errors(c) / calls if calls else None,
        "validation_failure_rate": c[_VFAIL] / calls if calls else None,
        "review_rate": c[_DEC + DECISIONS.index("review")] / calls if calls else None,
        "cost_per_call": c[_COST] / priced if priced else None,
    }


def _rows(counts: dict[Any, Vec], latency: dict[Any, Vec], part: int, name: str,
          make: Any) -> list[JSON]:
    """Rows per feature (part 0) or version (part 1) from (feature, version) vectors."""
    c_by: dict[str, list[Vec]] = {}
    l_by: dict[str, list[Vec]] = {}
    for key, vec in counts.items():
        c_by.setdefault(key[part], []).append(vec)
    for key, vec in latency.items():
        l_by.setdefault(key[part], []).append(vec)
    names = list(c_by)
    width = _DEC + len(DECISIONS)
    pct = _percentiles([_merged(l_by.get(n, [])) for n in names], (0.5, 0.95))
    out = [{name: n or None, **make(_sum(c_by[n], width), pct[i])} for i, n in enumerate(names)]
    out.sort(key=lambda r: -r["calls"])
    return out  # type: ignore[return-value]


def known_feature(store: Store, feature: str) -> bool:
    """Whether any call of ``feature`` was ever rolled up."""
    conn = store.connect()
    try:
        return conn.execute("SELECT 1 FROM rollup_day WHERE feature = ? LIMIT 1",
                            (feature,)).fetchone() is not None
    finally:
        conn.close()


def costs(store: Store, group: Group, since: float, until: float,
          feature: str | None = None, limit: int = 100) -> dict[str, JSON]:
    """Calls, tokens and cost per key, user, feature, version or UTC day, biggest cost
    first. Keys and users come from ``ledger_key`` / ``ledger_user`` (from ``ledger``
    when narrowed to a feature), the rest from the daily rollup: the same sums, fewer
    rows. Versions are per feature: their rows carry ``feature`` too."""
    ledger = group in ("key", "user")
    table = "rollup_day" if not ledger else f"ledger_{group}" if feature is None else "ledger"
    day = "day" if ledger else "bucket"
    column = {"key": ["key_id"], "user": ["user_id"], "feature": ["feature"],
              "version": ["feature", "version"], "day": ["bucket"]}[group]
    only = " AND feature = ?" if feature else ""
    where = f"{day} >= ? AND {day} < ?{only}"
    args: list[Any] = [day_start(since), until] + ([feature] if feature else [])
    sums = ("SUM(calls), SUM(input_tokens), SUM(output_tokens), SUM(cost_usd),"
            " SUM(cost_unknown)")
    keys = ", ".join(column)
    conn = store.connect()
    try:
        conn.execute("BEGIN")  # one snapshot for the rows and the totals
        rows = conn.execute(
            f"SELECT {keys}, {sums} FROM {table} WHERE {where} GROUP BY {keys}"
            f" ORDER BY SUM(cost_usd) DESC, SUM(calls) DESC LIMIT ?", [*args, limit]).fetchall()
        total = conn.execute(  # the daily rollup holds the same totals in far fewer rows
            f"SELECT {sums} FROM rollup_day WHERE bucket >= ? AND bucket < ?{only}", args
        ).fetchone()
    finally:
        conn.close()
    n = len(column)
    out = []
    for r in rows:
        value: Any = r[n - 1]
        if group == "day":
            value = _iso_day(int(value))
        row: dict[str, JSON] = {"value": value or None}
        if group == "version":
            row["feature"] = r[0]
        row.update(_cost_fields(r[n:]))
        out.append(row)
    return {"group": group, "range": {"since": day_start(since), "until": until},
            "totals": _cost_fields(total), "rows": out}


def _cost_fields(r: Sequence[Any]) -> dict[str, JSON]:
    return {"calls": int(r[0] or 0), "input_tokens": int(r[1] or 0),
            "output_tokens": int(r[2] or 0), "cost_usd": float(r[3] or 0.0),
            "cost_unknown": int(r[4] or 0)}


def _iso_day(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).date().isoformat()
