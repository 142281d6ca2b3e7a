"""The event writer when the store fails: buffer in memory, spill to files, drain back
when the store returns; the write-ahead journal replayed after a crash (docs/resilience.md)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from keel.stages.record import EventWriter
from keel.stages.spill import decode, encode
from keel.types import Attempt, Decision, Event, OnFail, ReviewRequest, ValidationResult
from tests.backends import store_at
from tests.store.flaky import FlakyStore


def event(i: int) -> Event:
    return Event(trace_id=f"t{i}", ts=time.time(), feature="f", version="v1",
                 decision=Decision.ACCEPTED, confidence=0.5, latency_ms=1.0,
                 timings_ms={"total": 1.0}, input_tokens=1, output_tokens=1, cost_usd=0.0,
                 attempts=[Attempt("v1", "p", False, 2.0, 0, "provider_timeout", "slow")],
                 validations=[ValidationResult("regex", False, OnFail.REPAIR, "m", {"x": 1})],
                 input={"text": str(i)}, output={"label": "a"}, user="u", routed="v1")


def review(i: int) -> ReviewRequest:
    return ReviewRequest(trace_id=f"t{i}", ts=time.time(), feature="f", version="v1",
                         mode="deferred", confidence=0.4, reason="low", input={"text": "x"},
                         output={"label": "a"}, validations=[])


def flaky(tmp_path: Path) -> FlakyStore:
    inner = store_at(tmp_path / "k.db")
    inner.migrate()
    return FlakyStore(inner)


def wait_for(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def files(directory: Path, kind: str) -> list[Path]:
    return sorted(directory.glob(f"{kind}-*.jsonl"))


def test_records_round_trip_through_a_line() -> None:
    for record in (event(1), review(2)):
        assert decode(encode(record)) == record


def test_a_down_store_buffers_then_drains_when_back(tmp_path: Path) -> None:
    store = flaky(tmp_path)
    writer = EventWriter(store, spill_dir=tmp_path / "spill", retry_s=0.01)  # type: ignore[arg-type]
    writer.start()
    store.down = True
    for i in range(50):
        if i % 10 == 0:
            writer.submit(review(i))
        writer.submit(event(i))
    wait_for(lambda: writer.buffered == 55)
    assert not writer.link.up and writer.health()["up"] is False
    assert "unable to open database file" in (writer.health()["error"] or "")
    assert writer.flush(timeout=0.2) is False  # nothing is in the store yet
    failed = store.failed_writes
    wait_for(lambda: store.failed_writes > failed)  # it keeps asking (backing off to 5 s)
    store.down = False
    assert writer.flush()
    assert writer.link.up and writer.buffered == 0 and writer.spilled == 0
    assert store.count_events() == 50 and store.pending_reviews() == 5
    writer.close()


def test_over_the_memory_bound_records_spill_to_a_file_and_drain_back(tmp_path: Path) -> None:
    store = flaky(tmp_path)
    spill = tmp_path / "spill"
    writer = EventWriter(store, spill_dir=spill, buffer_max=10,  # type: ignore[arg-type]
                         batch_size=5, retry_s=0.01)
    writer.start()
    store.down = True
    for i in range(100):
        writer.submit(event(i))
    wait_for(lambda: writer.spilled >= 90)
    assert writer.buffered <= 10 and writer.spill_pending >= 90
    (spilled,) = files(spill, "spill")
    assert len(spilled.read_bytes().splitlines()) == writer.spilled
    store.down = False
    assert writer.flush()
    assert store.count_events() == 100 and writer.dropped == 0
    assert files(spill, "spill") == [] and writer.spill_pending == 0
    writer.close()


def test_spill_files_left_behind_drain_at_the_next_start(tmp_path: Path) -> None:
    store = flaky(tmp_path)
    spill = tmp_path / "spill"
    first = EventWriter(store, spill_dir=spill, retry_s=0.01)  # type: ignore[arg-type]
    first.start()
    store.down = True
    for i in range(30):
        first.submit(event(i))
    first.close()  # the store is still down: what waits goes to a spill file
    assert first.spilled == 30 and len(files(spill, "spill")) == 1
    store.down = False
    second = EventWriter(store, spill_dir=spill)  # type: ignore[arg-type]
    second.start()
    assert second.flush()
    assert store.count_events() == 30 and files(spill, "spill") == []
    second.close()


def test_past_the_spill_bound_records_are_dropped_and_counted(tmp_path: Path) -> None:
    store = flaky(tmp_path)
    writer = EventWriter(store, spill_dir=tmp_path / "spill", buffer_max=5,  # type: ignore[arg-type]
                         batch_size=5, spill_max_bytes=3000, retry_s=0.01)
    writer.start()
    store.down = True
    for i in range(40):
        writer.submit(event(i))
    wait_for(lambda: writer.spilled + writer.dropped >= 35)
    assert writer.dropped > 0 and writer.spilled > 0
    assert writer.health()["dropped"] == writer.dropped
    writer.close()


def test_dropped_records_survive_in_the_journal(tmp_path: Path) -> None:
    """Past every bound, the journal still has the records: the next start stores them."""
    store = flaky(tmp_path)
    spill = tmp_path / "spill"
    writer = EventWriter(store, spill_dir=spill, buffer_max=5, batch_size=5,  # type: ignore[arg-type]
                         spill_max_bytes=3000, retry_s=0.01, journal=True)
    writer.start()
    store.down = True
    for i in range(40):
        writer.submit(event(i))
    wait_for(lambda: writer.spilled + writer.dropped >= 35)
    writer.close()
    assert writer.dropped > 0 and files(spill, "journal")  # kept for the next start
    store.down = False
    after = EventWriter(store, spill_dir=spill, journal=True)  # type: ignore[arg-type]
    after.start()
    assert after.flush()
    assert store.count_events() == 40
    after.close()
    assert files(spill, "journal") == [] and files(spill, "spill") == []


def test_a_record_the_store_refuses_is_set_aside_and_the_rest_written(tmp_path: Path) -> None:
    store = flaky(tmp_path)
    store.refuse = {"t3"}
    writer = EventWriter(store, spill_dir=tmp_path / "spill")  # type: ignore[arg-type]
    writer.start()
    for i in range(10):
        writer.submit(event(i))
    assert writer.flush()
    assert store.count_events() == 9 and writer.link.rejected == 1 and writer.link.up
    (rejected,) = files(tmp_path / "spill", "rejected")
    assert decode(rejected.read_bytes().splitlines()[0]).trace_id == "t3"
    writer.close()


def crash(writer: EventWriter) -> None:
    """What kill -9 leaves: the journal's files, their locks gone with the process."""
    assert writer.journal is not None and writer.journal.current is not None
    segment = writer.journal.current
    os.close(segment.fd)
    os.close(segment.pos_fd)
    segment.closed = True


