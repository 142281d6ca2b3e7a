"""What drift compares: the columns of an event, and how they are read fast.

A :class:`Column` is an SQL expression over one row of ``events``, or a field of its
``input`` / ``output`` JSON (and, for dataset references, a function of an item's input
and its eval result). :func:`read_events` reads every column of a feature's events in a
time range with **one aggregate query per time slice**: SQLite joins each column into one
string (``group_concat``) inside ``sqlite3_step``, which runs without the GIL, so slices
run in parallel threads, and no Python object is made per row and value. Three things
keep SQLite's share small: the fields of one JSON document come from one multi-path
``json_extract`` (the document is parsed once, and the array is decoded by orjson);
REAL columns are read as scaled integers (SQLite formats integers some 3× faster than
floats); timestamps as integer microseconds. Numeric strings are parsed by
``np.fromstring``; categorical ones are factorised once per distinct value. A slice
whose text does not parse (a separator inside a label, say) is read again row by row.
"""

from __future__ import annotations

import gc
import itertools
import math
import re
import sqlite3
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np
import orjson

from keel.control.drift_tests import Array, FloatArray, IntArray
from keel.errors import InvalidRequest
from keel.store.sqlite import SQLiteStore
from keel.types import JSON

Kind = Literal["numeric", "categorical", "binary", "embedding"]
Group = Literal["input", "output", "decision", "operations"]
# (input, output, decision, confidence) of a dataset item and its eval result -> a value
ItemValue = Callable[[Any, Any, "str | None", "float | None"], Any]

_SEP: Final = "\x1f"  # unit separator between categorical values
_NULL: Final = "\x15"  # stands for SQL NULL in a categorical column
_SLICE_ROWS: Final = 200_000  # rows per query at most (group_concat strings stay small)
_PARALLEL_FROM: Final = 50_000  # fewer rows: one query
_FIELD = re.compile(r"(input|output)\.([A-Za-z0-9_][A-Za-z0-9_.-]{0,127})(?::(numeric|num|categorical|cat))?")
_LANG_MSG: Final = "'\"message\":\"language '''"  # SQL literal: "message":"language '
_LANGUAGE_SQL: Final = (
    "CASE WHEN instr(checks, '\"check\":\"language\",\"passed\":true') THEN 'allowed'"
    f" WHEN instr(checks, {_LANG_MSG}) THEN substr(checks, instr(checks, {_LANG_MSG}) + 21,"
    f" instr(substr(checks, instr(checks, {_LANG_MSG}) + 21, 16), '''') - 1)"
    " WHEN instr(checks, '\"check\":\"language\",\"passed\":false') THEN 'error' END")
# one scan: the character after "passed": is t or f; no pii check: NULL (substr of NULL)
_PII_SQL: Final = ("substr(checks, nullif(instr(checks, '\"check\":\"pii\",\"passed\":'), 0)"
                   " + 23, 1) = 'f'")
_LAST_MESSAGE: Final = "$.messages[#-1].content"


@dataclass(frozen=True, slots=True)
class Column:
    """One thing compared between the reference and each window: an SQL expression
    (``sql`` with ``params``), or the field at JSON ``path`` of the ``doc`` column."""

    name: str
    kind: Kind
    group: Group
    sql: str = ""  # an expression over one row of events; `?` are bound to params
    params: tuple[str, ...] = ()
    doc: Literal["input", "output"] | None = None
    path: str | None = None  # bound as a parameter, never spliced into SQL
    scale: float | None = None  # a REAL read as CAST(x * scale AS INTEGER)
    length: bool = False  # the field's length in characters, not its value
    description: str = ""
    item: ItemValue | None = None  # its value on a dataset item; None: not measured there
    absent: str = "no event has a value"  # the reason given when it is skipped

    @property
    def expr(self) -> tuple[str, tuple[str, ...]]:
        """The SQL expression for this column alone, and its parameters."""
        if self.doc is not None and self.path is not None:
            extract = f"json_extract({self.doc}, ?)"
            return (f"length({extract})" if self.length else extract), (self.path,)
        return self.sql, self.params

    def to_json(self) -> dict[str, JSON]:
        return {"name": self.name, "kind": self.kind, "group": self.group,
                "description": self.description}


