"""Reading drift's columns from the events table, fast.

:func:`read_events` reads every column of a feature's events in a time range with **one
aggregate query per time slice** of 50,000 rows: SQLite joins each column into one
string (``group_concat``) inside ``sqlite3_step``, which runs without the GIL (slices
run in threads), and Python decodes whole columns, never rows:

* the fields of one JSON document come from one multi-path ``json_extract`` (SQLite
  parses the document once; a field on its own would cost a parse each);
* REAL columns are read as scaled integers and timestamps as integer microseconds
  (SQLite formats integers some 3× faster than floats);
* numbers are decoded by orjson (twice as fast as ``np.fromstring``), binary columns
  are one digit per row, categorical values are factorised once per distinct value.

A slice whose text does not parse (a label holding the separator, text in a numeric
field) is read again row by row. PostgreSQL is read row by row, with each column's
expression for that engine (:meth:`Column.expr_on`).
"""

from __future__ import annotations

import gc
import itertools
import math
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import orjson

from keel.control.drift_data import (
    BINARY,
    Column,
    Frame,
    plain,
    set_values,
    text_path,
)
from keel.control.drift_tests import FloatArray, IntArray
from keel.store.db import Connection, Store

_SEP: Final = "\x1f"  # unit separator between categorical values
_NULL: Final = "\x15"  # stands for SQL NULL in a categorical column
_SLICE_ROWS: Final = 50_000  # rows per query at most: small strings, few page faults
_PARALLEL_FROM: Final = 50_000  # fewer rows: one query


