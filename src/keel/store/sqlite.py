"""The embedded store: one SQLite file in WAL mode.

Writes come only from the event writer's thread (one connection, batched
transactions); reads open their own short-lived connections, which WAL lets run
beside the writer.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from keel.store import rollups
from keel.store.base import BaseStore
from keel.store.base import dumps as _dumps
from keel.store.db import Connection, Dialect
from keel.store.migrations import DATA_STEPS, MIGRATIONS
from keel.types import Event

EVENT_COLUMNS = (
    "trace_id", "ts", "feature", "version", "decision", "confidence", "latency_ms",
    "input_tokens", "output_tokens", "cost_usd", "user_id", "key_id", "error_code", "timings",
    "attempts", "validations", "input", "output", "checks", "routed", "reason", "cache",
    "saved_usd", "policy",
)
_INSERT_EVENT = (f"INSERT INTO events ({', '.join(EVENT_COLUMNS)})"
                 f" VALUES ({','.join('?' * len(EVENT_COLUMNS))}) ON CONFLICT DO NOTHING")


def _event_row(e: Event) -> tuple[Any, ...]:
    return (
        e.trace_id, e.ts, e.feature, e.version, str(e.decision), e.confidence,
        e.latency_ms, e.input_tokens, e.output_tokens, e.cost_usd, e.user, e.key,
        e.error_code, _dumps(e.timings_ms), _dumps(e.attempts),  # orjson: dataclasses natively
        _dumps(e.validations), _dumps(e.input), _dumps(e.output), _dumps(e.checks),
        e.routed, e.reason, e.cache, e.saved_usd, e.policy,
    )


class _Redelivered(Exception):
    """A batch held events stored before (at-least-once delivery)."""


class SQLiteStore(BaseStore):
    dialect: Dialect = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def describe(self) -> str:
        return f"SQLite {self.path}"

    def close(self) -> None:
        """Nothing to do: every connection is the caller's, closed by the caller."""

    @staticmethod
    def lock(conn: Connection, name: str) -> None:
        """Hold the database's write lock for the rest of the transaction (inside ``with
        conn:``). SQLite has one lock, whatever ``name`` says; a transaction that has
        written already holds it."""
        if not getattr(conn, "in_transaction", False):
            conn.execute("BEGIN IMMEDIATE")

    @contextmanager
    def transaction(self, name: str) -> Iterator[Connection]:
        """A transaction holding the write lock from its first statement: committed on
        exit, rolled back on an exception."""
        conn = self.connect()
        conn.isolation_level = None  # we issue BEGIN / COMMIT ourselves
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    def connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.row_factory = sqlite3.Row
        return conn

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """A short-lived connection, closed on exit (``with store.connection() as conn,
        conn:`` also wraps a transaction)."""
        conn = self.connect()
        try:
            yield conn
        finally:
            conn.close()

    def migrate(self) -> list[str]:
        """Apply the migrations not applied yet; returns their names."""
        applied: list[str] = []
        with self.connection() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS keel_migrations (name TEXT PRIMARY KEY, applied_at REAL)"
            )
            done = {row[0] for row in conn.execute("SELECT name FROM keel_migrations")}
            for name, sql in MIGRATIONS:
                if name in done:
                    continue
                with conn:
                    # the SQL, its data step and the record: all or nothing (DDL is
                    # transactional in SQLite and PostgreSQL)
                    conn.execute("BEGIN IMMEDIATE")
                    for statement in filter(str.strip, sql.split(";")):
                        conn.execute(statement)
                    if name in DATA_STEPS:
                        DATA_STEPS[name](conn)
                    conn.execute(
                        "INSERT INTO keel_migrations VALUES (?, ?)", (name, time.time())
                    )
                applied.append(name)
        return applied

    @staticmethod
    def write_events(conn: sqlite3.Connection, events: Sequence[Event]) -> None:
        """One transaction per batch. Idempotent on trace_id (at-least-once safe): the
        events actually inserted, and only those, are added to the rollups and the ledger
        in the same transaction (:mod:`keel.store.rollups`)."""
        firsts: dict[str, Event] = {}  # a trace id twice in one batch: the first one wins
        for e in events:
            firsts.setdefault(e.trace_id, e)
        fresh = list(firsts.values())
        try:
            with conn:
                inserted = conn.executemany(_INSERT_EVENT, map(_event_row, fresh)).rowcount
                if inserted != len(fresh):
                    raise _Redelivered  # some were stored before: undo, then sort them out
                rollups.add_events(conn, fresh)
            return
        except _Redelivered:
            pass
        with conn:
            conn.execute("BEGIN IMMEDIATE")  # no other writer between the look and the insert
            stored: set[str] = set()
            for i in range(0, len(fresh), 500):
                ids = [e.trace_id for e in fresh[i:i + 500]]
                stored.update(r[0] for r in conn.execute(
                    f"SELECT trace_id FROM events WHERE trace_id IN ({','.join('?' * len(ids))})",
                    ids))
            fresh = [e for e in fresh if e.trace_id not in stored]
            conn.executemany(_INSERT_EVENT, map(_event_row, fresh))
            rollups.add_events(conn, fresh)