def json_path(field_name: str) -> str:
    """``a.b`` -> ``$."a"."b"`` (bound as a parameter, never spliced into SQL)."""
    return "$." + ".".join(f'"{part}"' for part in field_name.split("."))


def _text_of(input: Any, text_field: str | None) -> str | None:
    if not isinstance(input, dict):
        return None
    if text_field is None:
        messages = input.get("messages")
        last = messages[-1] if isinstance(messages, list) and messages else None
        value = last.get("content") if isinstance(last, dict) else None
    else:
        value = _lookup(input, text_field)
    return value if isinstance(value, str) else None


def _lookup(value: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def text_path(text_field: str | None) -> str:
    """The JSON path of an event's input text (chat features: the last message)."""
    return _LAST_MESSAGE if text_field is None else json_path(text_field)


def builtin_columns(text_field: str | None) -> dict[str, Column]:
    """The columns every feature has (some stay empty: no label, no language check)."""
    def text_length(i: Any, o: Any, d: str | None, c: float | None) -> Any:
        t = _text_of(i, text_field)
        return None if t is None else len(t)

    def label(i: Any, o: Any, d: str | None, c: float | None) -> Any:
        return o.get("label") if isinstance(o, dict) else None

    where = "the input text" if text_field else "the last message"
    columns = [
        Column("text_length", "numeric", "input", doc="input", path=text_path(text_field),
               length=True, description=f"characters in {where}", item=text_length,
               absent="no event has an input text"),
        Column("language", "categorical", "input", _LANGUAGE_SQL,
               description="the language check: 'allowed', or the language it refused",
               absent="no language check ran"),
        Column("pii", "binary", "input", _PII_SQL,
               description="share of inputs the PII check flagged", absent="no PII check ran"),
        Column("label", "categorical", "output", doc="output", path="$.label",
               description="the output label", item=label, absent="no output has a label"),
        Column("confidence", "numeric", "output", "confidence", scale=1e12,
               description="the output's confidence", item=lambda i, o, d, c: c,
               absent="no output has a confidence"),
        Column("review", "binary", "decision", "decision = 'review'",
               description="share of calls sent to review",
               item=lambda i, o, d, c: _flag(d, "review")),
        Column("refused", "binary", "decision", "decision = 'refused'",
               description="share of calls refused", item=lambda i, o, d, c: _flag(d, "refused")),
        Column("latency_ms", "numeric", "operations", "latency_ms", scale=1e6,
               description="the call's latency"),
        Column("cost_usd", "numeric", "operations", "cost_usd", scale=1e12,
               description="the call's cost", absent="no event has a known cost"),
        Column("input_tokens", "numeric", "operations", "input_tokens", description="input tokens"),
        Column("output_tokens", "numeric", "operations", "output_tokens",
               description="output tokens"),
    ]
    return {c.name: c for c in columns}


def _flag(decision: str | None, value: str) -> int | None:
    return None if decision is None else int(decision == value)


def field_column(spec: str, kind: Kind) -> Column:
    """A column for ``input.FIELD`` / ``output.FIELD`` (dotted paths into the JSON)."""
    match = _FIELD.fullmatch(spec)
    if match is None:
        raise InvalidRequest(f"bad column {spec!r}: expected input.FIELD or output.FIELD, "
                             "optionally with :numeric or :categorical", param="columns")
    side, name = match[1], match[2]

    def value(i: Any, o: Any, d: str | None, c: float | None) -> Any:
        return _lookup(i if side == "input" else o, name)

    doc: Literal["input", "output"] = "input" if side == "input" else "output"
    return Column(f"{side}.{name}", kind, doc, doc=doc, path=json_path(name),
                  description=f"the {side} field {name}", item=value,
                  absent=f"no {side} has a field {name}")


def field_kind(spec: str) -> Kind | None:
    """The kind a column spec asks for (``:numeric``/``:categorical``), else None."""
    match = _FIELD.fullmatch(spec)
    if match is None or match[3] is None:
        return None
    return "numeric" if match[3].startswith("num") else "categorical"


def is_field(spec: str) -> bool:
    return _FIELD.fullmatch(spec) is not None


def infer_kind(samples: Iterable[Any]) -> Kind:
    """Numeric when every sampled value is a number and there are more than 10 distinct
    ones; categorical otherwise."""
    values = [v for v in samples if v is not None]
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    return "numeric" if values and numbers and len(set(values)) > 10 else "categorical"


# --- frames ----------------------------------------------------------------------------


@dataclass(slots=True)
class Frame:
    """Column values of some events (or dataset items), row-aligned. Numeric columns are
    float64 with NaN for missing; categorical and binary ones are int64 codes into
    ``categories`` (−1: missing). ``t`` is seconds since the read's start."""

    t: FloatArray
    values: dict[str, Array] = field(default_factory=dict)
    categories: dict[str, list[str]] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.t.size)

    def take(self, mask: np.ndarray) -> Frame:
        return Frame(self.t[mask], {k: v[mask] for k, v in self.values.items()},
                     dict(self.categories))

    def has_values(self, name: str) -> bool:
        v = self.values.get(name)
        if v is None:
            return False
        return bool((v >= 0).any()) if name in self.categories else bool((~np.isnan(v)).any())


