"""The event writer's side of the store: one connection, commits, and whether the store
is up (:class:`StoreLink`, used by :class:`keel.stages.record.EventWriter` only).

A write that fails ``retries`` times in a row is looked at once more: if the store
still answers a trivial query, a record of the batch is the problem (the store refuses
it, or it cannot be serialized), so the batch is written one record at a time and the
records refused are set aside in ``rejected-<instance>.jsonl`` beside the spill files.
Otherwise the store is *down*: the writer keeps the batch and retries after ``retry_s``,
doubling up to :data:`MAX_RETRY_S`. Only the transitions are logged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from pathlib import Path

from keel.stages.scrub import Scrubber
from keel.stages.spill import encode, write_all
from keel.store.db import Connection, Store, StoreUnavailable
from keel.types import Event, ReviewRequest

Record = Event | ReviewRequest

log = logging.getLogger("keel.record")

MAX_RETRY_S = 5.0


def store_trouble(exc: Exception) -> bool:
    """The store's own failure (unreachable, locked, full, broken), as opposed to one a
    record may cause (a constraint, a value it cannot bind or serialize)."""
    if isinstance(exc, sqlite3.Error):
        return not isinstance(exc, sqlite3.IntegrityError | sqlite3.DataError
                              | sqlite3.ProgrammingError)
    return isinstance(exc, StoreUnavailable | OSError)


class StoreLink:
    def __init__(self, store: Store, spill_dir: Path, instance: str, retries: int = 3,
                 retry_s: float = 0.2) -> None:
        self.store = store
        self.rejected_path = spill_dir / f"rejected-{instance}.jsonl"
        self.retries = max(1, retries)
        self.retry_s = retry_s
        self.up = True
        self.error: str | None = None
        self.down_since: float | None = None
        self.retry_at = 0.0  # time.monotonic() of the next try while down
        self.written = 0
        self.rejected = 0
        self.busy_since: float | None = None  # time.monotonic() a write began, if running
        self._delay = retry_s
        self._conn: Connection | None = None
        self._scrub = Scrubber()  # a database error may quote a URL with its password

    def write(self, records: list[Record]) -> bool:
        """True when the store has the records (or refused some for good: rejected)."""
        if not records:
            return True
        failure: Exception | None = None
        for attempt in range(self.retries if self.up else 1):
            if attempt:
                time.sleep(0.05 * 2 ** (attempt - 1))
            started = time.monotonic()
            self.busy_since = started
            try:
                self._commit(records)
            except Exception as exc:
                failure = exc
                self._reset()
                if not store_trouble(exc):
                    break  # maybe a record the store cannot take: look closer below
                if time.monotonic() - started > 1.0:
                    break  # it waited already (a lock, a timeout): no quick retry
                continue
            finally:
                self.busy_since = None
            self._ok()
            self.written += len(records)
            return True
        assert failure is not None
        if not store_trouble(failure) and self._answers() is None:
            return self._one_by_one(records)
        self._down(failure)
        return False

    def _commit(self, records: list[Record]) -> None:
        if self._conn is None:
            self._conn = self.store.connect()
        reviews = [r for r in records if isinstance(r, ReviewRequest)]
        events = [r for r in records if isinstance(r, Event)]
        if reviews:  # before the events: a held caller's item must show up first
            self.store.write_reviews(self._conn, reviews)
        if events:
            self.store.write_events(self._conn, events)

    def check(self) -> bool:
        """Ask a store that is down whether it is back (with nothing to write)."""
        failure = self._answers()
        if failure is None:
            self._ok()
            return True
        self._down(failure)
        return False

    def _answers(self) -> Exception | None:
        """Does the store answer at all (tables there, connection good)? None if so."""
        try:
            if self._conn is None:
                self._conn = self.store.connect()
            for table in ("events", "review_items"):
                self._conn.execute(f"SELECT COUNT(*) FROM {table} WHERE 1 = 0").fetchall()
        except Exception as exc:
            self._reset()
            return exc
        return None

    def _one_by_one(self, records: list[Record]) -> bool:
        for record in records:
            try:
                self._commit([record])
            except Exception as exc:
                self._reset()
                if store_trouble(exc) or self._answers() is not None:
                    self._down(exc)
                    return False  # all again later: the ones written are ignored then
                self._reject(record, exc)
                continue
            self.written += 1
        self._ok()
        return True

    def _reject(self, record: Record, exc: Exception) -> None:
        self.rejected += 1
        log.error("the store refuses the record of trace %s (%s: %s); kept in %s",
                  record.trace_id, type(exc).__name__, exc, self.rejected_path)
        try:
            self.rejected_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.rejected_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                write_all(fd, encode(record))
            finally:
                os.close(fd)
        except (OSError, TypeError) as err:
            log.error("cannot keep the refused record %s: %s", record.trace_id, err)

    def _ok(self) -> None:
        if not self.up:
            since = self.down_since or time.time()
            log.warning("store back after %.1f s: writing what waited", time.time() - since)
        self.up, self.error, self.down_since, self._delay = True, None, None, self.retry_s

    def _down(self, exc: Exception) -> None:
        self.error = self._scrub.text(f"{type(exc).__name__}: {exc}")
        if self.up:
            log.error("store unavailable (%s): events wait in memory, then in spill files",
                      self.error)
            self.up, self.down_since, self._delay = False, time.time(), self.retry_s
        else:
            self._delay = min(self._delay * 2, MAX_RETRY_S)
        self.retry_at = time.monotonic() + self._delay

    def _reset(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # a broken connection may not even close
                conn.close()

    def close(self) -> None:
        self._reset()
