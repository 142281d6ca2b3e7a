"""One leader among processes that share a store: a lease in the ``leases`` table.

A lease is a row (name, holder, until). Taking it is one statement: insert the row, or
take it over when it has expired or is already ours — an upsert whose update applies
only ``WHERE leases.until < now OR leases.holder = me``. The database runs it atomically,
so of two processes contending exactly one gets it (SQLite and PostgreSQL both speak
``INSERT … ON CONFLICT … DO UPDATE … WHERE``). The holder renews before ``until``; a
holder that dies stops renewing and another takes over after at most ``ttl_s``.

Clocks: ``until`` is written from the holder's clock and read against the contender's,
so hosts should agree on the time to well within ``ttl_s``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from keel.store.db import Store


class Lease:
    def __init__(self, store: Store, name: str, holder: str, ttl_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self.store = store
        self.name = name
        self.holder = holder
        self.ttl_s = ttl_s
        self.clock = clock
        self._until = 0.0  # when our hold ends, as far as we know

    def acquire(self) -> bool:
        """Take the lease (or extend ours); True when we hold it now."""
        now = self.clock()
        until = now + self.ttl_s
        conn = self.store.connect()
        try:
            with conn:
                cursor = conn.execute(
                    "INSERT INTO leases (name, holder, until) VALUES (?, ?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"
                    " until = excluded.until"
                    " WHERE leases.until < ? OR leases.holder = excluded.holder",
                    (self.name, self.holder, until, now))
                won = cursor.rowcount == 1
        finally:
            conn.close()
        self._until = until if won else 0.0
        return bool(won)

    def renew(self) -> bool:
        """Extend our hold; False when another process has the lease now."""
        return self.acquire()

    def release(self) -> None:
        """Give the lease up (if we hold it), so another process need not wait."""
        conn = self.store.connect()
        try:
            with conn:
                conn.execute("DELETE FROM leases WHERE name = ? AND holder = ?",
                             (self.name, self.holder))
        finally:
            conn.close()
        self._until = 0.0

    @property
    def held(self) -> bool:
        """We hold it, by our last acquire or renew and our clock."""
        return self.clock() < self._until

    def current_holder(self) -> tuple[str, float] | None:
        """Who holds the lease and until when (it may have expired); None if nobody."""
        conn = self.store.connect()
        try:
            row = conn.execute("SELECT holder, until FROM leases WHERE name = ?",
                               (self.name,)).fetchone()
        finally:
            conn.close()
        return None if row is None else (str(row[0]), float(row[1]))
