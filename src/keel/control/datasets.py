"""Labelled examples: the one way they are written.

Every producer of labelled data (today the review queue, later imports and
dataset versioning) goes through :class:`DatasetSink`. An example is keyed by
``(dataset, example_id)`` and written once: adding the same key again changes
nothing, so a retried write never duplicates or rewrites an example.

Synchronous, like the store: async callers run it in a thread.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypedDict

import orjson

from keel.store.sqlite import SQLiteStore
from keel.types import JSON


class Provenance(TypedDict):
    """Where an example came from. For review examples ``source`` is ``"review"``."""

    trace_id: str
    version: str | None
    reviewers: list[str]
    time: float  # when the label was decided
    original_output: JSON  # what the model answered
    verdict: str  # approve | edit | reject
    source: str


@dataclass(frozen=True, slots=True)
class Example:
    dataset: str
    example_id: str
    input: JSON
    expected: JSON  # None for a rejected output: a negative with no correct answer given
    metadata: dict[str, JSON]
    provenance: Provenance
    ts: float = field(default_factory=time.time)


class DatasetSink:
    def __init__(self, store: SQLiteStore) -> None:
        self.store = store

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = self.store.connect()
        try:
            yield conn
        finally:
            conn.close()

    def add(self, dataset: str, example_id: str, input: JSON, expected: JSON,
            metadata: dict[str, JSON], provenance: Provenance) -> bool:
        """Write one example; False when ``(dataset, example_id)`` was already there."""
        example = Example(dataset, example_id, input, expected, metadata, provenance)
        with self._connect() as conn, conn:
            return self.write(conn, example)

    @staticmethod
    def write(conn: sqlite3.Connection, example: Example) -> bool:
        """Write inside the caller's transaction (e.g. the one closing a review item)."""
        if not example.dataset or not example.example_id:
            raise ValueError("an example needs a dataset name and an example id")
        cursor = conn.execute(
            "INSERT INTO dataset_examples (dataset, example_id, input, expected, metadata,"
            " provenance, ts) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (dataset, example_id) DO NOTHING",
            (example.dataset, example.example_id, _dumps(example.input),
             None if example.expected is None else _dumps(example.expected),
             _dumps(example.metadata), _dumps(example.provenance), example.ts))
        return cursor.rowcount == 1

    def list(self, dataset: str, limit: int = 100, offset: int = 0) -> list[Example]:
        """Examples of one dataset, oldest first."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT * FROM dataset_examples WHERE dataset = ? ORDER BY ts, example_id"
                " LIMIT ? OFFSET ?", (dataset, limit, offset)).fetchall()
        return [_example(row) for row in rows]

    def get(self, dataset: str, example_id: str) -> Example | None:
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM dataset_examples WHERE dataset = ? AND example_id = ?",
                               (dataset, example_id)).fetchone()
        return None if row is None else _example(row)

    def count(self, dataset: str) -> int:
        with self._connect() as conn:
            row = conn.execute("SELECT COUNT(*) FROM dataset_examples WHERE dataset = ?",
                               (dataset,)).fetchone()
        return int(row[0])


def _example(row: sqlite3.Row) -> Example:
    return Example(row["dataset"], row["example_id"], orjson.loads(row["input"]),
                   None if row["expected"] is None else orjson.loads(row["expected"]),
                   orjson.loads(row["metadata"]), orjson.loads(row["provenance"]), row["ts"])


def _dumps(value: object) -> str:
    return orjson.dumps(value).decode()
