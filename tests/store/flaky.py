"""A store a test can take down: a fault injected into the store object. While ``down``,
connecting and writing raise the error SQLite raises for a file it cannot open."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from keel.store.db import Connection, Store
from keel.types import Event, ReviewRequest


class FlakyStore:
    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.down = False
        self.refuse: set[str] = set()  # trace ids whose events the store refuses for good
        self.failed_writes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _check(self) -> None:
        if self.down:
            self.failed_writes += 1
            raise sqlite3.OperationalError("unable to open database file")

    def connect(self) -> Connection:
        self._check()
        return self.inner.connect()

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        self._check()
        with self.inner.connection() as conn:
            yield conn

    def write_events(self, conn: Connection, events: Sequence[Event]) -> None:
        self._check()
        if any(e.trace_id in self.refuse for e in events):
            raise sqlite3.IntegrityError("NOT NULL constraint failed: events.feature")
        self.inner.write_events(conn, events)

    def write_reviews(self, conn: Connection, items: Sequence[ReviewRequest]) -> None:
        self._check()
        self.inner.write_reviews(conn, items)
