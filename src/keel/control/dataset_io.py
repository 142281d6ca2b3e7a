"""Dataset items in files: JSONL, CSV and Parquet, read and written.

Reading maps each record (a JSONL object, a CSV or Parquet row) to an :class:`Item`:

==========  ==================================================================================
input       the ``input`` field (an object; JSON text in a CSV cell), else
            ``{"text": <text column>}`` (``text_column``, default ``text``)
expected    the ``expected`` field (JSON text in a CSV cell), else ``{"label": <label column>}``
            (``label_column``, default ``label`` when there is one), else none (unlabelled)
metadata    the ``metadata`` field, plus every other field or column (empty cells skipped)
provenance  the ``provenance`` field, kept as is, else ``{"source": "import", "file": <name>,
            "line": n}`` (``"row": n`` in Parquet)
split       the ``split`` field, else ``ReadOptions.split``, else none (the commit's policy)
==========  ==================================================================================

An ``item_hash`` field is ignored: hashes are always computed from the content. Files
Keel writes carry every field (CSV and Parquet as JSON text), so exporting a version and
importing the file gives the same items, splits and digest.

Errors are :class:`~keel.errors.InvalidRequest` naming the file and the line (or row);
:func:`read_items` reads the whole file before returning, so a caller commits all or nothing.
"""

from __future__ import annotations

import csv
import importlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import orjson

from keel.control.datasets import SPLIT_NAME, Item
from keel.errors import ConfigError, InvalidRequest

Format = Literal["jsonl", "csv", "parquet"]
Progress = Callable[[int, int], None]  # (done, total): bytes when reading JSONL or CSV, else rows
FORMATS: dict[str, Format] = {"jsonl": "jsonl", "csv": "csv", "parquet": "parquet"}
SUFFIXES: dict[str, Format] = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv",
                               ".parquet": "parquet", ".pq": "parquet"}
_EVERY = 1000  # records between progress reports
_BATCH = 4096  # Parquet rows per batch


@dataclass(frozen=True, slots=True)
class ReadOptions:
    text_column: str = "text"
    label_column: str | None = None  # None: ``label`` when the file has it
    split: str = ""  # for records without a split; "" leaves it to the commit's policy


def detect_format(path: Path, format: str = "auto") -> Format:
    """``format``, or the one ``path``'s extension names when it is ``auto``."""
    if format == "auto":
        found = SUFFIXES.get(path.suffix.lower())
        if found is None:
            raise InvalidRequest(f"{path}: cannot tell the format from the extension "
                                 f"{path.suffix or '(none)'!r}; pass --format jsonl, csv or parquet")
        return found
    if format not in FORMATS:
        raise InvalidRequest(f"unknown format {format!r}: auto, jsonl, csv or parquet")
    return FORMATS[format]


