"""What the SQLite and PostgreSQL stores share: statements both engines run alike."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import orjson

from keel.store.db import Connection
from keel.types import ReviewRequest


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()  # orjson: dataclasses natively


class BaseStore:
    def connection(self) -> AbstractContextManager[Connection]:
        raise NotImplementedError

    @staticmethod
    def write_reviews(conn: Connection, items: Sequence[ReviewRequest]) -> None:
        rows = [
            (r.trace_id, r.ts, r.feature, r.version, r.mode, r.confidence, r.reason,
             dumps(r.input), dumps(r.output), dumps(r.validations), r.overlap, int(r.audit))
            for r in items
        ]
        with conn:
            conn.executemany(
                "INSERT INTO review_items (trace_id, ts, feature, version, mode,"
                " confidence, reason, input, output, validations, overlap, audit)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING", rows)

    def recent_events(self, limit: int = 20, feature: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM events"
        args: list[Any] = []
        if feature:
            sql += " WHERE feature = ?"
            args.append(feature)
        sql += " ORDER BY ts DESC LIMIT ?"
        args.append(limit)
        with self.connection() as conn:
            rows = conn.execute(sql, args).fetchall()
        out = []
        for row in rows:
            item = dict(row)
            for key in ("timings", "attempts", "validations", "input", "output", "checks"):
                if item[key] is not None:
                    item[key] = orjson.loads(item[key])
            out.append(item)
        return out

    def count_events(self, feature: str | None = None) -> int:
        with self.connection() as conn:
            if feature:
                row = conn.execute("SELECT COUNT(*) FROM events WHERE feature = ?", (feature,)).fetchone()
            else:
                row = conn.execute("SELECT COUNT(*) FROM events").fetchone()
        return int(row[0])

    def pending_reviews(self, feature: str | None = None) -> int:
        with self.connection() as conn:
            sql = "SELECT COUNT(*) FROM review_items WHERE status = 'pending'"
            row = conn.execute(sql + (" AND feature = ?" if feature else ""),
                               (feature,) if feature else ()).fetchone()
        return int(row[0])