BINARY: Final = ["0", "1"]


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
    """``n`` numbers from SQLite's comma-joined text; None when it does not parse."""
    if n == 0:
        return np.empty(0)
    if text is None:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            out: FloatArray = np.fromstring(text, dtype=np.float64, sep=",")
        except (DeprecationWarning, ValueError):
            return None
    return out if out.size == n else None


def factorize(values: Sequence[Any]) -> tuple[IntArray, list[str]]:
    """Codes (−1 for None) and the categories as strings, in order of first appearance."""
    try:
        distinct = dict.fromkeys(values)
        plain = all(v is None or type(v) is str for v in distinct)
    except TypeError:  # lists or objects among the values
        plain = False
    if not plain:
        values = [None if v is None else _category(v) for v in values]
        distinct = dict.fromkeys(values)
    categories: list[str] = [v for v in distinct if v is not None]
    index: dict[Any, int] = {c: i for i, c in enumerate(categories)}
    index[None] = -1
    codes = np.fromiter(map(index.__getitem__, values), dtype=np.int64, count=len(values))
    return codes, categories


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


def _binary_codes(values: FloatArray) -> IntArray:
    codes = np.where(np.isnan(values), -1, values != 0)
    return codes.astype(np.int64)


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
            select.append(f"group_concat(coalesce(CAST(({sql}) * {c.scale!r} AS INTEGER), 'nan'), ',')")
        else:
            select.append(f"group_concat(coalesce({sql}, 'nan'), ',')")
        params.extend(args)
    sql = f"SELECT {', '.join(select)} FROM events WHERE feature = ? AND ts >= ? AND ts < ?"
    return sql, params


