"""Recording events off the hot path: a queue, one writer thread, batched transactions.

``submit`` never touches the disk: it appends the event to a list, and once per
event-loop iteration that list goes to the writer thread's queue as one batch (one
queue put and one thread wake-up per loop turn, not per event). The writer takes
what has piled up (up to ``batch_size``), writes it in one transaction and goes back
for more, so under load batches grow by themselves.
``close`` drains the queue before it returns: nothing submitted is lost on a clean
shutdown (uvicorn turns SIGTERM into one). If the store keeps failing, the batch is
appended to a spill file beside it rather than dropped.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from dataclasses import asdict
from pathlib import Path

import orjson

from keel.store.sqlite import SQLiteStore
from keel.types import Event, ReviewRequest

Record = Event | ReviewRequest

log = logging.getLogger("keel.record")

_STOP = object()


class _Flush:
    def __init__(self) -> None:
        self.done = threading.Event()


class EventWriter:
    def __init__(self, store: SQLiteStore, *, batch_size: int = 512, retries: int = 3) -> None:
        self._store = store
        self._batch_size = batch_size
        self._retries = retries
        # items: a list of events, a _Flush marker, or _STOP
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="keel-event-writer", daemon=True)
        self._closed = False
        self._pending: list[Record] = []
        self._handoff_scheduled = False
        self.written = 0
        self.spilled = 0
        self.spill_path = store.path.with_suffix(store.path.suffix + ".spill.jsonl")

    def start(self) -> None:
        self._thread.start()

    def submit(self, event: Record) -> None:
        if self._closed:
            raise RuntimeError("event writer is closed")
        self._pending.append(event)
        if self._handoff_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop: hand over at once
            self._handoff()
            return
        self._handoff_scheduled = True
        loop.call_soon(self._handoff)

    def _handoff(self) -> None:
        self._handoff_scheduled = False
        if self._pending:
            batch, self._pending = self._pending, []
            self._queue.put(batch)

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until everything submitted before this call is written."""
        self._handoff()
        marker = _Flush()
        self._queue.put(marker)
        return marker.done.wait(timeout)

    def close(self, timeout: float = 30.0) -> None:
        if self._closed:
            return
        self._closed = True
        self._handoff()
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        conn = self._store.connect()
        stop = False
        try:
            while True:
                if stop:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        return
                else:
                    item = self._queue.get()
                batch: list[Record] = []
                markers: list[_Flush] = []
                while True:
                    if item is _STOP:
                        stop = True
                    elif isinstance(item, _Flush):
                        markers.append(item)
                    else:
                        assert isinstance(item, list)
                        batch.extend(item)
                    if len(batch) >= self._batch_size:
                        break
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                if batch:
                    self._write(conn, batch)
                for marker in markers:
                    marker.done.set()
        finally:
            conn.close()

    def _write(self, conn: sqlite3.Connection, batch: list[Record]) -> None:
        events = [r for r in batch if isinstance(r, Event)]
        reviews = [r for r in batch if isinstance(r, ReviewRequest)]
        for attempt in range(self._retries):
            try:
                if reviews:  # before the events: a held caller's item must show up first
                    self._store.write_reviews(conn, reviews)
                self._store.write_events(conn, events)
                self.written += len(batch)
                return
            except sqlite3.Error as exc:
                log.warning("writing %d events failed (%s); try %d", len(batch), exc, attempt + 1)
                time.sleep(0.05 * 2**attempt)
        self._spill(batch)

    def _spill(self, batch: list[Record]) -> None:
        path = Path(self.spill_path)
        with path.open("ab") as f:
            for event in batch:
                f.write(orjson.dumps({"kind": type(event).__name__, **asdict(event)}) + b"\n")
        self.spilled += len(batch)
        log.error("store unavailable: %d events spilled to %s", len(batch), path)
