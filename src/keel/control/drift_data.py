"""What drift compares: the columns of an event, and the frames that hold their values.

A :class:`Column` is an SQL expression over one row of ``events``, or a field of its
``input`` / ``output`` JSON, and, for dataset references, a function of an item's input
and its eval result (:func:`items_frame`). A :class:`Frame` holds the values of many rows
column by column: numbers as float64 with NaN, categories as int64 codes.
:mod:`keel.control.drift_read` fills frames from the store, fast.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np
import orjson

from keel.control.drift_tests import Array, FloatArray, IntArray
from keel.errors import InvalidRequest
from keel.types import JSON

Kind = Literal["numeric", "categorical", "binary", "embedding"]
Group = Literal["input", "output", "decision", "operations"]
# (input, output, decision, confidence) of a dataset item and its eval result -> a value
ItemValue = Callable[[Any, Any, "str | None", "float | None"], Any]

_FIELD = re.compile(r"(input|output)\.([A-Za-z0-9_][A-Za-z0-9_.-]{0,127})(?::(numeric|num|categorical|cat))?")
_LANG_MSG: Final = "'\"message\":\"language '''"  # SQL literal: "message":"language '
_LANGUAGE_SQL: Final = (
    "CASE WHEN instr(checks, '\"check\":\"language\",\"passed\":true') > 0 THEN 'allowed'"
    f" WHEN instr(checks, {_LANG_MSG}) > 0 THEN substr(checks, instr(checks, {_LANG_MSG}) + 21,"
    f" instr(substr(checks, instr(checks, {_LANG_MSG}) + 21, 16), '''') - 1)"
    " WHEN instr(checks, '\"check\":\"language\",\"passed\":false') > 0 THEN 'error' END")
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

    def expr_on(self, dialect: str) -> tuple[str, tuple[str, ...]]:
        """:attr:`expr` for the store's engine. PostgreSQL reads a JSON field with an
        SQL/JSON path (``[#-1]``, SQLite's last element, is ``[last]`` there), finds
        text with ``strpos`` and reads a comparison as 0/1."""
        if dialect != "postgresql":
            return self.expr
        if self.doc is not None and self.path is not None:
            extract = f"jsonb_path_query_first({self.doc}::jsonb, CAST(? AS jsonpath))"
            path = self.path.replace("[#-1]", "[last]")
            return (f"length({extract} #>> '{{}}')" if self.length else extract), (path,)
        sql = self.sql.replace("instr(", "strpos(")
        if self.kind == "binary":
            sql = f"CAST(({sql}) AS INTEGER)"
        return sql, self.params

    def to_json(self) -> dict[str, JSON]:
        return {"name": self.name, "kind": self.kind, "group": self.group,
                "description": self.description}


def plain(value: Any) -> Any:
    """A JSON field's value as SQLite's json_extract gives it: arrays and objects as
    their JSON text (PostgreSQL's jsonb arrives as Python lists and dicts)."""
    if isinstance(value, list | dict):
        return orjson.dumps(value).decode()
    return value


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


def binary_codes(values: FloatArray) -> IntArray:
    codes = np.where(np.isnan(values), -1, values != 0)
    return codes.astype(np.int64)


def _number(value: Any) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return math.nan


def set_values(frame: Frame, column: Column, values: Sequence[Any]) -> None:
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
        frame.values[column.name], frame.categories[column.name] = binary_codes(numbers), BINARY
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


def align(a: Frame, b: Frame, name: str) -> tuple[IntArray, IntArray, list[str]]:
    """Both frames' codes of categorical column ``name`` over one category list."""
    merged: dict[str, int] = {}
    luts = []
    for frame in (a, b):
        cats = frame.categories.get(name, [])
        luts.append(np.array([merged.setdefault(x, len(merged)) for x in cats] + [-1], dtype=np.int64))
    return luts[0][a.values[name]], luts[1][b.values[name]], list(merged)


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
            set_values(frame, c, [fn(r.input, r.output, r.decision, r.confidence) for r in rows])
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
