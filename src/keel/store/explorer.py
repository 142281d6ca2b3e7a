"""The events explorer: recent events by filter, newest first, and one event in full.

The only dashboard read that touches the events table. Pages are keyset-paginated on
``(ts DESC, trace_id DESC)``: a cursor is the last row's (ts, trace_id), and the next page
is the rows strictly after it in that order, so pages never skip or repeat a row, even
among events with equal timestamps or while new events arrive. Each filter has an index
that walks it newest first: ``events_feature_ts``, ``events_user_ts``, ``events_key_ts``,
``events_ts``, and ``events_decision_ts`` for every decision but ``accepted`` (a partial
index: accepted calls are most calls, found quickly on ``events_ts``, and indexing them
would cost the writer more); a trace id prefix reads the primary key.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import orjson

from keel.store.db import Store
from keel.types import JSON

SUMMARY = ("trace_id", "ts", "feature", "version", "routed", "decision", "confidence",
           "latency_ms", "input_tokens", "output_tokens", "cost_usd", "user_id", "key_id",
           "error_code")
_JSON_COLUMNS = ("timings", "attempts", "validations", "input", "output", "checks")
_RENAME = {"user_id": "user", "key_id": "key"}


@dataclass(frozen=True, slots=True)
class EventFilter:
    feature: str | None = None
    version: str | None = None  # the version routed to (as the rollups count it)
    decision: str | None = None
    user: str | None = None
    key: str | None = None
    since: float | None = None
    until: float | None = None
    trace: str | None = None  # a prefix of the trace id


def encode_cursor(ts: float, trace_id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([ts, trace_id])).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """The (ts, trace_id) in a cursor; ValueError if it is not one of ours."""
    try:
        ts, trace_id = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, orjson.JSONDecodeError, ValueError, TypeError):
        raise ValueError("not a cursor from this API") from None
    if not isinstance(ts, int | float) or isinstance(ts, bool) or not isinstance(trace_id, str):
        raise ValueError("not a cursor from this API")
    return float(ts), trace_id


def _where(f: EventFilter) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    for column, value in (("feature", f.feature), ("decision", f.decision),
                          ("user_id", f.user), ("key_id", f.key)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if f.decision is not None and f.decision != "accepted":
        where.append("decision <> 'accepted'")  # lets the partial index events_decision_ts in
    if f.version is not None:
        where.append("(routed = ? OR (routed IS NULL AND version = ?))")
        args += [f.version, f.version]
    if f.since is not None:
        where.append("ts >= ?")
        args.append(f.since)
    if f.until is not None:
        where.append("ts < ?")
        args.append(f.until)
    if f.trace:
        where.append("trace_id >= ? AND trace_id < ?")
        args += [f.trace, f.trace + "\U0010ffff"]
    return where, args


def list_events(store: Store, f: EventFilter, limit: int = 50,
                cursor: tuple[float, str] | None = None
                ) -> tuple[list[dict[str, JSON]], tuple[float, str] | None]:
    """One page of event summaries, newest first, and the cursor of the next (None at
    the end)."""
    where, args = _where(f)
    if cursor is not None:
        where.append("ts <= ? AND (ts < ? OR trace_id < ?)")
        args += [cursor[0], cursor[0], cursor[1]]
    sql = (f"SELECT {', '.join(SUMMARY)} FROM events"
           + (f" WHERE {' AND '.join(where)}" if where else "")
           + " ORDER BY ts DESC, trace_id DESC LIMIT ?")
    conn = store.connect()
    try:
        rows = conn.execute(sql, [*args, limit + 1]).fetchall()
    finally:
        conn.close()
    page: list[dict[str, JSON]] = [{_RENAME.get(k, k): row[k] for k in SUMMARY}
                                   for row in rows[:limit]]
    if len(rows) <= limit or limit == 0:
        return page, None
    last = rows[limit - 1]
    return page, (float(last["ts"]), str(last["trace_id"]))


def get_event(store: Store, trace_id: str) -> dict[str, JSON] | None:
    """One event with everything recorded: timings, attempts, validations, input, output,
    checks."""
    conn = store.connect()
    try:
        row = conn.execute("SELECT * FROM events WHERE trace_id = ?", (trace_id,)).fetchone()
    finally:
        conn.close()
    if row is None:
        return None
    item: dict[str, JSON] = {}
    for k, value in dict(row).items():
        if k in _JSON_COLUMNS and value is not None:
            value = orjson.loads(value)
        item[_RENAME.get(str(k), str(k))] = value
    return item