class _GcPause:
    """Keeps the cyclic GC off while any thread decodes a slice. Decoding makes ~10⁵
    small lists at once; with the GC on, the collections they trigger doubled the
    decoding time. The GC's own state is restored when the last thread is done."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._was_enabled = False

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._holders == 0:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._holders += 1
        try:
            yield
        finally:
            with self._lock:
                self._holders -= 1
                if self._holders == 0 and self._was_enabled:
                    gc.enable()


_gc_paused = _GcPause()


def _floats(text: str | None, n: int) -> FloatArray | None:
    """``n`` numbers from SQLite's comma-joined text (``null``: missing -> NaN); None when
    it does not parse. orjson reads numbers some 2× faster than ``np.fromstring``."""
    if n == 0:
        return np.empty(0)
    if text is None:
        return None
    try:
        out: FloatArray = np.array(orjson.loads(f"[{text}]"), dtype=np.float64)
    except (orjson.JSONDecodeError, TypeError, ValueError):  # text among the numbers
        return None
    return out if out.shape == (n,) else None


def _codes(text: str | None, n: int) -> tuple[IntArray, list[str]] | None:
    if n == 0:
        return np.empty(0, dtype=np.int64), []
    if text is None:
        return None
    parts = text.split(_SEP)
    if len(parts) != n:
        return None
    categories = [v for v in dict.fromkeys(parts) if v != _NULL]
    index = {c: i for i, c in enumerate(categories)}
    index[_NULL] = -1
    return np.fromiter(map(index.__getitem__, parts), dtype=np.int64, count=n), categories


def _digits(text: str | None, n: int) -> IntArray | None:
    """Binary codes from one digit per row (2: missing -> -1)."""
    if n == 0:
        return np.empty(0, dtype=np.int64)
    if text is None or len(text) != n:
        return None
    codes = np.frombuffer(text.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    codes[codes == 2] = -1
    return codes if bool(((codes >= -1) & (codes <= 1)).all()) else None


@dataclass(frozen=True, slots=True)
class _Part:
    """One result column of a slice query: a plain column, or a packed JSON document."""

    columns: tuple[Column, ...]
    packed: bool


def _layout(columns: Sequence[Column]) -> list[_Part]:
    """Fields of the same document are packed into one multi-path json_extract."""
    by_doc: dict[str, list[Column]] = {}
    for c in columns:
        if c.doc is not None and c.path is not None:
            by_doc.setdefault(c.doc, []).append(c)
    parts = []
    for c in columns:
        fields = by_doc.get(c.doc or "", [])
        if len(fields) < 2:
            parts.append(_Part((c,), False))
        elif c is fields[0]:
            parts.append(_Part(tuple(fields), True))
    return parts


def _slice_query(parts: Sequence[_Part]) -> tuple[str, list[str]]:
    select = ["count(*)", "group_concat(CAST((ts - ?) * 1000000 AS INTEGER), ',')"]
    params: list[str] = []
    for part in parts:
        c = part.columns[0]
        if part.packed:
            paths = ", ".join("?" for _ in part.columns)
            nulls = "[" + ",".join("null" for _ in part.columns) + "]"
            select.append(f"'[' || group_concat(coalesce(json_extract({c.doc}, {paths}),"
                          f" '{nulls}'), ',') || ']'")
            params.extend(str(f.path) for f in part.columns)
            continue
        sql, args = c.expr
        if c.kind == "binary":  # one digit per row: 0, 1, or 2 for missing
            select.append(f"group_concat(coalesce(({sql}) != 0, 2), '')")
        elif c.kind == "categorical":
            select.append(f"group_concat(coalesce({sql}, char(21)), char(31))")
        elif c.scale is not None:
            select.append(f"group_concat(coalesce(CAST(({sql}) * {c.scale!r} AS INTEGER), 'null'), ',')")
        else:
            select.append(f"group_concat(coalesce({sql}, 'null'), ',')")
        params.extend(args)
    sql = f"SELECT {', '.join(select)} FROM events WHERE feature = ? AND ts >= ? AND ts < ?"
    return sql, params


def _read_slice(store: Store, feature: str, columns: Sequence[Column], lo: float,
                hi: float, base: float) -> Frame:
    parts = _layout(columns)
    sql, params = _slice_query(parts)
    conn = store.connect()
    try:
        conn.execute("PRAGMA mmap_size = 268435456")
        row = conn.execute(sql, (base, *params, feature, lo, hi)).fetchone()
        with _gc_paused():
            frame = _parse(row, int(row[0]), parts)
        if frame is None:  # text that does not parse: read this slice row by row
            frame = _read_rows(conn, feature, columns, lo, hi, base)
    finally:
        conn.close()
    return frame


def _parse(row: Sequence[Any], n: int, parts: Sequence[_Part]) -> Frame | None:
    micros = _floats(row[1], n)
    if micros is None:
        return None
    frame = Frame(micros / 1e6)
    for part, text in zip(parts, row[2:], strict=True):
        if part.packed:
            if not _unpack(frame, part.columns, text, n):
                return None
            continue
        c = part.columns[0]
        if c.kind == "categorical":
            coded = _codes(text, n)
            if coded is None:
                return None
            frame.values[c.name], frame.categories[c.name] = coded
            continue
        if c.kind == "binary":
            digits = _digits(text, n)
            if digits is None:
                return None
            frame.values[c.name], frame.categories[c.name] = digits, BINARY
            continue
        values = _floats(text, n)
        if values is None:
            return None
        frame.values[c.name] = values if c.scale is None else values / c.scale
    return frame


def _unpack(frame: Frame, columns: Sequence[Column], text: str | None, n: int) -> bool:
    """A packed document's fields: a JSON array of per-row arrays, one value per column."""
    if n == 0:
        for c in columns:
            set_values(frame, c, [])
        return True
    try:
        rows = orjson.loads(text or "")
    except orjson.JSONDecodeError:
        return False
    if not isinstance(rows, list) or len(rows) != n:
        return False
    for c, values in zip(columns, zip(*rows, strict=True), strict=True):
        if c.length:
            frame.values[c.name] = _lengths(values)
        else:
            set_values(frame, c, values)
    return True


def _lengths(values: Sequence[Any]) -> FloatArray:
    """Lengths of texts (NaN where a value is not one)."""
    return np.array([len(v) if type(v) is str else None for v in values], dtype=np.float64)


