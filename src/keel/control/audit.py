"""The audit trail: every control-plane change, with who made it and when, in one
hash-chained table (``audit_log``).

Each row has ``seq`` (1, 2, 3... no gaps), ``prev_hash`` (the previous row's ``hash``;
64 zeros for the first) and ``hash = sha256(prev_hash + canonical(row))``, where
``canonical`` is the sorted-key JSON of seq, ts, actor, action, target and details. A row
edited, deleted or slipped in between breaks the chain at that row, and
:func:`verify` names it. (Whoever can write the database can also rebuild the whole
chain: compare the head hash ``keel audit verify`` prints with one kept elsewhere to
catch that, or rows cut off the end.)

A change appends its row in its own transaction, with one call::

    with store.connection() as conn, conn:
        store.lock(conn, "audit")        # first: two writers never fork the chain
        ...                              # the change itself
        audit.append(conn, actor, "alias.move", "intent/champion", {...})

The ``seq`` primary key is the backstop: a second row for the same place in the chain
cannot be stored, whatever the locking.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from keel.store.db import Connection, Store
from keel.types import JSON

GENESIS = "0" * 64
_COLUMNS = "seq, ts, actor, action, target, details, prev_hash, hash"


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    ts: float
    actor: str
    action: str
    target: str
    details: dict[str, JSON]
    prev_hash: str
    hash: str

    def to_json(self) -> dict[str, JSON]:
        return {"seq": self.seq, "ts": self.ts, "actor": self.actor, "action": self.action,
                "target": self.target, "details": self.details, "prev_hash": self.prev_hash,
                "hash": self.hash}


@dataclass(frozen=True, slots=True)
class Verification:
    ok: bool
    rows: int  # rows checked
    head: str  # the last good hash (GENESIS for an empty log)
    bad_seq: int | None = None  # the first row that does not fit
    problem: str | None = None

    def to_json(self) -> dict[str, JSON]:
        return {"ok": self.ok, "rows": self.rows, "head": self.head, "bad_seq": self.bad_seq,
                "problem": self.problem}


def _details_text(details: Mapping[str, Any]) -> str:
    return orjson.dumps(details, option=orjson.OPT_SORT_KEYS, default=str).decode()


def entry_hash(prev_hash: str, seq: int, ts: float, actor: str, action: str, target: str,
               details_text: str) -> str:
    """sha256 over the previous hash and the row's canonical serialization."""
    body = orjson.dumps({"seq": seq, "ts": ts, "actor": actor, "action": action,
                         "target": target, "details": orjson.Fragment(details_text)},
                        option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(prev_hash.encode() + body).hexdigest()


def append(conn: Connection, actor: str, action: str, target: str,
           details: Mapping[str, Any]) -> Entry:
    """Add one row at the end of the chain, inside the caller's transaction (which took
    ``store.lock(conn, "audit")`` first)."""
    last = conn.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev = (int(last[0]) + 1, str(last[1])) if last is not None else (1, GENESIS)
    ts = time.time()
    text = _details_text(details)
    digest = entry_hash(prev, seq, ts, actor, action, target, text)
    conn.execute(f"INSERT INTO audit_log ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)",
                 (seq, ts, actor, action, target, text, prev, digest))
    return Entry(seq, ts, actor, action, target, orjson.loads(text), prev, digest)


def _entry(row: Any) -> Entry:
    return Entry(int(row[0]), float(row[1]), row[2], row[3], row[4], orjson.loads(row[5]),
                 row[6], row[7])


def entries(store: Store, *, limit: int = 50, before: int | None = None,
            target: str | None = None) -> list[Entry]:
    """The newest rows first; ``before``: only rows with a smaller seq (paging);
    ``target``: one feature's rows (``intent``), one key's (``key:<id>``), all keys'
    (``key:``)."""
    sql, args = f"SELECT {_COLUMNS} FROM audit_log WHERE 1 = 1", list[object]()
    if before is not None:
        sql += " AND seq < ?"
        args.append(before)
    if target:  # the target, or below it ("intent": "intent/champion"); "key:": every key
        prefix = target if target.endswith(("/", ":")) else target + "/"
        sql += " AND (target = ? OR substr(target, 1, ?) = ?)"
        args += [target, len(prefix), prefix]
    sql += " ORDER BY seq DESC LIMIT ?"
    args.append(limit)
    with store.connection() as conn:
        return [_entry(r) for r in conn.execute(sql, args).fetchall()]


def _rows(store: Store, batch: int = 1000) -> Iterator[Any]:
    after = 0
    with store.connection() as conn:
        while True:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM audit_log WHERE seq > ?"
                                " ORDER BY seq LIMIT ?", (after, batch)).fetchall()
            yield from rows
            if len(rows) < batch:
                return
            after = int(rows[-1][0])


def verify(store: Store) -> Verification:
    """Walk the chain from the first row; the first row that does not fit, and why."""
    prev, expected, checked = GENESIS, 1, 0
    for row in _rows(store):
        seq, ts, actor, action, target, text, prev_hash, digest = row
        seq = int(seq)
        if seq != expected:
            why = (f"row {seq} follows row {expected - 1}: rows {expected}..{seq - 1} were "
                   "deleted" if seq > expected else f"row {seq} is out of order")
            if expected == 1:
                why = f"the log starts at row {seq}: rows 1..{seq - 1} were deleted"
            return Verification(False, checked, prev, seq, why)
        if prev_hash != prev:
            return Verification(False, checked, prev, seq,
                                f"row {seq} does not follow the row before it (prev_hash "
                                f"{str(prev_hash)[:12]}…, expected {prev[:12]}…): a row before "
                                "it was changed, deleted or inserted")
        if entry_hash(prev_hash, seq, float(ts), actor, action, target, text) != digest:
            return Verification(False, checked, prev, seq,
                                f"row {seq} ({action} {target}) was changed after it was "
                                "written: its hash does not match its content")
        prev, expected, checked = digest, expected + 1, checked + 1
    return Verification(True, checked, prev)
