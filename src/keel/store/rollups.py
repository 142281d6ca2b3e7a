"""Rollups and the cost ledger: the sums the dashboard and budgets read instead of events.

Kept by the event writer in the transaction that inserts the events
(:meth:`keel.store.sqlite.SQLiteStore.write_events`), for the events actually inserted
only, so a redelivered event is never counted twice and rollups never disagree with
the events table. Migration ``006_rollups`` creates the tables; its data step
(:func:`backfill`) fills them from the events an upgraded database already holds.

Three resolutions, each a pair of tables: ``rollup_minute`` / ``latency_minute``,
``rollup_hour`` / ``latency_hour``, ``rollup_day`` / ``latency_day``. ``bucket`` is the
start of the UTC minute, hour or day (epoch seconds).

- ``rollup_*``: one row per (bucket, feature, version, decision): ``calls``,
  ``client_errors`` (decision ``error`` with a bad-input code: the caller's doing),
  ``validation_failures`` (any output validator failed), input and output tokens,
  ``cost_usd`` (the sum over calls of known cost), ``cost_unknown`` (calls without a
  price) and ``latency_sum``.
- ``latency_*``: one row per (bucket, feature, version): ``latency_min``,
  ``latency_max`` and a histogram of :data:`N_BINS` fixed log-spaced bins ``h00`` ..
  ``h71``: bin 0 is below 0.1 ms, bin *i* is ``[EDGES[i-1], EDGES[i])``, ten bins per
  decade up to 1,000 s, the last bin above. Bins add up across rows, so percentiles of
  any set of rows come from summed columns (:func:`percentiles`), in the bin of the
  true value: at most a factor 10^0.1 off (26 %). Kept apart from the counters, without the
  decision, because these rows are wide: six times fewer of them to write and to sum.

``ledger``: one row per (``day``, feature, version, ``key_id``, ``user_id``): calls,
input and output tokens, ``cost_usd``, ``cost_unknown``. ``ledger_user`` (``day``,
``user_id``) and ``ledger_key`` (``day``, ``key_id``) hold the same sums per user and per
key alone: spend and "top users / keys" read a few rows per day there instead of every
(feature, version, key, user) row.

"Version" everywhere here is the version the router chose first (``events.routed``;
``events.version`` for events older than routing), as canary judging counts it: a call
answered by a fallback counts against the version that was tried first. A missing
version, user or key is stored as ``''``.
"""

from __future__ import annotations

import logging
import math
import time
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from keel.errors import RequestError
from keel.store.db import Connection
from keel.types import Event

if TYPE_CHECKING:
    from keel.store.db import Store

log = logging.getLogger("keel.store")

N_BINS = 72
# upper edges of bins 0..70, in ms: 0.1 ms * 10^(i/10), so 0.1 ms .. 1,000,000 ms
EDGES: tuple[float, ...] = tuple(0.1 * 10 ** (i / 10) for i in range(N_BINS - 1))
HIST = tuple(f"h{i:02d}" for i in range(N_BINS))
# resolution: (counters table, latency table, seconds per bucket), finest first
LEVELS: tuple[tuple[str, str, int], ...] = (
    ("rollup_minute", "latency_minute", 60), ("rollup_hour", "latency_hour", 3600),
    ("rollup_day", "latency_day", 86400))
DAY = 86400
# the counters of a rollup row, after its key
COUNTS = ("calls", "client_errors", "validation_failures", "input_tokens", "output_tokens",
          "cost_usd", "cost_unknown", "latency_sum")
# the columns of a latency row, after its key
LATENCY = ("latency_min", "latency_max", *HIST)
LEDGER_SUMS = ("calls", "input_tokens", "output_tokens", "cost_usd", "cost_unknown")
# how the writer (orjson, compact) stores a failed ValidationResult
FAILED_VALIDATION = '%"passed":false%'


def _codes(cls: type[RequestError]) -> set[str]:
    return {cls.code}.union(*(_codes(sub) for sub in cls.__subclasses__()))


CLIENT_ERROR_CODES = frozenset(_codes(RequestError))

