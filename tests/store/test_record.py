"""The event writer: batched, off the hot path, nothing lost on close."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from keel.stages.record import EventWriter
from keel.store.migrations import MIGRATIONS
from keel.types import Decision, Event, ReviewRequest
from tests.backends import store_at


def event(i: int, decision: Decision = Decision.ACCEPTED) -> Event:
    return Event(trace_id=f"t{i}", ts=time.time(), feature="f", version="v1", decision=decision,
                 confidence=0.5, latency_ms=1.0, timings_ms={"total": 1.0}, input_tokens=1,
                 output_tokens=1, cost_usd=0.0, attempts=[], validations=[],
                 input={"text": str(i)}, output={"label": "a"}, reason="low" if decision is Decision.REVIEW else None)


def test_migrations_apply_once(tmp_path: Path) -> None:
    store = store_at(tmp_path / "k.db")
    assert store.migrate() == [name for name, _ in MIGRATIONS]
    assert store.migrate() == []


def review(i: int) -> ReviewRequest:
    return ReviewRequest(trace_id=f"t{i}", ts=time.time(), feature="f", version="v1",
                         mode="deferred", confidence=0.4, reason="low", input={"text": "x"},
                         output={"label": "a"}, validations=[])


def test_close_drains_everything_submitted(tmp_path: Path) -> None:
    store = store_at(tmp_path / "k.db")
    store.migrate()
    writer = EventWriter(store, batch_size=64)
    writer.start()
    for i in range(5000):
        if i % 10 == 0:
            writer.submit(review(i))
        writer.submit(event(i, Decision.REVIEW if i % 10 == 0 else Decision.ACCEPTED))
    writer.close()
    assert store.count_events() == 5000
    assert store.pending_reviews() == 500


def test_duplicate_trace_ids_are_written_once(tmp_path: Path) -> None:
    store = store_at(tmp_path / "k.db")
    store.migrate()
    writer = EventWriter(store)
    writer.start()
    writer.submit(event(1))
    writer.submit(event(1))
    writer.close()
    assert store.count_events() == 1


async def test_concurrent_submitters_lose_nothing(tmp_path: Path) -> None:
    store = store_at(tmp_path / "k.db")
    store.migrate()
    writer = EventWriter(store, batch_size=32)
    writer.start()

    async def one(i: int) -> None:
        await asyncio.sleep(0)
        writer.submit(event(i))

    await asyncio.gather(*(one(i) for i in range(2000)))
    writer.close()
    assert store.count_events() == 2000


@pytest.mark.sqlite_only  # reads SQLite's own catalogue
def test_a_failing_store_spills_instead_of_dropping(tmp_path: Path) -> None:
    store = store_at(tmp_path / "k.db")  # never migrated: no events table
    writer = EventWriter(store, retries=2)
    writer.start()
    writer.submit(event(1))
    writer.submit(event(2))
    writer.close()
    assert writer.spilled == 2
    lines = writer.spill_path.read_text().splitlines()
    assert len(lines) == 2 and '"trace_id":"t1"' in lines[0]
    conn = sqlite3.connect(store.path)
    assert conn.execute("SELECT name FROM sqlite_master WHERE name='events'").fetchone() is None