def read_items(path: Path, format: str = "auto", options: ReadOptions | None = None,
               progress: Progress | None = None) -> list[Item]:
    """Every item of the file at ``path``; an error on the first malformed record or an empty file."""
    options = options or ReadOptions()
    fmt = detect_format(path, format)
    if options.split and not SPLIT_NAME.fullmatch(options.split):
        raise InvalidRequest(f"bad split name {options.split!r}: [a-z][a-z0-9_-]*")
    if not path.exists():
        raise InvalidRequest(f"{path}: no such file")
    if not path.is_file():
        raise InvalidRequest(f"{path}: not a file")
    reader = {"jsonl": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet}[fmt]
    try:
        items = list(reader(path, options, progress))
    except OSError as exc:
        raise InvalidRequest(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not items:
        raise InvalidRequest(f"{path}: the file has no items")
    return items


def write_items(items: Sequence[Item], path: Path, format: str = "auto",
                progress: Progress | None = None) -> int:
    """Write ``items`` to ``path`` (replaced whole, never half-written); returns how many."""
    fmt = detect_format(path, format)
    if not path.parent.is_dir():
        raise InvalidRequest(f"{path.parent}: no such directory")
    writer = {"jsonl": _write_jsonl, "csv": _write_csv, "parquet": _write_parquet}[fmt]
    partial = path.with_name(f".{path.name}.partial")
    try:
        writer(items, partial, progress or _silent)
        os.replace(partial, path)
    except OSError as exc:
        raise InvalidRequest(f"{path}: cannot write ({exc.strerror or exc})") from None
    finally:
        partial.unlink(missing_ok=True)
    return len(items)


# --- reading --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Where:
    path: Path
    unit: Literal["line", "row"]
    number: int

    def error(self, message: str) -> InvalidRequest:
        return InvalidRequest(f"{self.path} {self.unit} {self.number}: {message}", param="file")

    def provenance(self) -> dict[str, Any]:
        return {"source": "import", "file": self.path.name, self.unit: self.number}


def _read_jsonl(path: Path, options: ReadOptions, progress: Progress | None) -> Iterator[Item]:
    total = path.stat().st_size
    done = 0
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            done += len(raw)
            if progress is not None and number % _EVERY == 0:
                progress(done, total)
            line = raw.removeprefix(b"\xef\xbb\xbf") if number == 1 else raw
            if not line.strip():
                continue
            where = _Where(path, "line", number)
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise where.error(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(record, dict):
                raise where.error(f"expected a JSON object, not {_kind(record)}")
            if options.label_column is not None and options.label_column not in record:
                raise where.error(f"no field {options.label_column!r} (the label column)")
            yield _item(record, where, options, options.label_column or "label", tabular=False)
    if progress is not None:
        progress(total, total)


def _read_csv(path: Path, options: ReadOptions, progress: Progress | None) -> Iterator[Item]:
    total = path.stat().st_size
    done = [0]
    with path.open("rb") as f:
        reader = csv.reader(_text_lines(f, path, done))
        try:
            header = [name.strip() for name in next(reader)]
        except StopIteration:
            return
        except csv.Error as exc:
            raise InvalidRequest(f"{path} line {reader.line_num}: {exc}") from None
        label = _check_columns(header, options, path)
        start = reader.line_num + 1
        count = 0
        while True:
            where = _Where(path, "line", start)
            try:
                row = next(reader, None)
            except csv.Error as exc:
                raise where.error(str(exc)) from None
            if row is None:
                break
            start = reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise where.error(f"{len(row)} fields, but the header has {len(header)}")
            yield _item(dict(zip(header, row, strict=True)), where, options, label, tabular=True)
            count += 1
            if progress is not None and count % _EVERY == 0:
                progress(done[0], total)
    if progress is not None:
        progress(total, total)


def _text_lines(f: BinaryIO, path: Path, done: list[int]) -> Iterator[str]:
    for number, raw in enumerate(f, 1):
        done[0] += len(raw)
        try:
            yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest(f"{path} line {number}: not UTF-8 text", param="file") from None


def _read_parquet(path: Path, options: ReadOptions, progress: Progress | None) -> Iterator[Item]:
    pa, pq = _pyarrow()
    failures = (pa.ArrowException, ValueError)
    try:
        file = pq.ParquetFile(path)
        header = list(file.schema_arrow.names)
        total = int(file.metadata.num_rows)
        batches = file.iter_batches(batch_size=_BATCH)
    except failures as exc:
        raise InvalidRequest(f"{path}: not a readable Parquet file ({exc})") from None
    label = _check_columns(header, options, path)
    row = 0
    while True:
        try:
            batch = next(batches, None)
            records = [] if batch is None else batch.to_pylist()
        except failures as exc:
            raise InvalidRequest(f"{path} after row {row}: cannot read ({exc})") from None
        if batch is None:
            break
        for record in records:
            row += 1
            yield _item(record, _Where(path, "row", row), options, label, tabular=True)
        if progress is not None:
            progress(row, total)


def _check_columns(header: list[str], options: ReadOptions, path: Path) -> str | None:
    """The label column to use; an error when the text or label column is missing."""
    columns = ", ".join(header)
    if len(set(header)) != len(header):
        raise InvalidRequest(f"{path}: a column name appears twice (columns: {columns})")
    if "input" not in header and options.text_column not in header:
        raise InvalidRequest(f"{path}: no column {options.text_column!r} (columns: {columns}); "
                             "name the text column with --text-column")
    if options.label_column is not None and options.label_column not in header:
        raise InvalidRequest(f"{path}: no column {options.label_column!r} (columns: {columns}); "
                             "check --label-column")
    return options.label_column or ("label" if "label" in header else None)


def _item(record: dict[str, Any], where: _Where, options: ReadOptions, label: str | None,
          *, tabular: bool) -> Item:
    # an empty cell is no value; a JSONL field keeps its null (e.g. as metadata)
    rec = {k: v for k, v in record.items() if not tabular or (v is not None and v != "")}
    text = options.text_column
    if "input" in rec:
        if text != "input" and text in rec:
            raise where.error(f"both 'input' and {text!r}: give one of them")
        input = _json(rec.pop("input"), where, "input", tabular)
        if not isinstance(input, dict):
            raise where.error(f"'input' must be a JSON object, not {_kind(input)}")
    elif isinstance(rec.get(text), str) and rec[text].strip():
        input = {"text": rec.pop(text)}
    elif text in record:
        raise where.error(f"{text!r} is empty" if record[text] in ("", None)
                          else f"{text!r} must be text, not {_kind(record[text])}")
    else:
        raise where.error(f"no input: give 'input' or {text!r}")
    if "expected" in rec:
        if label is not None and label in rec and label != "expected":
            raise where.error(f"both 'expected' and the label {label!r}: give one of them")
        expected = _json(rec.pop("expected"), where, "expected", tabular)
    elif label is not None and rec.get(label) is not None:
        expected = {"label": rec.pop(label)}
    else:
        rec.pop(label or "", None)
        expected = None
    metadata = _json(rec.pop("metadata", None), where, "metadata", tabular)
    metadata = {} if metadata is None else metadata
    provenance = _json(rec.pop("provenance", None), where, "provenance", tabular)
    provenance = where.provenance() if provenance is None else provenance
    split = rec.pop("split", None) or options.split
    rec.pop("item_hash", None)
    if not isinstance(split, str) or (split and not SPLIT_NAME.fullmatch(split)):
        raise where.error(f"bad split {split!r}: [a-z][a-z0-9_-]*")
    if split == "train" and expected is None:
        raise where.error("an item without an expected output cannot be in train")
    if not isinstance(metadata, dict):
        raise where.error(f"'metadata' must be a JSON object, not {_kind(metadata)}")
    for key, value in rec.items():
        if key in metadata:
            raise where.error(f"{key!r} is both a field and a metadata key")
        metadata[key] = value
    try:
        return Item.of(input, expected, metadata, provenance, split)
    except InvalidRequest as exc:
        raise where.error(exc.message) from None


def _json(value: Any, where: _Where, name: str, tabular: bool) -> Any:
    """A field's value; in CSV and Parquet, the JSON text in the cell."""
    if not tabular or not isinstance(value, str):
        return value
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        hint = " (a plain label goes in a label column: --label-column)" if name == "expected" else ""
        raise where.error(f"{name!r} is not JSON: {_short(value)}{hint}") from None


def _pyarrow() -> tuple[Any, Any]:
    try:
        return importlib.import_module("pyarrow"), importlib.import_module("pyarrow.parquet")
    except ImportError:
        raise ConfigError("Parquet files need pyarrow: pip install 'keel[data]'") from None


# --- writing --------------------------------------------------------------------------


def _silent(done: int, total: int) -> None:
    pass


def _write_jsonl(items: Sequence[Item], path: Path, progress: Progress) -> None:
    with path.open("wb") as f:
        for n, item in enumerate(items, 1):
            f.write(orjson.dumps({"item_hash": item.item_hash, "split": item.split,
                                  "input": item.input, "expected": item.expected,
                                  "metadata": item.metadata, "provenance": item.provenance},
                                 option=orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE))
            if n % _EVERY == 0:
                progress(n, len(items))
    progress(len(items), len(items))


def _columns(items: Sequence[Item]) -> tuple[list[str], Callable[[Item], list[str | None]]]:
    """CSV and Parquet columns: plain ``text`` and ``label`` when every item allows it,
    JSON text otherwise, so that reading the file back gives the same items."""
    plain_text = all(list(i.input) == ["text"] and isinstance(i.input["text"], str)
                     and i.input["text"].strip() for i in items)
    plain_label = all(i.expected is None or (
        isinstance(i.expected, dict) and list(i.expected) == ["label"]
        and isinstance(i.expected["label"], str) and i.expected["label"] != "") for i in items)

    def row(i: Item) -> list[str | None]:
        text = i.input["text"] if plain_text else _dumps(i.input)
        expected = (None if i.expected is None
                    else i.expected["label"] if plain_label else _dumps(i.expected))
        return [text, expected, i.split, _dumps(i.metadata), _dumps(i.provenance), i.item_hash]

    return ["text" if plain_text else "input", "label" if plain_label else "expected", "split",
            "metadata", "provenance", "item_hash"], row


def _write_csv(items: Sequence[Item], path: Path, progress: Progress) -> None:
    header, row = _columns(items)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for n, item in enumerate(items, 1):
            writer.writerow(["" if cell is None else cell for cell in row(item)])
            if n % _EVERY == 0:
                progress(n, len(items))
    progress(len(items), len(items))


def _write_parquet(items: Sequence[Item], path: Path, progress: Progress) -> None:
    pa, pq = _pyarrow()
    header, row = _columns(items)
    schema = pa.schema([(name, pa.string()) for name in header])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, len(items), _BATCH):
            rows = [row(item) for item in items[start:start + _BATCH]]
            writer.write_table(pa.table({name: [r[k] for r in rows] for k, name in enumerate(header)},
                                        schema=schema))
            progress(min(start + _BATCH, len(items)), len(items))
    progress(len(items), len(items))


def _dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _short(text: str, width: int = 40) -> str:
    return repr(text if len(text) <= width else text[: width - 1] + "…")


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__