CountKey = tuple[int, str, str, str]  # bucket, feature, version, decision
LatencyKey = tuple[int, str, str]  # bucket, feature, version
LedgerKey = tuple[int, str, str, str, str]  # day, feature, version, key_id, user_id


def latency_bin(latency_ms: float) -> int:
    return bisect_right(EDGES, latency_ms)


class Rollup:
    """Sums of a set of events per minute (counters and latency) and per ledger row;
    :meth:`write` adds them to the tables (hour and day rows are minute rows summed)."""

    def __init__(self) -> None:
        self.counts: dict[CountKey, list[float]] = {}
        self.latency: dict[LatencyKey, list[float]] = {}
        self.ledger: dict[LedgerKey, list[float]] = {}

    def add_event(self, e: Event) -> None:
        decision = str(e.decision)
        failed = False
        for v in e.validations:
            if not v.passed:
                failed = True
                break
        self.add(e.ts, e.feature, e.routed or e.version or "", decision, e.latency_ms,
                 e.input_tokens, e.output_tokens, e.cost_usd, failed,
                 decision == "error" and e.error_code in CLIENT_ERROR_CODES,
                 e.user or "", e.key or "")

    def add(self, ts: float, feature: str, version: str, decision: str, latency_ms: float,
            input_tokens: int, output_tokens: int, cost_usd: float | None,
            validation_failed: bool, client_error: bool, user: str, key: str) -> None:
        minute = int(ts // 60) * 60
        ckey = (minute, feature, version, decision)
        c = self.counts.get(ckey)
        if c is None:
            c = self.counts[ckey] = [0, 0, 0, 0, 0, 0.0, 0, 0.0]
        c[0] += 1
        if client_error:
            c[1] += 1
        if validation_failed:
            c[2] += 1
        c[3] += input_tokens
        c[4] += output_tokens
        if cost_usd is None:
            c[6] += 1
        else:
            c[5] += cost_usd
        c[7] += latency_ms
        lkey = (minute, feature, version)
        h = self.latency.get(lkey)
        if h is None:
            h = self.latency[lkey] = [latency_ms, latency_ms, *(0,) * N_BINS]
        elif latency_ms < h[0]:
            h[0] = latency_ms
        elif latency_ms > h[1]:
            h[1] = latency_ms
        h[2 + bisect_right(EDGES, latency_ms)] += 1
        gkey = (minute - minute % DAY, feature, version, key, user)
        g = self.ledger.get(gkey)
        if g is None:
            self.ledger[gkey] = [1, input_tokens, output_tokens, cost_usd or 0.0,
                                 int(cost_usd is None)]
        else:
            g[0] += 1
            g[1] += input_tokens
            g[2] += output_tokens
            if cost_usd is None:
                g[4] += 1
            else:
                g[3] += cost_usd

    def levels(self) -> list[tuple[str, str, dict[CountKey, list[float]],
                                   dict[LatencyKey, list[float]]]]:
        """Every resolution's (counters table, latency table, counter rows, latency rows):
        the minute rows, summed into hours and days."""
        counts, latency = self.counts, self.latency
        out = [(LEVELS[0][0], LEVELS[0][1], counts, latency)]
        for table, ltable, step in LEVELS[1:]:
            counts, latency = _coarser(counts, step, _add), _coarser(latency, step, _merge_latency)
            out.append((table, ltable, counts, latency))
        return out

    def write(self, conn: Connection) -> None:
        """Add these sums to the tables (the caller holds the transaction)."""
        for table, ltable, counts, latency in self.levels():
            if counts:
                conn.executemany(_UPSERTS[table], [(*k, *v) for k, v in counts.items()])
                conn.executemany(_UPSERTS[ltable], [(*k, *v) for k, v in latency.items()])
        if self.ledger:
            conn.executemany(_UPSERT_LEDGER, [(*k, *v) for k, v in self.ledger.items()])
            for table, part in (("ledger_user", 4), ("ledger_key", 3)):
                rows: dict[tuple[Any, ...], list[float]] = {}
                for k, v in self.ledger.items():
                    key = (k[0], k[part])
                    have = rows.get(key)
                    if have is None:
                        rows[key] = list(v)
                    else:
                        _add(have, v)
                conn.executemany(_UPSERTS[table], [(*k, *v) for k, v in rows.items()])


def _coarser(rows: dict[Any, list[float]], step: int, merge: Any) -> dict[Any, list[float]]:
    out: dict[Any, list[float]] = {}
    for (bucket, *rest), row in rows.items():
        key = (bucket - bucket % step, *rest)
        have = out.get(key)
        if have is None:
            out[key] = list(row)
        else:
            merge(have, row)
    return out


def _add(into: list[float], row: Sequence[float]) -> None:
    for i, value in enumerate(row):
        into[i] += value


def _merge_latency(into: list[float], row: Sequence[float]) -> None:
    into[0] = min(into[0], row[0])
    into[1] = max(into[1], row[1])
    for i in range(2, len(row)):
        into[i] += row[i]


def _upsert(table: str, key: tuple[str, ...], columns: tuple[str, ...]) -> str:
    sets = []
    for c in columns:
        if c in ("latency_min", "latency_max"):
            op = "<" if c == "latency_min" else ">"
            sets.append(f"{c} = CASE WHEN excluded.{c} {op} {table}.{c} THEN excluded.{c} "
                        f"ELSE {table}.{c} END")
        else:
            sets.append(f"{c} = {table}.{c} + excluded.{c}")
    every = (*key, *columns)
    return (f"INSERT INTO {table} ({', '.join(every)}) VALUES ({', '.join('?' * len(every))})"
            f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET {', '.join(sets)}")


_UPSERTS = {
    **{t: _upsert(t, ("bucket", "feature", "version", "decision"), COUNTS) for t, _, _ in LEVELS},
    **{t: _upsert(t, ("bucket", "feature", "version"), LATENCY) for _, t, _ in LEVELS},
    "ledger_user": _upsert("ledger_user", ("day", "user_id"), LEDGER_SUMS),
    "ledger_key": _upsert("ledger_key", ("day", "key_id"), LEDGER_SUMS),
}
_UPSERT_LEDGER = _upsert("ledger", ("day", "feature", "version", "key_id", "user_id"), LEDGER_SUMS)


def add_events(conn: Connection, events: Iterable[Event]) -> None:
    """Add events just inserted to the rollups and the ledger, in the caller's transaction."""
    rollup = Rollup()
    for e in events:
        rollup.add_event(e)
    rollup.write(conn)


_BACKFILL_SELECT = (
    "SELECT ts, feature, COALESCE(routed, version, ''), decision, latency_ms, input_tokens,"
    " output_tokens, cost_usd, validations LIKE ?, error_code, COALESCE(user_id, ''),"
    " COALESCE(key_id, '') FROM events"
)


def backfill(conn: Connection, chunk: int = 200_000) -> int:
    """Add every event in the events table to the rollups and the ledger (the data step of
    ``006_rollups``, inside its transaction; also how bench/dashboard.py builds them).
    The same sums as the writer's. Returns the number of events read."""
    t0 = time.monotonic()
    cursor = conn.execute(_BACKFILL_SELECT, (FAILED_VALIDATION,))
    total = 0
    while rows := cursor.fetchmany(chunk):
        rollup = Rollup()
        add = rollup.add
        for (ts, feature, version, decision, latency, tin, tout, cost, failed, code, user,
             key) in rows:
            add(ts, feature, version, decision, latency, tin, tout, cost, bool(failed),
                decision == "error" and code in CLIENT_ERROR_CODES, user, key)
        rollup.write(conn)
        total += len(rows)
        if total >= 1_000_000:
            log.info("rollups: %d events added (%.0f s)", total, time.monotonic() - t0)
    return total


def bin_bounds() -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Lower and upper bound of every bin (bin 0 starts at 0, the last ends at inf)."""
    edges = np.asarray(EDGES)
    return np.concatenate([[0.0], edges]), np.concatenate([edges, [math.inf]])


_LO, _HI = bin_bounds()


def percentiles(hist: npt.NDArray[np.float64], lo: npt.NDArray[np.float64],
                hi: npt.NDArray[np.float64], qs: Sequence[float]) -> npt.NDArray[np.float64]:
    """Percentiles (nearest rank, then log-interpolated inside its bin) of each row of
    ``hist`` (rows x N_BINS counts), clamped to the rows' ``lo`` .. ``hi`` (the latency min
    and max). NaN for rows without calls. Exact to within the bin holding the rank."""
    hist = np.atleast_2d(hist)
    n = hist.sum(axis=1)
    cum = np.cumsum(hist, axis=1)
    out = np.full((hist.shape[0], len(qs)), np.nan)
    rows = np.nonzero(n > 0)[0]
    if rows.size == 0:
        return out
    for j, q in enumerate(qs):
        rank = np.maximum(np.ceil(q * n[rows]), 1.0)
        b = np.argmax(cum[rows] >= rank[:, None], axis=1)
        below = np.where(b > 0, cum[rows, np.maximum(b - 1, 0)], 0.0)
        inside = hist[rows, b]
        frac = (rank - below - 0.5) / inside
        bottom = np.where(b == 0, np.minimum(lo[rows], _HI[0]), _LO[b])
        top = np.where(b == N_BINS - 1, np.maximum(hi[rows], _LO[-1]), _HI[b])
        bottom = np.maximum(bottom, 1e-6)
        top = np.maximum(top, bottom)
        value = bottom * (top / bottom) ** frac
        out[rows, j] = np.clip(value, lo[rows], hi[rows])
    return out


Scope = Literal["key", "user", "feature", "version", "all"]


@dataclass(frozen=True, slots=True)
class Spend:
    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    calls: int = 0
    cost_unknown: int = 0  # calls without a price: their cost is not in cost_usd


def day_start(ts: float) -> float:
    """The start of the UTC day ``ts`` falls in."""
    return float(math.floor(ts / DAY) * DAY)


def spend(store: Store, *, scope: Scope, value: str | None, since: float,
          until: float | None = None, feature: str | None = None) -> Spend:
    """What one scope value spent: calls of the UTC days from the one holding ``since`` up
    to the last one starting before ``until`` (None: through today, included as far as
    written). Day-granular: a budget period starts at a UTC day or month boundary, so it
    is exact there. ``value`` None is "no user" / "no key" for those scopes; ignored for
    ``all``. ``feature`` narrows any scope (a version name is per feature).

    ``user`` reads ``ledger_user`` (its index by user), ``key`` ``ledger_key`` (a few rows
    per day), the other scopes the daily rollup; narrowed to a feature, users and keys
    read the whole ledger's rows of the period. All hold the same sums.
    """
    if scope not in ("key", "user", "feature", "version", "all"):
        raise ValueError(f"unknown scope {scope!r}")
    ledger = scope in ("key", "user")
    table = "rollup_day" if not ledger else f"ledger_{scope}" if feature is None else "ledger"
    day = "day" if ledger else "bucket"
    where = [f"{day} >= ?"]
    args: list[Any] = [day_start(since)]
    if until is not None:
        where.append(f"{day} < ?")
        args.append(until)
    if scope != "all":
        where.append(f"{scope}_id = ?" if ledger else f"{scope} = ?")
        args.append(value or "")
    if feature is not None and scope != "feature":
        where.append("feature = ?")
        args.append(feature)
    sql = ("SELECT COALESCE(SUM(cost_usd), 0), COALESCE(SUM(input_tokens), 0),"
           " COALESCE(SUM(output_tokens), 0), COALESCE(SUM(calls), 0),"
           f" COALESCE(SUM(cost_unknown), 0) FROM {table}"
           f" WHERE {' AND '.join(where)}")
    conn = store.connect()
    try:
        row = conn.execute(sql, args).fetchone()
    finally:
        conn.close()
    return Spend(float(row[0]), int(row[1]), int(row[2]), int(row[3]), int(row[4]))
