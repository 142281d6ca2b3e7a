"""What every store offers, whichever engine is under it.

Keel's SQL is written once, in the subset SQLite and PostgreSQL share, against a
DB-API connection shaped like :mod:`sqlite3`'s: ``?`` placeholders, ``execute`` /
``executemany`` returning a cursor, rows readable by position and by column name, and
``with conn:`` wrapping a transaction. :class:`keel.store.sqlite.SQLiteStore` hands out
sqlite3 connections; :class:`keel.store.postgres.PostgresStore` hands out psycopg ones
wrapped to the same shape (placeholders translated, ``INSERT OR IGNORE`` never used).

Rules for SQL in Keel (both engines run the same statements):

* ``INSERT ... ON CONFLICT DO NOTHING`` / ``ON CONFLICT (cols) DO UPDATE SET c =
  excluded.c``, never ``INSERT OR IGNORE`` / ``OR REPLACE``;
* ``INSERT ... RETURNING id`` for generated ids, never ``cursor.lastrowid``;
* ``with store.transaction(name) as conn:`` for a transaction that must not
  interleave with another writer doing the same (a read, then a write that depends on
  it): SQLite takes its one write lock (``BEGIN IMMEDIATE``), PostgreSQL a
  transaction-scoped advisory lock named ``name``. Inside a transaction opened
  otherwise (``with conn:``), ``store.lock(conn, name)`` does the same; never
  ``BEGIN IMMEDIATE`` by hand;
* no engine-only functions (``json_extract``, ``group_concat``, ``instr``...) outside
  a module that has a path for each engine (``store.dialect`` tells which);
* booleans are stored as 0/1 integers; times are epoch seconds in DOUBLE PRECISION.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, Literal, Protocol, Self

from keel.types import Event, ReviewRequest

Dialect = Literal["sqlite", "postgresql"]


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Any: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None, /) -> Any: ...


class Store(Protocol):
    """The durable store: events, reviews, the control plane."""

    dialect: Dialect

    def connect(self) -> Connection: ...

    def connection(self) -> AbstractContextManager[Connection]: ...

    def lock(self, conn: Connection, name: str) -> None: ...

    def transaction(self, name: str) -> AbstractContextManager[Connection]: ...

    def migrate(self) -> list[str]: ...

    def write_events(self, conn: Any, events: Sequence[Event]) -> None: ...

    def write_reviews(self, conn: Any, items: Sequence[ReviewRequest]) -> None: ...

    def recent_events(self, limit: int = 20, feature: str | None = None) -> list[dict[str, Any]]: ...

    def count_events(self, feature: str | None = None) -> int: ...

    def pending_reviews(self, feature: str | None = None) -> int: ...

    def describe(self) -> str: ...

    def close(self) -> None: ...


class StoreError(Exception):
    """A database error from an engine other than SQLite (PostgreSQL's are re-raised as
    this, with the original chained); catch :data:`DB_ERRORS` for either."""


class StoreUnavailable(StoreError):
    """The database cannot be reached (connection refused, server gone)."""


DB_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, StoreError)