def _read_rows(conn: Connection, feature: str, columns: Sequence[Column], lo: float,
               hi: float, base: float, dialect: str = "sqlite") -> Frame:
    exprs = [c.expr_on(dialect) for c in columns]
    select = ", ".join(["ts - ?", *(sql for sql, _ in exprs)])
    params = [p for _, args in exprs for p in args]
    rows = conn.execute(f"SELECT {select} FROM events WHERE feature = ? AND ts >= ? AND ts < ?",
                        (base, *params, feature, lo, hi)).fetchall()
    cols = list(zip(*rows, strict=True)) if rows else [() for _ in range(len(columns) + 1)]
    frame = Frame(np.asarray(cols[0], dtype=np.float64))
    for c, values in zip(columns, cols[1:], strict=True):
        set_values(frame, c, values if dialect == "sqlite" else [plain(v) for v in values])
    return frame


def concat(frames: Sequence[Frame], columns: Sequence[Column]) -> Frame:
    """Frames of the same columns, one after the other (categories merged)."""
    if len(frames) == 1:
        return frames[0]
    out = Frame(np.concatenate([f.t for f in frames]) if frames else np.empty(0))
    for c in columns:
        if c.kind == "numeric":
            out.values[c.name] = np.concatenate([f.values[c.name] for f in frames])
            continue
        merged: dict[str, int] = {}
        parts = []
        for f in frames:
            cats = f.categories[c.name]
            lut = np.array([merged.setdefault(x, len(merged)) for x in cats] + [-1], dtype=np.int64)
            parts.append(lut[f.values[c.name]])  # code -1 picks the trailing -1
        out.values[c.name] = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
        out.categories[c.name] = list(merged)
    return out


def empty_frame(columns: Sequence[Column]) -> Frame:
    frame = Frame(np.empty(0))
    for c in columns:
        set_values(frame, c, [])
    return frame


def read_events(store: Store, feature: str, columns: Sequence[Column], start: float,
                end: float, *, threads: int = 2) -> Frame:
    """Every column of ``feature``'s events with ``start <= ts < end``; ``t`` is
    ``ts - start``. Equal time slices are read by ``threads`` threads at once."""
    if end <= start:
        return empty_frame(columns)
    if store.dialect != "sqlite":  # the fast path is SQLite's (group_concat, json_extract)
        with store.connection() as conn:
            return _read_rows(conn, feature, columns, start, end, start, store.dialect)
    conn = store.connect()
    try:
        n = conn.execute("SELECT count(*) FROM events WHERE feature = ? AND ts >= ? AND ts < ?",
                         (feature, start, end)).fetchone()[0]
    finally:
        conn.close()
    slices = 1 if n < _PARALLEL_FROM else max(2 * threads, math.ceil(n / _SLICE_ROWS))
    bounds = [start + (end - start) * i / slices for i in range(slices)] + [end]
    if threads <= 1 or slices == 1:
        frames = [_read_slice(store, feature, columns, lo, hi, start)
                  for lo, hi in itertools.pairwise(bounds)]
    else:
        with ThreadPoolExecutor(threads, "keel-drift-read") as pool:
            frames = list(pool.map(lambda b: _read_slice(store, feature, columns, b[0], b[1], start),
                                   itertools.pairwise(bounds)))
    return concat(frames, columns)


def sample_field(store: Store, feature: str, column: Column, start: float, end: float,
                 limit: int = 500) -> list[Any]:
    """Up to ``limit`` values of one column (the newest first): to infer its kind."""
    sql, params = column.expr_on(store.dialect)
    conn = store.connect()
    try:
        rows = conn.execute(
            f"SELECT {sql} FROM events WHERE feature = ? AND ts >= ? AND ts < ?"
            " ORDER BY ts DESC LIMIT ?", (*params, feature, start, end, limit)).fetchall()
    finally:
        conn.close()
    return [plain(r[0]) for r in rows]


def read_texts(store: Store, feature: str, text_field: str | None, start: float,
               end: float) -> list[str]:
    """The input texts of ``feature``'s events in ``[start, end)``, oldest first."""
    text = Column("text", "categorical", "input", doc="input", path=text_path(text_field))
    sql, params = text.expr_on(store.dialect)
    with store.connection() as conn:
        rows = conn.execute(
            f"SELECT {sql} FROM events WHERE feature = ? AND ts >= ? AND ts < ?"
            " ORDER BY ts, trace_id", (*params, feature, start, end)).fetchall()
    return [r[0] for r in rows if isinstance(r[0], str) and r[0]]
