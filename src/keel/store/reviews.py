"""The review queue in the store: items, claims, verdicts, and closing an item.

Synchronous: callers run these in a thread (:mod:`keel.control.reviews`). Items are
written by the event writer (``SQLiteStore.write_reviews``); everything that changes
an item afterwards runs here in a ``store.transaction("reviews")``, which takes
the lock before the first read, so a claim or a verdict always sees the
state it changes (two reviewers never get the same single-overlap item, a verdict
never lands on an item another one just closed).

Claims: ``review_claims`` holds one row per live assignment (reviewer, until). An item
with overlap *n* is claimable while its verdicts plus the live claims of *other*
reviewers number fewer than *n*, by reviewers who have not voted on it yet. A claim
ends when its reviewer votes, releases it, or its lease runs out.

Closing: when an item has ``overlap`` verdicts its final verdict is the plurality of
approve / edit / reject; a tie is a reject (see :func:`final_verdict`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Literal

import orjson

from keel.errors import ReviewClosed, ReviewDuplicate, ReviewNotFound
from keel.stages.hold import Verdict
from keel.store.db import Connection, Store
from keel.types import JSON

Order = Literal["confidence", "oldest"]
Status = Literal["pending", "done", "all"]
VERDICTS: tuple[Verdict, ...] = ("approve", "edit", "reject")
DEFAULT_LEASE_S = 600.0


@dataclass(frozen=True, slots=True)
class Vote:
    reviewer: str
    verdict: Verdict
    output: JSON  # the correction of an edit; None otherwise
    reason: str | None
    at: float


@dataclass(frozen=True, slots=True)
class ReviewItem:
    trace_id: str
    feature: str
    version: str | None
    created_at: float
    mode: str
    status: str  # pending | done
    confidence: float | None
    reason: str | None
    input: JSON
    output: JSON
    validations: list[dict[str, JSON]]
    overlap: int
    votes: list[Vote] = field(default_factory=list)
    assigned_to: str | None = None
    assigned_until: float | None = None
    final_verdict: Verdict | None = None
    final_output: JSON = None
    decided_at: float | None = None

    def to_json(self) -> dict[str, JSON]:
        """The item as the API shows it."""
        final = None if self.final_verdict is None else {
            "verdict": self.final_verdict, "output": self.final_output,
            "decided_at": self.decided_at}
        return {
            "trace_id": self.trace_id, "feature": self.feature, "version": self.version,
            "created_at": self.created_at, "mode": self.mode, "status": self.status,
            "confidence": self.confidence, "reason": self.reason, "input": self.input,
            "output": self.output,
            "validations": [{k: v.get(k) for k in ("validator", "passed", "on_fail", "message")}
                            for v in self.validations],
            "overlap": self.overlap,
            "votes": [{"reviewer": v.reviewer, "verdict": v.verdict, "output": v.output,
                       "reason": v.reason, "at": v.at} for v in self.votes],
            "assigned_to": self.assigned_to, "final": final,
        }


@dataclass(frozen=True, slots=True)
class FeatureStats:
    feature: str
    pending: int = 0  # nobody has it and nobody voted yet
    in_progress: int = 0  # claimed, or some but not all verdicts in
    done: int = 0
    approved: int = 0
    edited: int = 0
    rejected: int = 0
    multi_reviewed: int = 0  # closed items with two or more verdicts
    unanimous: float | None = None  # share of those where every verdict agrees
    pairwise: float | None = None  # mean share of agreeing reviewer pairs per item

    @property
    def rejected_share(self) -> float | None:
        return self.rejected / self.done if self.done else None

    def to_json(self) -> dict[str, JSON]:
        return {
            "feature": self.feature, "pending": self.pending, "in_progress": self.in_progress,
            "done": self.done, "approved": self.approved, "edited": self.edited,
            "rejected": self.rejected, "rejected_share": self.rejected_share,
            "agreement": {"items": self.multi_reviewed, "unanimous": self.unanimous,
                          "pairwise": self.pairwise},
        }


OnClose = Callable[[Connection, ReviewItem], None]


def canonical(value: JSON) -> bytes:
    """One byte string per JSON value, so equal outputs compare equal."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _answer(vote: Vote) -> tuple[str, bytes | None]:
    """What a vote says: two votes agree when these are equal."""
    return vote.verdict, canonical(vote.output) if vote.verdict == "edit" else None