def _read_slice(store: SQLiteStore, feature: str, columns: Sequence[Column], lo: float,
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
            _set(frame, c, [])
        return True
    try:
        rows = orjson.loads(text or "")
    except orjson.JSONDecodeError:
        return False
    if not isinstance(rows, list) or len(rows) != n:
        return False
    for c, values in zip(columns, zip(*rows, strict=True), strict=True):
        _set(frame, c, [len(v) if type(v) is str else None for v in values] if c.length else values)
    return True


def _read_rows(conn: sqlite3.Connection, feature: str, columns: Sequence[Column], lo: float,
               hi: float, base: float) -> Frame:
    exprs = [c.expr for c in columns]
    select = ", ".join(["ts - ?", *(sql for sql, _ in exprs)])
    params = [p for _, args in exprs for p in args]
    rows = conn.execute(f"SELECT {select} FROM events WHERE feature = ? AND ts >= ? AND ts < ?",
                        (base, *params, feature, lo, hi)).fetchall()
    cols = list(zip(*rows, strict=True)) if rows else [() for _ in range(len(columns) + 1)]
    frame = Frame(np.asarray(cols[0], dtype=np.float64))
    for c, values in zip(columns, cols[1:], strict=True):
        _set(frame, c, values)
    return frame


def _number(value: Any) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return math.nan


def _set(frame: Frame, column: Column, values: Sequence[Any]) -> None:
    """Store one column's Python values (row reads, dataset items) in ``frame``."""
    if column.kind == "categorical":
        frame.values[column.name], frame.categories[column.name] = factorize(values)
        return
    try:  # numbers and None (-> NaN) only
        numbers = np.array(values, dtype=np.float64)
        if numbers.shape != (len(values),):
            raise ValueError
    except (TypeError, ValueError):
        numbers = np.fromiter(map(_number, values), dtype=np.float64, count=len(values))
    if column.kind == "binary":
        frame.values[column.name], frame.categories[column.name] = _binary_codes(numbers), BINARY
    else:
        frame.values[column.name] = numbers


def _category(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


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
        _set(frame, c, [])
    return frame


def align(a: Frame, b: Frame, name: str) -> tuple[IntArray, IntArray, list[str]]:
    """Both frames' codes of categorical column ``name`` over one category list."""
    merged: dict[str, int] = {}
    luts = []
    for frame in (a, b):
        cats = frame.categories.get(name, [])
        luts.append(np.array([merged.setdefault(x, len(merged)) for x in cats] + [-1], dtype=np.int64))
    return luts[0][a.values[name]], luts[1][b.values[name]], list(merged)


def read_events(store: SQLiteStore, feature: str, columns: Sequence[Column], start: float,
                end: float, *, threads: int = 2) -> Frame:
    """Every column of ``feature``'s events with ``start <= ts < end``; ``t`` is
    ``ts - start``. Equal time slices are read by ``threads`` threads at once."""
    if end <= start:
        return empty_frame(columns)
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


def sample_field(store: SQLiteStore, feature: str, column: Column, start: float, end: float,
                 limit: int = 500) -> list[Any]:
    """Up to ``limit`` values of one column (the newest first): to infer its kind."""
    sql, params = column.expr
    conn = store.connect()
    try:
        rows = conn.execute(
            f"SELECT {sql} FROM events WHERE feature = ? AND ts >= ? AND ts < ?"
            " ORDER BY ts DESC LIMIT ?", (*params, feature, start, end, limit)).fetchall()
    finally:
        conn.close()
    return [r[0] for r in rows]


def read_texts(store: SQLiteStore, feature: str, text_field: str | None, start: float,
               end: float) -> list[str]:
    """The input texts of ``feature``'s events in ``[start, end)``, oldest first."""
    conn = store.connect()
    try:
        rows = conn.execute(
            "SELECT json_extract(input, ?) FROM events WHERE feature = ? AND ts >= ? AND ts < ?"
            " ORDER BY ts, rowid", (text_path(text_field), feature, start, end)).fetchall()
    finally:
        conn.close()
    return [r[0] for r in rows if isinstance(r[0], str) and r[0]]


@dataclass(frozen=True, slots=True)
class ItemRow:
    """A dataset item as a reference row: its input and, when the champion was evaluated
    on it, what it answered."""

    input: JSON
    output: JSON = None
    decision: str | None = None
    confidence: float | None = None


def items_frame(rows: Sequence[ItemRow], columns: Sequence[Column]) -> Frame:
    """The reference frame of dataset items (columns without ``item`` are left out)."""
    frame = Frame(np.full(len(rows), np.nan))
    for c in columns:
        if c.item is not None:
            fn = c.item
            _set(frame, c, [fn(r.input, r.output, r.decision, r.confidence) for r in rows])
    return frame


def item_texts(rows: Sequence[ItemRow], text_field: str | None) -> list[str]:
    return [t for r in rows if (t := _text_of(r.input, text_field))]


def resolve_columns(names: Sequence[str] | None, text_field: str | None,
                    kinds: Mapping[str, Kind] | None = None) -> list[Column]:
    """Columns by name (None: every built-in one). ``input.FIELD``/``output.FIELD`` take
    their kind from a ``:numeric``/``:categorical`` suffix or from ``kinds``."""
    builtin = builtin_columns(text_field)
    if names is None:
        return list(builtin.values())
    out: list[Column] = []
    for name in names:
        if name in builtin:
            out.append(builtin[name])
        elif _FIELD.fullmatch(name):
            kind = field_kind(name) or (kinds or {}).get(name, "categorical")
            out.append(field_column(name, kind))
        elif name != "embedding":
            raise InvalidRequest(
                f"unknown column {name!r}; columns: {', '.join(builtin)}, embedding, "
                "input.FIELD, output.FIELD (optionally :numeric or :categorical)", param="columns")
    seen: set[str] = set()
    unique = []
    for c in out:
        if c.name not in seen:
            seen.add(c.name)
            unique.append(c)
    return unique
