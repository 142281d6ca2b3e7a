"""Recording events off the hot path: a queue, one writer thread, batched transactions,
and nothing lost when the store fails or the process is killed (docs/resilience.md).

``submit`` runs on the event loop, inside the call: it sanitizes the record (secrets
masked, the feature's privacy policy applied: :mod:`keel.stages.privacy`), appends it to
the write-ahead journal (one ``os.write``: :mod:`keel.stages.journal`) and adds it to a
list that goes to the writer thread's queue once per loop iteration (one queue put and
one thread wake-up per loop turn, not per event). The writer takes what has piled up (up
to ``batch_size``), writes it in one transaction, records in the journal how far the
store has everything, and goes back for more, so under load batches grow by themselves.

When a write fails the store is *down*: records wait in memory (up to ``buffer_max``),
the oldest then go to a spill file (:mod:`keel.stages.spill`, up to ``spill_max_bytes``;
beyond that they are dropped and counted). Every ``retry_s`` (growing to 5 s) the
writer tries the store again; once it takes a batch, the memory, then the spill files go
to it, oldest first. A batch the store answers but refuses (a record it cannot take) is
written one record at a time, and the records it still refuses go to a ``rejected-*``
file. Calls never wait for any of this.

``close`` drains the queue before it returns: nothing submitted is lost on a clean
shutdown (uvicorn turns SIGTERM into one); what the store cannot take then is spilled.
At start the writer claims what a previous process left (journals, spill files) and
writes it to the store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import queue
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keel.stages.journal import Journal
from keel.stages.privacy import Policy, Sanitizer
from keel.stages.record_loop import STOP, Batch, Flush, Mark, Retire, WriterLoop
from keel.stages.record_store import StoreLink
from keel.stages.scrub import LogScrubbing, Scrubber
from keel.stages.spill import SpillFile, encode
from keel.store.db import Store
from keel.types import Event, ReviewRequest

if TYPE_CHECKING:
    from keel.settings import Settings
    from keel.spec import KeelSpec

Record = Event | ReviewRequest

log = logging.getLogger("keel.record")

STALLED_S = 5.0  # a write running longer: the store is stalled (health says degraded)


def default_spill_dir(store: Store) -> Path:
    path = getattr(store, "path", None)
    if isinstance(path, Path):
        return path.with_name(path.name + ".spill")
    return Path(tempfile.gettempdir()) / "keel-spill"


class EventWriter:
    def __init__(self, store: Store, *, batch_size: int = 512, retries: int = 3,
                 spill_dir: Path | None = None, buffer_max: int = 10_000,
                 spill_max_bytes: int = 1 << 30, journal: bool = False,
                 sanitize: Callable[[Record], Record] | None = None,
                 log_scrubbing: LogScrubbing | None = None, retry_s: float = 0.2) -> None:
        self._store = store
        self._sanitize = sanitize
        self._log_scrubbing = log_scrubbing
        self.spill_dir = spill_dir or default_spill_dir(store)
        self.instance = f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        self.link = StoreLink(store, self.spill_dir, self.instance, retries, retry_s)
        self.spill = SpillFile(self.spill_dir, self.instance, spill_max_bytes)
        self.journal = Journal(self.spill_dir, self.instance) if journal else None
        self.journal_errors = 0
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.loop = WriterLoop(self._queue, self.link, self.spill, self.journal, batch_size,
                               buffer_max)
        self._thread = threading.Thread(target=self.loop.run, name="keel-event-writer",
                                        daemon=True)
        self._closed = False
        self._lock = threading.Lock()  # submit from several threads: one journal order
        self._pending: list[Record] = []
        self._handed = 0
        self._mark: Mark = None
        self._handoff_scheduled = False
        self.scrubber = Scrubber()  # for what leaves the process otherwise (error messages)

    @classmethod
    def configured(cls, store: Store, spec: KeelSpec, settings: Settings) -> EventWriter:
        """The app's writer: its settings, keel.yaml's privacy policies, and the secrets
        this process knows masked in records and logs."""
        scrubber = Scrubber.for_process(spec.providers, settings.api_keys)
        policies = {name: Policy.of(f.privacy) for name, f in spec.features.items()}
        writer = cls(store, batch_size=settings.event_batch_size,
                     spill_dir=settings.spill_directory, buffer_max=settings.buffer_max,
                     spill_max_bytes=settings.spill_max_bytes, journal=settings.journal,
                     sanitize=Sanitizer(scrubber, policies),
                     log_scrubbing=LogScrubbing(scrubber))
        writer.scrubber = scrubber
        return writer

    # --- counters -------------------------------------------------------------------

    @property
    def written(self) -> int:
        return self.link.written

    @property
    def buffered(self) -> int:
        """Records in memory, waiting for the store."""
        return self.loop.buffered

    @property
    def spilled(self) -> int:
        return self.loop.spilled

    @property
    def dropped(self) -> int:
        return self.loop.dropped

    @property
    def replayed(self) -> int:
        return self.loop.replayed

    @property
    def spill_path(self) -> Path | None:
        """The spill file being written, or the last one."""
        return self.spill.path or self.spill.last

    @property
    def spill_pending(self) -> int:
        """Records in spill files (ours, and those of processes gone) and in journals of
        processes gone, not in the store yet."""
        return self.loop.spill_pending

    @property
    def queued(self) -> int:
        """Records handed to the writer thread it has not taken yet."""
        return max(0, self._handed - self.loop.taken)

    def health(self) -> dict[str, Any]:
        """The store as the writer sees it: ``up``; ``write_s``, how long the write under
        way has run (a stalled store: a lock, a hung connection); and where records wait."""
        link = self.link
        busy = None if link.busy_since is None else time.monotonic() - link.busy_since
        return {
            "degraded": not link.up or (busy or 0.0) > STALLED_S,
            "up": link.up, "error": link.error, "down_since": link.down_since,
            "write_s": None if busy is None else round(busy, 3),
            "queued": self.queued, "buffered": self.buffered,
            "spill_pending": self.spill_pending,
            "spilled": self.spilled, "dropped": self.dropped, "rejected": link.rejected,
            "replayed": self.replayed, "written": link.written,
            "journal": None if self.journal is None else {"errors": self.journal_errors},
        }

    # --- the event loop side --------------------------------------------------------

    def start(self) -> None:
        if self._log_scrubbing is not None:
            self._log_scrubbing.install()
        self._thread.start()

    def submit(self, event: Record) -> None:
        if self._closed:
            raise RuntimeError("event writer is closed")
        if self._sanitize is not None:
            try:
                event = self._sanitize(event)
            except Exception:  # never fail a call over its record: keep no payload
                log.exception("sanitizing the record of %s failed", event.trace_id)
                event = _without_payloads(event)
        with self._lock:
            if self.journal is not None:
                self._append(event)
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

    def _append(self, record: Record) -> None:
        assert self.journal is not None
        try:
            segment, offset, retired = self.journal.append(encode(record))
        except (OSError, TypeError) as exc:
            self.journal_errors += 1
            if self.journal_errors == 1 or self.journal_errors % 1000 == 0:
                log.error("journal: cannot append (%s); %d records unjournaled so far",
                          exc, self.journal_errors)
            return
        if retired is not None:  # what is pending belongs to the old segment
            self._handoff_locked()
            self._queue.put(Retire(retired))
        self._mark = (segment, offset)

    def _handoff(self) -> None:
        with self._lock:
            self._handoff_locked()

    def _handoff_locked(self) -> None:
        self._handoff_scheduled = False
        if self._pending:
            batch, self._pending = self._pending, []
            self._handed += len(batch)
            self._queue.put(Batch(batch, self._mark))

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until everything submitted before this call is in the store (False after
        ``timeout``, e.g. while the store is down)."""
        self._handoff()
        marker = Flush()
        self._queue.put(marker)
        return marker.done.wait(timeout)

    def close(self, timeout: float = 30.0) -> None:
        if self._closed:
            return
        self._closed = True
        self._handoff()
        self._queue.put(STOP)
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._log_scrubbing is not None:
            self._log_scrubbing.uninstall()


def _without_payloads(record: Record) -> Record:
    return dataclasses.replace(record, input=None, output=None)