def final_verdict(votes: Sequence[Vote], original: JSON) -> tuple[Verdict, JSON, str | None]:
    """The decision of several reviewers: (verdict, final output, reason).

    The verdict is the most common one. A tie for the top is a **reject**: the item
    is in the queue because the system was unsure, and reviewers who split evenly
    have not confirmed any output either, so none may go out as "reviewed" (a held
    caller gets the safe default, as on a reject). The item is still kept in the
    dataset, with every vote, as a negative to look at again. When ``edit`` wins, the
    output is the most common correction; among equally common ones, the earliest.
    """
    if not votes:
        raise ValueError("no votes")
    ranked = Counter(v.verdict for v in votes).most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        split = ", ".join(f"{n} {verdict}" for verdict, n in ranked)
        return "reject", None, f"reviewers split ({split}): no majority"
    verdict = ranked[0][0]
    if verdict == "approve":
        return "approve", original, None
    if verdict == "reject":
        reasons = [v.reason for v in votes if v.verdict == "reject" and v.reason]
        return "reject", None, "; ".join(dict.fromkeys(reasons)) or None
    edits = [v.output for v in votes if v.verdict == "edit"]
    counts = Counter(canonical(o) for o in edits)
    best = max(counts.values())
    return "edit", next(o for o in edits if counts[canonical(o)] == best), None


def _loads(raw: str | None) -> JSON:
    return None if raw is None else orjson.loads(raw)


def _dumps(value: JSON) -> str:
    return orjson.dumps(value).decode()


_ORDER_SQL: dict[str, str] = {
    # unknown confidence first (the least known), then the least confident, oldest first
    "confidence": "i.confidence ASC NULLS FIRST, i.ts, i.trace_id",
    "oldest": "i.ts, i.trace_id",
}


class ReviewStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    # --- connections ------------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        conn = self.store.connect()
        try:
            yield conn
        finally:
            conn.close()

    def _write(self) -> AbstractContextManager[Connection]:
        """A transaction holding the review queue's lock from its first statement."""
        return self.store.transaction("reviews")

    # --- reading ----------------------------------------------------------------------

    def _items(self, conn: Connection, rows: Sequence[Any],
               now: float) -> list[ReviewItem]:
        votes: dict[str, list[Vote]] = {row["trace_id"]: [] for row in rows}
        if votes:
            marks = ",".join("?" * len(votes))
            for v in conn.execute(
                    f"SELECT * FROM review_verdicts WHERE trace_id IN ({marks}) ORDER BY ts, reviewer",
                    list(votes)):
                votes[v["trace_id"]].append(Vote(v["reviewer"], v["verdict"], _loads(v["output"]),
                                                 v["reason"], v["ts"]))
        out = []
        for row in rows:
            live = row["assigned_until"] is not None and row["assigned_until"] >= now
            out.append(ReviewItem(
                trace_id=row["trace_id"], feature=row["feature"], version=row["version"],
                created_at=row["ts"], mode=row["mode"], status=row["status"],
                confidence=row["confidence"], reason=row["reason"], input=_loads(row["input"]),
                output=_loads(row["output"]), validations=_loads(row["validations"]) or [],
                overlap=row["overlap"], votes=votes[row["trace_id"]],
                assigned_to=row["assigned_to"] if live else None,
                assigned_until=row["assigned_until"] if live else None,
                final_verdict=row["final_verdict"], final_output=_loads(row["final_output"]),
                decided_at=row["decided_at"]))
        return out

    @staticmethod
    def _where(feature: str | None, status: Status) -> tuple[str, list[Any]]:
        clauses, args = [], []
        if feature is not None:
            clauses.append("i.feature = ?")
            args.append(feature)
        if status != "all":
            clauses.append("i.status = ?")
            args.append(status)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    def list_items(self, feature: str | None = None, status: Status = "pending",
             order: Order = "confidence", limit: int = 50, offset: int = 0) -> list[ReviewItem]:
        where, args = self._where(feature, status)
        sql = f"SELECT * FROM review_items i{where} ORDER BY {_ORDER_SQL[order]} LIMIT ? OFFSET ?"
        with self._read() as conn:
            rows = conn.execute(sql, [*args, limit, offset]).fetchall()
            return self._items(conn, rows, time.time())

    def count(self, feature: str | None = None, status: Status = "pending") -> int:
        where, args = self._where(feature, status)
        with self._read() as conn:
            return int(conn.execute(f"SELECT COUNT(*) FROM review_items i{where}", args).fetchone()[0])

    def get(self, trace_id: str) -> ReviewItem | None:
        with self._read() as conn:
            return self._get(conn, trace_id, time.time())

    def get_closed(self, trace_id: str) -> ReviewItem | None:
        """The item once it has its final verdict; None while pending (one cheap query
        then: held callers poll this)."""
        with self._read() as conn:
            row = conn.execute("SELECT * FROM review_items WHERE trace_id = ? AND status = 'done'",
                               (trace_id,)).fetchone()
            return None if row is None else self._items(conn, [row], time.time())[0]

    def _get(self, conn: Connection, trace_id: str, now: float) -> ReviewItem | None:
        row = conn.execute("SELECT * FROM review_items WHERE trace_id = ?", (trace_id,)).fetchone()
        return None if row is None else self._items(conn, [row], now)[0]

    # --- claiming ---------------------------------------------------------------------

    def claim(self, reviewer: str, feature: str | None = None, order: Order = "confidence",
              leases: Mapping[str, float] | None = None, skip: Collection[str] = (),
              now: float | None = None) -> ReviewItem | None:
        """The next item for ``reviewer``, now assigned to them; None when there is none.

        A reviewer's own live claim comes back first (asking twice does not take two
        items); its lease is renewed. ``leases`` gives the lease per feature
        (default 600 s); ``skip`` leaves out items this reviewer passed over.
        """
        now = time.time() if now is None else now
        filters, args = ["i.status = 'pending'"], []
        if feature is not None:
            filters.append("i.feature = ?")
            args.append(feature)
        if skip:
            filters.append(f"i.trace_id NOT IN ({','.join('?' * len(skip))})")
            args.extend(skip)
        where = " AND ".join(filters)
        mine = (f"SELECT i.* FROM review_items i JOIN review_claims c ON c.trace_id = i.trace_id"
                f" WHERE c.reviewer = ? AND c.until >= ? AND {where}"
                f" ORDER BY {_ORDER_SQL[order]} LIMIT 1")
        free = (f"SELECT i.* FROM review_items i WHERE {where}"
                " AND NOT EXISTS (SELECT 1 FROM review_verdicts v"
                "                 WHERE v.trace_id = i.trace_id AND v.reviewer = ?)"
                " AND (SELECT COUNT(*) FROM review_verdicts v WHERE v.trace_id = i.trace_id)"
                "   + (SELECT COUNT(*) FROM review_claims c WHERE c.trace_id = i.trace_id"
                "      AND c.until >= ? AND c.reviewer <> ?) < i.overlap"
                f" ORDER BY {_ORDER_SQL[order]} LIMIT 1")
        with self._write() as conn:
            row = conn.execute(mine, [reviewer, now, *args]).fetchone()
            if row is None:
                row = conn.execute(free, [*args, reviewer, now, reviewer]).fetchone()
            if row is None:
                return None
            until = now + (leases or {}).get(row["feature"], DEFAULT_LEASE_S)
            conn.execute(
                "INSERT INTO review_claims (trace_id, reviewer, until) VALUES (?, ?, ?)"
                " ON CONFLICT (trace_id, reviewer) DO UPDATE SET until = excluded.until",
                (row["trace_id"], reviewer, until))
            conn.execute("UPDATE review_items SET assigned_to = ?, assigned_until = ?"
                         " WHERE trace_id = ?", (reviewer, until, row["trace_id"]))
            return self._get(conn, row["trace_id"], now)

    def release(self, trace_id: str, reviewer: str) -> bool:
        """Give a claimed item back (a skip); False when the reviewer held no claim on it."""
        with self._write() as conn:
            gone = conn.execute("DELETE FROM review_claims WHERE trace_id = ? AND reviewer = ?",
                                (trace_id, reviewer)).rowcount
            self._reassign(conn, trace_id)
        return bool(gone)

    @staticmethod
    def _reassign(conn: Connection, trace_id: str) -> None:
        """Point assigned_to at the latest remaining claim, or at nobody."""
        row = conn.execute("SELECT reviewer, until FROM review_claims WHERE trace_id = ?"
                           " ORDER BY until DESC LIMIT 1", (trace_id,)).fetchone()
        conn.execute("UPDATE review_items SET assigned_to = ?, assigned_until = ? WHERE trace_id = ?",
                     (row[0] if row else None, row[1] if row else None, trace_id))

    # --- verdicts ---------------------------------------------------------------------

    def record(self, trace_id: str, reviewer: str, verdict: Verdict, output: JSON = None,
               reason: str | None = None, *, on_close: OnClose | None = None,
               now: float | None = None) -> ReviewItem:
        """Record one reviewer's verdict; close the item when it has ``overlap`` of them.

        An edit that leaves the output as it was is recorded as an approval. ``on_close``
        runs inside the same transaction with the closed item (the dataset example is
        written there, so a closed item never lacks its example).
        """
        now = time.time() if now is None else now
        with self._write() as conn:
            item = self._get(conn, trace_id, now)
            if item is None:
                raise ReviewNotFound(f"no review item with trace id '{trace_id}'", param="trace_id")
            if item.status != "pending":
                raise ReviewClosed(f"review item '{trace_id}' is closed (final verdict: "
                                   f"{item.final_verdict})", param="trace_id")
            if any(v.reviewer == reviewer for v in item.votes):
                raise ReviewDuplicate(f"reviewer '{reviewer}' already gave a verdict on "
                                      f"'{trace_id}'", param="reviewer")
            if verdict == "edit" and canonical(output) == canonical(item.output):
                verdict = "approve"
            if verdict != "edit":
                output = None
            conn.execute("INSERT INTO review_verdicts (trace_id, reviewer, verdict, output, reason, ts)"
                         " VALUES (?, ?, ?, ?, ?, ?)",
                         (trace_id, reviewer, verdict, None if output is None else _dumps(output),
                          reason, now))
            conn.execute("DELETE FROM review_claims WHERE trace_id = ? AND reviewer = ?",
                         (trace_id, reviewer))
            votes = [*item.votes, Vote(reviewer, verdict, output, reason, now)]
            if len(votes) < item.overlap:
                self._reassign(conn, trace_id)
            else:
                final, final_output, _ = final_verdict(votes, item.output)
                conn.execute(
                    "UPDATE review_items SET status = 'done', final_verdict = ?, final_output = ?,"
                    " decided_at = ?, assigned_to = NULL, assigned_until = NULL WHERE trace_id = ?",
                    (final, None if final_output is None else _dumps(final_output), now, trace_id))
                conn.execute("DELETE FROM review_claims WHERE trace_id = ?", (trace_id,))
            closed = self._get(conn, trace_id, now)
            assert closed is not None
            if closed.status == "done" and on_close is not None:
                on_close(conn, closed)
            return closed

    # --- stats ------------------------------------------------------------------------

    def stats(self, feature: str | None = None, now: float | None = None) -> list[FeatureStats]:
        """Per feature: queue sizes, verdict counts and reviewer agreement."""
        now = time.time() if now is None else now
        only, args = ("WHERE i.feature = ?", [feature]) if feature else ("", [])
        counts: dict[str, Counter[str]] = {}
        with self._read() as conn:
            for row in conn.execute(
                    "SELECT i.feature, i.status, i.final_verdict,"
                    " (EXISTS (SELECT 1 FROM review_verdicts v WHERE v.trace_id = i.trace_id)"
                    "  OR EXISTS (SELECT 1 FROM review_claims c WHERE c.trace_id = i.trace_id"
                    "             AND c.until >= ?)) AS started, COUNT(*) AS n"
                    f" FROM review_items i {only} GROUP BY 1, 2, 3, 4", [now, *args]):
                c = counts.setdefault(row["feature"], Counter())
                if row["status"] == "done":
                    c["done"] += row["n"]
                    c[{"approve": "approved", "edit": "edited"}.get(row["final_verdict"],
                                                                    "rejected")] += row["n"]
                else:
                    c["in_progress" if row["started"] else "pending"] += row["n"]
            votes: dict[tuple[str, str], list[Vote]] = {}
            for row in conn.execute(
                    "SELECT i.feature, v.* FROM review_verdicts v JOIN review_items i"
                    " ON i.trace_id = v.trace_id"
                    f" {only + ' AND' if only else 'WHERE'} i.status = 'done'"
                    " ORDER BY v.ts", args):
                votes.setdefault((row["feature"], row["trace_id"]), []).append(Vote(
                    row["reviewer"], row["verdict"], _loads(row["output"]), row["reason"], row["ts"]))
        agreement: dict[str, list[tuple[bool, float]]] = {}
        for (name, _), item_votes in votes.items():
            if len(item_votes) < 2:
                continue
            answers = [_answer(v) for v in item_votes]
            pairs = list(combinations(answers, 2))
            agreement.setdefault(name, []).append(
                (len(set(answers)) == 1, sum(a == b for a, b in pairs) / len(pairs)))
        out = []
        for name in sorted(counts):
            c, agree = counts[name], agreement.get(name, [])
            out.append(FeatureStats(
                feature=name, pending=c["pending"], in_progress=c["in_progress"], done=c["done"],
                approved=c["approved"], edited=c["edited"], rejected=c["rejected"],
                multi_reviewed=len(agree),
                unanimous=sum(u for u, _ in agree) / len(agree) if agree else None,
                pairwise=sum(p for _, p in agree) / len(agree) if agree else None))
        return out

