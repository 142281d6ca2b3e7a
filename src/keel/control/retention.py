"""Retention: what the store forgets, and when (keel.yaml ``retention:``, docs/privacy.md).

:class:`Pruner` deletes, oldest first and ``batch_size`` rows per statement (each its own
short transaction, so the event writer and readers go on in between):

==================  ===========================================================
``events``          events older than ``events_days``
``payloads``        the input and output of events older than ``payloads_days``
                    (set to JSON ``null``, what an event without payloads holds)
``closed_reviews``  review items closed (``done``) more than ``closed_reviews_days``
                    ago, with their verdicts and claims
``minute_rollups``  ``rollup_minute`` and ``latency_minute`` rows older than
                    ``minute_rollups_days``; ``hour_rollups`` the same for hours
==================  ===========================================================

The day rollups and the cost ledger are never pruned. Payloads are cleared by time range
from a mark kept in ``retention_marks`` (no scan over events already cleared).

The leader prunes from its control-plane loop (:meth:`Pruner.tick`, at most ~0.5 s of
work per tick, every ``interval_s``; the time of the last full pass is kept in the store,
so restarts do not prune again at once); ``keel prune`` runs a whole pass at once.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from keel.spec_privacy import RetentionSpec
from keel.store.db import Connection, Store

log = logging.getLogger("keel.control")

DAY = 86400.0
TARGETS = ("events", "payloads", "closed_reviews", "minute_rollups", "hour_rollups")
_ROLLUPS = {"minute_rollups": ("rollup_minute", "latency_minute"),
            "hour_rollups": ("rollup_hour", "latency_hour")}
_HAS_PAYLOAD = "(COALESCE(input, 'null') <> 'null' OR COALESCE(output, 'null') <> 'null')"
TICK_BUDGET_S = 0.5


@dataclass
class PruneReport:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TARGETS, 0))
    done: bool = True  # False: stopped at its time budget, more to do

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class Pruner:
    def __init__(self, store: Store, spec: RetentionSpec,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.spec = spec
        self.clock = clock
        self._due: float | None = None
        self._unfinished = False
        self._failing = False
        self._retry_at = 0.0  # after a failure: not before

    def cutoffs(self, now: float) -> dict[str, float | None]:
        s = self.spec
        days = {"events": s.events_days, "payloads": s.payloads_days,
                "closed_reviews": s.closed_reviews_days,
                "minute_rollups": s.minute_rollups_days, "hour_rollups": s.hour_rollups_days}
        return {k: None if d is None else now - d * DAY for k, d in days.items()}

    # --- the leader's loop ------------------------------------------------------------

    def tick(self) -> PruneReport | None:
        """Prune a little when a pass is due or under way (blocking: run it in a thread).
        Never raises: a failure is logged and the pass tried again a minute later (the
        control loop's other work must go on)."""
        try:
            return self._tick()
        except Exception as exc:
            if not self._failing:
                log.warning("retention: pruning failed (%s: %s); trying again in a minute",
                            type(exc).__name__, exc)
            self._failing, self._unfinished = True, False
            self._retry_at = self.clock() + min(60.0, self.spec.interval_s)
            return None

    def _tick(self) -> PruneReport | None:
        now = self.clock()
        if now < self._retry_at:
            return None
        if self._due is None:
            last = self._mark("last_prune")
            if last is None:  # a new store: nothing old yet, start counting from now
                self._set_mark("last_prune", now)
                last = now
            self._due = last + self.spec.interval_s
        if now < self._due and not self._unfinished:
            return None
        report = self.run(budget_s=TICK_BUDGET_S, now=now)
        self._failing = False
        self._unfinished = not report.done
        if report.done:
            self._set_mark("last_prune", now)
            self._due = now + self.spec.interval_s
        if report.total:
            log.info("retention: pruned %s", ", ".join(
                f"{n} {what}" for what, n in report.counts.items() if n))
        return report

    # --- a pass -------------------------------------------------------------------------

    def run(self, budget_s: float | None = None, now: float | None = None) -> PruneReport:
        """Prune everything past its retention (or until ``budget_s`` seconds are spent)."""
        now = self.clock() if now is None else now
        start = time.monotonic()
        report = PruneReport()
        cut = self.cutoffs(now)
        steps: list[tuple[str, Callable[[], tuple[bool, int]]]] = []
        if (c := cut["events"]) is not None:
            steps.append(("events", partial(self._events, c)))
        if (c := cut["payloads"]) is not None:
            steps.append(("payloads", partial(self._payloads, c)))
        if (c := cut["closed_reviews"]) is not None:
            steps.append(("closed_reviews", partial(self._reviews, c)))
        for what, tables in _ROLLUPS.items():
            if (c := cut[what]) is not None:
                steps += [(what, partial(self._rollups, t, int(c))) for t in tables]
        for what, step in steps:
            while True:
                more, n = step()
                report.counts[what] += n
                if not more:
                    break
                if budget_s is not None and time.monotonic() - start > budget_s:
                    report.done = False
                    return report
        return report

    def count(self, now: float | None = None) -> dict[str, int]:
        """What :meth:`run` would prune now (``keel prune --dry-run``)."""
        cut = self.cutoffs(self.clock() if now is None else now)
        out = dict.fromkeys(TARGETS, 0)
        with self.store.connection() as conn:
            if (c := cut["events"]) is not None:
                out["events"] = _one(conn, "SELECT COUNT(*) FROM events WHERE ts < ?", c)
            if (c := cut["payloads"]) is not None:
                low = max(self._mark("payloads_upto") or 0.0, cut["events"] or 0.0)
                out["payloads"] = _one(conn, "SELECT COUNT(*) FROM events WHERE ts >= ?"
                                       f" AND ts < ? AND {_HAS_PAYLOAD}", low, c)
            if (c := cut["closed_reviews"]) is not None:
                out["closed_reviews"] = _one(conn, "SELECT COUNT(*) FROM review_items WHERE"
                                             " status = 'done' AND ts < ? AND decided_at < ?", c, c)
            for what, tables in _ROLLUPS.items():
                if (c := cut[what]) is not None:
                    out[what] = sum(_one(conn, f"SELECT COUNT(*) FROM {t} WHERE bucket < ?",
                                         int(c)) for t in tables)
        return out

    # --- one batch each: (more to do, rows affected) ------------------------------------

    def _events(self, cutoff: float) -> tuple[bool, int]:
        with self.store.connection() as conn, conn:
            n = conn.execute(
                "DELETE FROM events WHERE trace_id IN (SELECT trace_id FROM events"
                " WHERE ts < ? ORDER BY ts LIMIT ?)", (cutoff, self.spec.batch_size)).rowcount
        return n >= self.spec.batch_size, n

    def _payloads(self, cutoff: float) -> tuple[bool, int]:
        low = self._mark("payloads_upto") or 0.0
        batch = self.spec.batch_size
        with self.store.connection() as conn, conn:
            self.store.lock(conn, "retention")
            rows = conn.execute("SELECT ts FROM events WHERE ts >= ? AND ts < ? ORDER BY ts"
                                " LIMIT ?", (low, cutoff, batch)).fetchall()
            if len(rows) < batch:
                high = cutoff  # the rest of the range fits in this batch
            else:
                high = float(rows[-1][0])  # [low, high): rows at `high` go next time
                if high <= low:  # a whole batch at one instant
                    high = math.nextafter(low, math.inf)
            n = conn.execute(f"UPDATE events SET input = 'null', output = 'null' WHERE ts >= ?"
                             f" AND ts < ? AND {_HAS_PAYLOAD}", (low, high)).rowcount
            _upsert_mark(conn, "payloads_upto", high)
        return high < cutoff, n

    def _reviews(self, cutoff: float) -> tuple[bool, int]:
        with self.store.connection() as conn, conn:
            self.store.lock(conn, "retention")
            ids = [r[0] for r in conn.execute(
                "SELECT trace_id FROM review_items WHERE status = 'done' AND ts < ?"
                " AND decided_at < ? ORDER BY ts LIMIT ?",
                (cutoff, cutoff, self.spec.batch_size)).fetchall()]
            if ids:
                marks = ",".join("?" * len(ids))
                for table in ("review_verdicts", "review_claims", "review_items"):
                    conn.execute(f"DELETE FROM {table} WHERE trace_id IN ({marks})", ids)
        return len(ids) >= self.spec.batch_size, len(ids)

    def _rollups(self, table: str, cutoff: int) -> tuple[bool, int]:
        with self.store.connection() as conn, conn:
            row = conn.execute(f"SELECT bucket FROM {table} WHERE bucket < ? ORDER BY bucket"
                               " LIMIT 1 OFFSET ?", (cutoff, self.spec.batch_size - 1)).fetchone()
            if row is None:  # the rest fits in one batch
                n = conn.execute(f"DELETE FROM {table} WHERE bucket < ?", (cutoff,)).rowcount
                return False, n
            n = conn.execute(f"DELETE FROM {table} WHERE bucket <= ?", (row[0],)).rowcount
        return True, n

    # --- marks ------------------------------------------------------------------------

    def _mark(self, name: str) -> float | None:
        with self.store.connection() as conn:
            row = conn.execute("SELECT value FROM retention_marks WHERE name = ?",
                               (name,)).fetchone()
        return None if row is None else float(row[0])

    def _set_mark(self, name: str, value: float) -> None:
        with self.store.connection() as conn, conn:
            _upsert_mark(conn, name, value)


def _upsert_mark(conn: Connection, name: str, value: float) -> None:
    conn.execute("INSERT INTO retention_marks (name, value) VALUES (?, ?) ON CONFLICT (name)"
                 " DO UPDATE SET value = excluded.value", (name, value))


def _one(conn: Connection, sql: str, *args: object) -> int:
    return int(conn.execute(sql, args).fetchone()[0])
