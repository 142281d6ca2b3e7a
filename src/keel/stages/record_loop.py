"""The event writer's thread (:class:`WriterLoop`): what
:class:`keel.stages.record.EventWriter` hands over goes to the store in order; when the
store is down it waits in memory, then in spill files; files left by earlier processes
(journals, spill files) are drained in between. See docs/resilience.md.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from pathlib import Path

from keel.stages.journal import Journal, Segment
from keel.stages.record_store import StoreLink
from keel.stages.spill import Claimed, SpillFile, claim, read_chunk
from keel.types import Event, ReviewRequest

Record = Event | ReviewRequest
Mark = tuple[Segment, int] | None  # the journal segment and offset after a batch's records

log = logging.getLogger("keel.record")

STOP = object()


class Flush:
    def __init__(self) -> None:
        self.done = threading.Event()


class Batch:
    __slots__ = ("mark", "records")

    def __init__(self, records: list[Record], mark: Mark) -> None:
        self.records, self.mark = records, mark


class Retire:
    """The journal rotated: every record of ``segment`` is in the queue before this."""

    def __init__(self, segment: Segment) -> None:
        self.segment = segment


class WriterLoop:
    def __init__(self, items: queue.SimpleQueue[object], link: StoreLink, spill: SpillFile,
                 journal: Journal | None, batch_size: int, buffer_max: int) -> None:
        self._queue = items  # a Batch, a Retire, a Flush marker, or STOP
        self.link = link
        self.spill = spill
        self.spill_dir: Path = spill.directory
        self.journal = journal
        self._batch_size = batch_size
        self.buffer_max = buffer_max
        # waiting for the store, in order; files to drain
        self._buffer: collections.deque[Batch] = collections.deque()
        self.buffered = 0
        self._backlog: collections.deque[Claimed] = collections.deque()
        self.backlog_records = 0  # in the files of _backlog, not stored yet
        self._retiring: list[Segment] = []
        self._flushes: list[Flush] = []
        self.spilled = self.dropped = self.replayed = 0
        self.taken = 0  # records taken from the queue
        self._drop_logged = float("-inf")

    @property
    def spill_pending(self) -> int:
        return self.backlog_records + self.spill.records

    def run(self) -> None:
        self._claim()
        stop = False
        try:
            while not stop:
                try:
                    batches, stop = self._collect(self._wait_s())
                    if batches:
                        self._take(batches)
                    self._progress()
                    self._release_flushes()
                except Exception:  # a bug here must not stop recording for good
                    log.exception("event writer: unexpected error; going on")
                    time.sleep(0.1)
        finally:
            self._shutdown()

    def _wait_s(self) -> float | None:
        if not self.link.up:
            return max(0.0, self.link.retry_at - time.monotonic())
        return 0.0 if (self._buffer or self._backlog) else None

    def _collect(self, wait: float | None) -> tuple[list[Batch], bool]:
        try:
            item = self._queue.get(timeout=wait) if wait != 0.0 else self._queue.get_nowait()
        except queue.Empty:
            return [], False
        batches: list[Batch] = []
        n, stop = 0, False
        while True:
            if item is STOP:
                stop = True
            elif isinstance(item, Flush):
                self._flushes.append(item)
            elif isinstance(item, Retire):
                if batches:  # its records are in this round: retire after them
                    self._take(batches)
                    batches, n = [], 0
                self._retire(item.segment)
            else:
                assert isinstance(item, Batch)
                batches.append(item)
                n += len(item.records)
                self.taken += len(item.records)
            if n >= self._batch_size:
                break
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
        return batches, stop

    def _take(self, batches: list[Batch]) -> None:
        """New records: to the store if it is up and nothing older waits; else in line."""
        if self.link.up and not self._buffer:
            records = [r for b in batches for r in b.records]
            if self.link.write(records):
                self._durable(next((b.mark for b in reversed(batches) if b.mark), None))
                return
        self._buffer.extend(batches)
        self.buffered += sum(len(b.records) for b in batches)
        while self.buffered > self.buffer_max and self._buffer:
            self._spill(self._buffer.popleft())

    def _spill(self, batch: Batch) -> None:
        n = len(batch.records)
        self.buffered -= n
        if self.spill.write(batch.records):
            self.spilled += n
            self._durable(batch.mark)
            return
        self.dropped += n
        if batch.mark is not None:
            batch.mark[0].stuck = True  # the journal keeps them for the next start
        if time.monotonic() - self._drop_logged > 10.0:
            self._drop_logged = time.monotonic()
            log.error("store down and spill impossible: dropped %d records so far (the "
                      "journal keeps those it has for the next start)", self.dropped)

    def _durable(self, mark: Mark) -> None:
        if mark is not None:
            Journal.mark_durable(*mark)

    def _retire(self, segment: Segment) -> None:
        if self._buffer:
            self._retiring.append(segment)
        else:
            Journal.retire(segment)

    def _progress(self) -> None:
        """Retry a down store when it is time; once up, write what waits, oldest first."""
        link = self.link
        if not link.up:
            if time.monotonic() < link.retry_at:
                return
            if not self._buffer and not link.check():
                return  # nothing in memory to try a write with: asked, still down
        while self._buffer:
            batch = self._buffer[0]
            if not link.write(batch.records):
                return
            self._buffer.popleft()
            self.buffered -= len(batch.records)
            self._durable(batch.mark)
        for segment in self._retiring:
            Journal.retire(segment)
        self._retiring.clear()
        if self.spill.finish() is not None:  # our own spill file: drain it too
            self._to_drain(claim(self.spill_dir, "spill"))
        self._drain_one()

    def _drain_one(self) -> None:
        """One chunk of the oldest file left to drain (new records go in between)."""
        if not self._backlog:
            return
        claimed = self._backlog[0]
        try:
            records, end = read_chunk(claimed.path, claimed.offset, self._batch_size)
        except OSError as exc:
            log.error("cannot read %s (%s): left for the next start", claimed.path, exc)
            self._drained(delete=False)
            return
        if records:
            if self.link.write(records):  # else again from the same offset, later
                claimed.offset = end
                done = min(claimed.records, len(records))
                claimed.records -= done
                self.backlog_records -= done
                if claimed.journal:
                    self.replayed += len(records)
            return
        self._drained(delete=True)
        if self.spill.instance in claimed.path.name:
            self.spill.bytes = max(0, self.spill.bytes - claimed.size)
        log.info("drained %s into the store", claimed.path.name)

    def _to_drain(self, found: list[Claimed]) -> None:
        self._backlog.extend(found)
        self.backlog_records += sum(c.records for c in found)

    def _drained(self, delete: bool) -> None:
        claimed = self._backlog.popleft()
        self.backlog_records -= claimed.records
        claimed.release(delete=delete)

    def _claim(self) -> None:
        """What earlier processes left: their journals, then their spill files."""
        for kind in ("journal", "spill"):
            found = claim(self.spill_dir, kind)
            if found:
                log.warning("found %d %s file(s) with %d records not known to be stored: "
                            "writing them to the store", len(found), kind,
                            sum(c.records for c in found))
            self._to_drain(found)

    def _release_flushes(self) -> None:
        if self._flushes and self.link.up and not self._buffer and not self._backlog:
            for marker in self._flushes:
                marker.done.set()
            self._flushes.clear()

    def _shutdown(self) -> None:
        """Last chance for what waits: the store once more, else a spill file."""
        if self._buffer:
            self.link.retry_at = 0.0
            self._progress()
        while self._buffer:
            self._spill(self._buffer.popleft())
        self.spill.finish()
        for segment in self._retiring:
            Journal.retire(segment)
        if self.journal is not None:
            self.journal.close(durable=self.dropped == 0)
        while self._backlog:
            self._drained(delete=False)
        for marker in self._flushes:
            marker.done.set()
        self.link.close()