def test_the_journal_is_replayed_after_a_crash_from_where_the_store_got(tmp_path: Path) -> None:
    store = flaky(tmp_path)
    spill = tmp_path / "spill"
    writer = EventWriter(store, spill_dir=spill, journal=True, retry_s=0.01)  # type: ignore[arg-type]
    writer.start()
    for i in range(20):
        writer.submit(event(i))
    assert writer.flush()  # these are stored, and the journal says so
    store.down = True
    for i in range(20, 30):
        writer.submit(event(i))
    wait_for(lambda: writer.buffered == 10)
    crash(writer)  # ... and the process dies with 10 records in memory
    (journal,) = files(spill, "journal")
    assert len(journal.read_bytes().splitlines()) == 30
    store.down = False
    after = EventWriter(store, spill_dir=spill, journal=True)  # type: ignore[arg-type]
    after.start()
    assert after.flush()
    assert store.count_events() == 30
    assert after.replayed == 10  # from the recorded offset on, not all 30
    after.close()
    writer.close()
    assert files(spill, "journal") == []


def test_journal_segments_rotate_and_go_once_stored(tmp_path: Path) -> None:
    store = flaky(tmp_path)
    spill = tmp_path / "spill"
    writer = EventWriter(store, spill_dir=spill, journal=True)  # type: ignore[arg-type]
    assert writer.journal is not None
    writer.journal.rotate_bytes = 2000
    writer.start()
    for i in range(200):
        writer.submit(event(i))
    assert writer.flush()
    wait_for(lambda: len(files(spill, "journal")) == 1)  # the old segments are gone
    writer.close()
    assert store.count_events() == 200 and files(spill, "journal") == []
