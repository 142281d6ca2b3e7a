"""Records on local disk: the JSONL codec, spill files, and files left for draining.

One line per record: ``{"kind": "event" | "review", "record": {...}}``, the dataclass as
orjson writes it. :func:`decode` builds the record back (Decision and OnFail included)
and skips fields it does not know, so a file written by another Keel version drains.

Files live in one directory (``Settings.spill_directory``), named
``<kind>-<instance>-<n>.jsonl``. The process writing a file holds an exclusive
``flock`` on it; one that nobody holds (its process exited, or was killed) is an
*orphan*, and any process sharing the directory may :func:`claim` it, drain it into the
store and delete it. Draining twice is harmless: the store ignores a trace id it has.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from keel.types import Attempt, Decision, Event, OnFail, ReviewRequest, ValidationResult

Record = Event | ReviewRequest

log = logging.getLogger("keel.record")


def encode(record: Record) -> bytes:
    kind = "event" if isinstance(record, Event) else "review"
    return orjson.dumps({"kind": kind, "record": record}, default=str,
                        option=orjson.OPT_APPEND_NEWLINE)


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def _validation(data: dict[str, Any]) -> ValidationResult:
    data = _known(ValidationResult, data)
    data["on_fail"] = OnFail(data["on_fail"])
    return ValidationResult(**data)


def decode(line: bytes) -> Record:
    """The record of one line; ValueError / KeyError / TypeError when it is not one."""
    data = orjson.loads(line)
    body = dict(data["record"])
    body["validations"] = [_validation(v) for v in body.get("validations") or []]
    if data["kind"] == "event":
        body["decision"] = Decision(body["decision"])
        body["attempts"] = [Attempt(**_known(Attempt, a)) for a in body.get("attempts") or []]
        return Event(**_known(Event, body))
    if data["kind"] == "review":
        return ReviewRequest(**_known(ReviewRequest, body))
    raise ValueError(f"unknown record kind {data['kind']!r}")


def lock(fd: int) -> None:
    """Hold an exclusive ``flock`` on the open file (OSError if another holder has it).
    Locks are per open file: another ``open`` of it in this process is refused too."""
    if sys.platform != "win32":
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (one call for a regular file, in practice)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def open_locked(path: Path) -> int:
    """Open (create) ``path`` for appending and hold an exclusive lock on it."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        lock(fd)
    except OSError:
        os.close(fd)
        raise
    return fd


@dataclass
class Claimed:
    """An orphan file this process holds the lock of while it drains it."""

    path: Path
    fd: int
    offset: int = 0  # where draining resumes
    records: int = 0  # records in it, counted when claimed
    journal: bool = False
    size: int = 0

    def release(self, delete: bool) -> None:
        if delete:
            for path in (self.path, self.path.with_suffix(".pos")):
                path.unlink(missing_ok=True)
        os.close(self.fd)


def claim(directory: Path, kind: str) -> list[Claimed]:
    """The ``kind-*.jsonl`` files in ``directory`` no live process holds, oldest first,
    each locked by us now."""
    try:
        paths = sorted(directory.glob(f"{kind}-*.jsonl"), key=lambda p: p.stat().st_mtime)
    except OSError:
        return []
    out = []
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            lock(fd)
        except OSError:  # a live process writes it
            os.close(fd)
            continue
        offset = read_pos(path.with_suffix(".pos"))
        out.append(Claimed(path, fd, offset, _count_lines(path, offset), kind == "journal",
                           os.fstat(fd).st_size))
    return out


def read_pos(path: Path) -> int:
    try:
        data = path.read_bytes()
    except OSError:
        return 0
    return int.from_bytes(data[:8], "little") if len(data) >= 8 else 0


def _count_lines(path: Path, offset: int) -> int:
    n = 0
    with path.open("rb") as f:
        f.seek(offset)
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
    return n


def read_chunk(path: Path, offset: int, limit: int) -> tuple[list[Record], int]:
    """Up to ``limit`` records from ``offset``, and the offset after them. A line that is
    not a record is logged and skipped; a last line without its newline was never
    finished and ends the file."""
    records: list[Record] = []
    with path.open("rb") as f:
        f.seek(offset)
        while len(records) < limit:
            line = f.readline()
            if not line.endswith(b"\n"):
                break
            offset += len(line)
            try:
                records.append(decode(line))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("%s: skipped a line that is not a record (%s)", path.name, exc)
    return records, offset


class SpillFile:
    """Where records go when the store is down and memory is full: one file at a time,
    locked while this process writes it; at most ``max_bytes`` of them in all."""

    def __init__(self, directory: Path, instance: str, max_bytes: int) -> None:
        self.directory = directory
        self.instance = instance
        self.max_bytes = max_bytes
        self.bytes = 0  # in this process's files not drained yet
        self.path: Path | None = None  # the file being written
        self.last: Path | None = None  # the last one finished
        self.records = 0  # in the file being written
        self._fd: int | None = None
        self._n = 0

    def write(self, records: list[Record]) -> bool:
        """Append the records; False when they could not be (disk, or over max_bytes)."""
        try:
            data = b"".join(encode(r) for r in records)
        except TypeError as exc:
            log.error("cannot spill %d records: %s", len(records), exc)
            return False
        if self.bytes + len(data) > self.max_bytes:
            return False
        try:
            if self._fd is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                self._n += 1
                path = self.directory / f"spill-{self.instance}-{self._n}.jsonl"
                self._fd, self.path = open_locked(path), path
            write_all(self._fd, data)
        except OSError as exc:
            log.error("cannot spill %d records to %s: %s", len(records), self.directory, exc)
            return False
        self.bytes += len(data)
        self.records += len(records)
        return True

    def finish(self) -> Path | None:
        """Close the current file (others may drain it now); its path, if there was one."""
        fd, path = self._fd, self.path
        self._fd, self.path, self.records = None, None, 0
        if fd is not None:
            os.close(fd)
            self.last = path
        return path
