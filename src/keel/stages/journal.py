"""The write-ahead journal: every record on local disk before its call returns.

:meth:`Journal.append` is one ``os.write`` of the record's JSON line to a file opened
with ``O_APPEND``, on the event loop, before the caller gets the answer. Once ``write``
returns the bytes are in the kernel's page cache: a process killed at any point after
(``kill -9``, the OOM killer) loses nothing. Not ``fsync``'d: a power cut or a kernel
crash may lose the last seconds (docs/resilience.md).

The event writer commits the records to the store in order and, after each commit,
records how far the store has them: the journal file's offset, in a sidecar ``.pos``
file (one ``pwrite`` of 8 bytes). A segment grows to ``rotate_bytes``, then the next
append opens a new one; an old segment is deleted as soon as the store (or a spill
file) has all its records. A segment whose process died keeps its lock-free file and
its ``.pos``: at start-up :func:`keel.stages.spill.claim` finds it and the writer
replays it from ``.pos`` into the store (a trace id stored already is ignored), then
deletes it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from keel.stages.spill import open_locked, write_all

log = logging.getLogger("keel.record")

ROTATE_BYTES = 16 << 20


@dataclass(eq=False)
class Segment:
    path: Path
    fd: int
    pos_fd: int
    size: int = 0
    durable: int = 0  # the offset the store has everything before
    # a record of it was neither stored nor spilled: keep the file for the next start
    stuck: bool = False
    closed: bool = field(default=False)


class Journal:
    def __init__(self, directory: Path, instance: str, rotate_bytes: int = ROTATE_BYTES) -> None:
        self.directory = directory
        self.instance = instance
        self.rotate_bytes = rotate_bytes
        self.current: Segment | None = None
        self._n = 0

    def _open_segment(self) -> Segment:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._n += 1
        path = self.directory / f"journal-{self.instance}-{self._n}.jsonl"
        fd = open_locked(path)
        try:
            pos_fd = os.open(path.with_suffix(".pos"), os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError:
            os.close(fd)
            raise
        return Segment(path, fd, pos_fd)

    def append(self, line: bytes) -> tuple[Segment, int, Segment | None]:
        """Write one record's line: (its segment, the offset after it, the segment this
        append rotated away from, if it did). Raises OSError (disk full, ...)."""
        retired = None
        current = self.current
        if current is None or current.size >= self.rotate_bytes:
            retired, current = current, self._open_segment()
            self.current = current
        write_all(current.fd, line)
        current.size += len(line)
        return current, current.size, retired

    @staticmethod
    def mark_durable(segment: Segment, offset: int) -> None:
        """The store has every record of ``segment`` before ``offset`` (writer thread)."""
        if segment.stuck or segment.closed or offset <= segment.durable:
            return
        try:
            os.pwrite(segment.pos_fd, offset.to_bytes(8, "little"), 0)
        except OSError as exc:
            log.warning("journal %s: cannot record progress: %s", segment.path.name, exc)
            return
        segment.durable = offset

    @staticmethod
    def retire(segment: Segment) -> None:
        """Close a segment; delete it unless a record of it may still be needed."""
        if segment.closed:
            return
        segment.closed = True
        os.close(segment.pos_fd)
        os.close(segment.fd)  # the lock goes with it: a stuck segment is an orphan now
        if not segment.stuck:
            segment.path.unlink(missing_ok=True)
            segment.path.with_suffix(".pos").unlink(missing_ok=True)

    def close(self, durable: bool) -> None:
        """At shutdown: the current segment goes if everything in it is ``durable``."""
        segment, self.current = self.current, None
        if segment is not None:
            if not durable:
                segment.stuck = True
            self.retire(segment)
