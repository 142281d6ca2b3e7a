"""Drift: is a feature's traffic still like its reference?

:func:`drift_report` cuts a feature's events into time windows and compares each window
with a **reference** — the first window, a chosen time range, a dataset version, or the
champion's eval data (the dataset version of its latest finished eval run, with the
outputs and decisions of that run) — column by column (:mod:`keel.control.drift_data`:
text length, language, PII rate, label shares, confidence, review and refusal rates,
latency, cost, tokens, any ``input.FIELD``/``output.FIELD``) and, optionally, on the
texts' embeddings (:mod:`keel.control.drift_embed`). The tests, chosen by sample size,
the Benjamini–Hochberg correction and the thresholds are in
:mod:`keel.control.drift_tests`; how events are read fast in
:mod:`keel.control.drift_read`; verdicts and the report's shape in
:mod:`keel.control.drift_results`. A window drifted when any of its columns did; the
report **alerts** only when two tested windows in a row drifted.

Against a dataset reference only what an item has is compared: its input columns, and
its output and decision columns when the champion was evaluated on it; operational
columns (latency, cost, tokens) and guard results need a window reference.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Final, Literal

import numpy as np

from keel.control.datasets import DatasetStore, parse_ref
from keel.control.drift_data import (
    Column,
    Frame,
    ItemRow,
    Kind,
    align,
    field_column,
    field_kind,
    infer_kind,
    is_field,
    item_texts,
    items_frame,
    resolve_columns,
)
from keel.control.drift_embed import Embed, embedding_tests, local_embed
from keel.control.drift_read import read_events, read_texts, sample_field
from keel.control.drift_results import DriftReport, ReferenceInfo, TestResult, WindowResult, judge
from keel.control.drift_tests import (
    ColumnTests,
    IntArray,
    Thresholds,
    categorical_summary,
    categorical_tests,
    numeric_summary,
    numeric_tests,
)
from keel.control.evaluation import EvalRun, list_runs, results
from keel.control.registry import Registry
from keel.errors import InvalidRequest
from keel.store.db import Store

__all__ = ["MAX_WINDOWS", "DriftReport", "Reference", "ReferenceInfo", "TestResult",
           "WindowResult", "compare", "drift_report", "fmt_time", "parse_duration", "parse_time"]

DEFAULT_WINDOW: Final = 86400.0
MAX_WINDOWS: Final = 1000
EMBEDDING: Final = "embedding"
_UNITS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)")


# --- parameters ------------------------------------------------------------------------


def parse_duration(text: str, param: str = "window") -> float:
    """``"90"`` (seconds), ``"30m"``, ``"1h"``, ``"1.5d"``, ``"2w"`` -> seconds (> 0)."""
    match = _DURATION.fullmatch(text.strip().lower())
    seconds = 0.0 if match is None else float(match[1]) * _UNITS[match[2] or "s"]
    if match is None or not seconds > 0 or not math.isfinite(seconds):
        raise InvalidRequest(f"bad {param} {text!r}: a positive duration such as 3600, 30m, "
                             "1h, 1d or 1w", param=param)
    return seconds


def parse_time(text: str, param: str = "since", now: float | None = None) -> float:
    """A point in time: epoch seconds, an ISO 8601 date or time (UTC unless it says
    otherwise), ``now``, or a duration ago (``7d``: seven days before now)."""
    value = text.strip()
    now = time.time() if now is None else now
    if value.lower() == "now":
        return now
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):  # nan, inf: no point in time
            raise InvalidRequest(f"bad {param} {text!r}: a finite number of epoch seconds",
                                 param=param)
        return seconds
    if _DURATION.fullmatch(value.lower()) and value[-1:].lower() in _UNITS:
        return now - parse_duration(value, param)
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"bad {param} {text!r}: epoch seconds, an ISO date or time "
                             "(2024-05-01, 2024-05-01T12:00Z), now, or an age such as 7d",
                             param=param) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def fmt_time(ts: float) -> str:
    """UTC, to the minute (to the second when it has seconds): ``2024-05-01 12:00Z``."""
    when = dt.datetime.fromtimestamp(ts, dt.UTC)
    return when.strftime("%Y-%m-%d %H:%M:%SZ" if when.second or when.microsecond else "%Y-%m-%d %H:%MZ")


@dataclass(frozen=True, slots=True)
class Reference:
    """What windows are compared with: ``window`` (the first window, or
    ``[start, end)`` when given), ``champion`` (its latest finished eval run's data) or
    ``dataset`` (a dataset version, with the champion's eval outputs on it if any)."""

    kind: Literal["window", "champion", "dataset"] = "window"
    start: float | None = None
    end: float | None = None
    dataset: str | None = None
    number: int | None = None

    @classmethod
    def parse(cls, text: str | None, start: float | None = None,
              end: float | None = None) -> Reference:
        """``window``, ``champion`` or ``dataset:NAME[@N]``; start/end go with window."""
        value = (text or "window").strip()
        if value == "window":
            if (start is None) != (end is None):
                missing = "reference_end" if end is None else "reference_start"
                raise InvalidRequest("a reference range needs both reference_start and "
                                     "reference_end", param=missing)
            if start is not None and end is not None and end <= start:
                raise InvalidRequest("reference_end must be after reference_start",
                                     param="reference_end")
            return cls("window", start, end)
        if start is not None or end is not None:
            raise InvalidRequest("reference_start and reference_end go with reference=window",
                                 param="reference_start" if start is not None else "reference_end")
        if value == "champion":
            return cls("champion")
        if value.startswith("dataset:"):
            try:
                name, number = parse_ref(value.removeprefix("dataset:"))
            except InvalidRequest as exc:
                raise InvalidRequest(exc.message, param="reference") from None
            return cls("dataset", dataset=name, number=number)
        raise InvalidRequest(f"bad reference {text!r}: window, champion or dataset:NAME[@N]",
                             param="reference")


# --- building it -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Grid:
    since: float
    until: float
    width: float
    count: int

    def bounds(self, i: int) -> tuple[float, float]:
        return self.since + i * self.width, min(self.since + (i + 1) * self.width, self.until)


def _grid(store: Store, feature: str, window: float | None, windows: int | None,
          since: float | None, until: float | None) -> _Grid | None:
    if window is not None and windows is not None:
        raise InvalidRequest("give a window size or a number of windows, not both", param="windows")
    if window is not None and not (window > 0 and math.isfinite(window)):
        raise InvalidRequest(f"window must be a positive number of seconds, not {window}", param="window")
    if windows is not None and not 1 <= windows <= MAX_WINDOWS:
        raise InvalidRequest(f"windows must be between 1 and {MAX_WINDOWS}, not {windows}", param="windows")
    if since is not None and until is not None and until <= since:
        raise InvalidRequest("until must be after since", param="until")
    conn = store.connect()
    try:
        first, last = conn.execute(
            "SELECT MIN(ts), MAX(ts) FROM events WHERE feature = ? AND ts >= ? AND ts < ?",
            (feature, -math.inf if since is None else since, math.inf if until is None else until),
        ).fetchone()
    finally:
        conn.close()
    if first is None and (since is None or until is None):
        return None
    if windows is not None:
        lo = first if since is None else since
        hi = last + 1e-6 if until is None else until
        return _Grid(lo, hi, (hi - lo) / windows, windows)
    width = DEFAULT_WINDOW if window is None else window
    lo = math.floor(first / width) * width if since is None else since
    hi = lo + (math.floor((last - lo) / width) + 1) * width if until is None else until
    count = max(1, math.ceil((hi - lo) / width - 1e-9))
    if count > MAX_WINDOWS:
        raise InvalidRequest(f"{count} windows of {width:g} s from {fmt_time(lo)} to {fmt_time(hi)}; "
                             f"at most {MAX_WINDOWS}: use a longer window or a later since",
                             param="window")
    return _Grid(lo, hi, width, count)


@dataclass(slots=True)
class _Reference:
    info: ReferenceInfo
    frame: Frame | None = None  # dataset items; None: rows of the events read
    texts: list[str] | None = None
    unavailable: dict[str, str] = field(default_factory=dict)  # column -> why


def _champion(store: Store, feature: str, fallback: str | None) -> str | None:
    return Registry(store).aliases(feature).get("champion") or fallback


def _dataset_reference(store: Store, feature: str, ref: Reference, champion: str | None,
                       columns: Sequence[Column], text_field: str | None) -> _Reference:
    datasets = DatasetStore(store)
    run: EvalRun | None = None
    if ref.kind == "champion":
        if champion is None:
            raise InvalidRequest(f"'{feature}' has no champion", param="reference")
        done = [r for r in list_runs(store, feature, champion) if r.status == "done"]
        if not done:
            raise InvalidRequest(
                f"the champion {champion} of '{feature}' has no finished eval run: run "
                f"`keel eval {feature}` first, or use reference=window or dataset:NAME@N",
                param="reference")
        run = done[0]
        version = datasets.version(run.dataset, run.dataset_number)
        split = run.split
    else:
        assert ref.dataset is not None
        version = datasets.version(ref.dataset, ref.number)
        split = None
        if champion is not None:
            run = next((r for r in list_runs(store, feature, champion)
                        if r.status == "done" and r.dataset == version.dataset
                        and r.dataset_number == version.number), None)
    items = datasets.items(version.dataset, version.number, split)
    answers = {r.item_hash: r for r in results(store, run.id)} if run is not None else {}
    rows = []
    for item in items:
        answer = answers.get(item.item_hash)
        rows.append(ItemRow(item.input) if answer is None else
                    ItemRow(item.input, answer.output, answer.decision, answer.confidence))
    unavailable: dict[str, str] = {}
    for c in columns:
        if c.item is None:
            unavailable[c.name] = "not measured on dataset items: compare it with reference=window"
        elif run is None and c.group in ("output", "decision"):
            unavailable[c.name] = (f"the champion has no finished eval run on {version.ref}: "
                                   "only input columns are compared")
    where = version.ref + (f" (split {split})" if split else "")
    if ref.kind == "champion":
        assert run is not None
        description = f"the champion {champion}'s eval data: {where}, eval run {run.id}"
    else:
        description = f"dataset {where}" + (
            f", outputs from the champion {champion}'s eval run {run.id}" if run else "")
    info = ReferenceInfo(ref.kind, description, len(rows), dataset=version.ref,
                         eval_run=None if run is None else run.id, version=champion)
    return _Reference(info, items_frame(rows, columns), item_texts(rows, text_field), unavailable)


def _infer_kinds(store: Store, feature: str, names: Sequence[str] | None, lo: float,
                 hi: float) -> dict[str, Kind]:
    """The kinds of ``input.``/``output.`` columns named without one, from a sample of events."""
    kinds: dict[str, Kind] = {}
    for name in names or ():
        if is_field(name) and field_kind(name) is None:
            column = field_column(name, "categorical")
            kinds[name] = infer_kind(sample_field(store, feature, column, lo, hi))
    return kinds


def compare(columns: Sequence[Column], reference: Frame, data: Frame, groups: IntArray,
            n_windows: int, th: Thresholds, threads: int = 1,
            ) -> tuple[dict[str, ColumnTests], dict[str, dict[str, object]]]:
    """Every column's tests in every window (``groups``: each row's window, −1 for none)
    against ``reference``, ``threads`` columns at a time; and the reference's summaries."""

    def run(c: Column) -> tuple[ColumnTests, dict[str, object]]:
        if c.kind == "numeric":
            return (numeric_tests(reference.values[c.name], data.values[c.name], groups,
                                  n_windows, th), numeric_summary(reference.values[c.name]))
        ref_codes, codes, cats = align(reference, data, c.name)
        binary = c.kind == "binary"
        return (categorical_tests(ref_codes, codes, groups, n_windows, cats, th, binary=binary),
                categorical_summary(ref_codes, cats, binary=binary))

    if threads > 1 and len(columns) > 1:
        with ThreadPoolExecutor(threads, "keel-drift-test") as pool:
            done = list(pool.map(run, columns))
    else:
        done = [run(c) for c in columns]
    names = [c.name for c in columns]
    return ({n: d[0] for n, d in zip(names, done, strict=True)},
            {n: d[1] for n, d in zip(names, done, strict=True)})


def drift_report(
    store: Store,
    feature: str,
    *,
    window: float | None = None,
    windows: int | None = None,
    since: float | None = None,
    until: float | None = None,
    reference: Reference | str = "window",
    columns: Sequence[str] | None = None,
    embeddings: bool = False,
    text_field: str | None = "text",
    champion: str | None = None,
    thresholds: Thresholds | None = None,
    threads: int | None = None,
    seed: int = 0,
    embed: Embed | None = None,
) -> DriftReport:
    """Compare ``feature``'s events in each time window with the reference.

    Windows are ``window`` seconds long (default one day; without ``since`` the first
    starts at a multiple of the size, so days are UTC days), or ``windows`` equal parts
    of ``[since, until)``; since/until default to the feature's first and last event.
    ``columns`` names built-in columns, ``embedding`` and ``input.FIELD`` /
    ``output.FIELD`` (default: every built-in one); ``embeddings`` adds the embedding
    test. ``text_field`` is the feature's input text field (None: chat, the last
    message); ``champion`` is used when the registry has no champion alias. ``embed``
    replaces the local model (tests).
    """
    th = thresholds or Thresholds()
    ref = reference if isinstance(reference, Reference) else Reference.parse(reference)
    threads = threads or min(4, os.cpu_count() or 1)
    clock = time.perf_counter()
    want_embedding = embeddings or (columns is not None and EMBEDDING in columns)
    grid = _grid(store, feature, window, windows, since, until)
    lo = grid.since if grid else (since or 0.0)
    hi = grid.until if grid else (until or 0.0)
    cols = resolve_columns(columns, text_field,
                           _infer_kinds(store, feature, columns, lo, hi) if grid else None)
    champion = _champion(store, feature, champion)
    skipped: dict[str, str] = {}
    notes: list[str] = []
    if ref.kind in ("champion", "dataset"):
        reference_data = _dataset_reference(store, feature, ref, champion, cols, text_field)
        skipped.update(reference_data.unavailable)
    else:
        reference_data = _Reference(ReferenceInfo("window", "", 0))
    if grid is None:
        return DriftReport(feature, since, until, window, reference_data.info, th, [], skipped, {},
                           [], [f"no events of '{feature}' in this range"],
                           {"total_s": time.perf_counter() - clock})
    # one read covers the windows and a reference range
    start, end = grid.since, grid.until
    if ref.kind == "window" and ref.start is not None and ref.end is not None:
        start, end = min(start, ref.start), max(end, ref.end)
    loaded = [c for c in cols if c.name not in skipped]
    frame = read_events(store, feature, loaded, start, end, threads=threads)
    load_s = time.perf_counter() - clock
    ts = frame.t + start
    groups: IntArray = np.floor((ts - grid.since) / grid.width).astype(np.int64)
    groups[(ts < grid.since) | (ts >= grid.until) | (groups >= grid.count)] = -1
    events_per_window = np.bincount(groups[groups >= 0], minlength=grid.count)
    if ref.kind == "window":
        if ref.start is None or ref.end is None:
            r_lo, r_hi = grid.bounds(0)
            in_ref = groups == 0
            groups[in_ref] = -1
            description = f"the first window ({fmt_time(r_lo)} to {fmt_time(r_hi)})"
            if grid.count < 2:
                notes.append("one window only: nothing to compare with the first; use a "
                             "shorter window or another reference")
        else:
            r_lo, r_hi = ref.start, ref.end
            in_ref = (ts >= r_lo) & (ts < r_hi)
            description = f"events from {fmt_time(r_lo)} to {fmt_time(r_hi)}"
        reference_data.frame = frame.take(in_ref)
        reference_data.info = ReferenceInfo("window", description, reference_data.frame.n,
                                            r_lo, r_hi)
    assert reference_data.frame is not None
    ref_frame: Frame = reference_data.frame
    if ref_frame.n == 0:
        notes.append(f"the reference ({reference_data.info.description}) has no events: "
                     "nothing could be tested")
    tested_cols = []
    for c in loaded:
        if ref_frame.has_values(c.name) or frame.has_values(c.name):
            tested_cols.append(c)
        else:
            skipped[c.name] = c.absent

    tests, summaries = compare(tested_cols, ref_frame, frame, groups, grid.count, th, threads)
    tests_s = time.perf_counter() - clock - load_s
    embed_s = 0.0
    if want_embedding:
        started = time.perf_counter()
        result = _embedding(store, feature, grid, groups, ref, reference_data, text_field, th,
                            embed, seed)
        if isinstance(result, str):
            skipped[EMBEDDING] = result
        else:
            tests[EMBEDDING] = result
            summaries[EMBEDDING] = {"n": len(reference_data.texts or [])}
        embed_s = time.perf_counter() - started
    report_columns = tested_cols + ([_EMBEDDING_COLUMN] if EMBEDDING in tests else [])
    windows_out = judge(tests, [grid.bounds(i) for i in range(grid.count)],
                        events_per_window.tolist(), th,
                        first_is_reference=ref.kind == "window" and ref.start is None)
    timings = {"load_s": round(load_s, 4), "tests_s": round(tests_s, 4),
               "embeddings_s": round(embed_s, 4),
               "total_s": round(time.perf_counter() - clock, 4), "rows": float(frame.n)}
    return DriftReport(feature, grid.since, grid.until, grid.width, reference_data.info, th,
                       report_columns, skipped, summaries, windows_out, notes, timings)


_EMBEDDING_COLUMN: Final = Column(EMBEDDING, "embedding", "input",
                                  description="the input texts' embeddings (local MiniLM)")


def _embedding(store: Store, feature: str, grid: _Grid, groups: IntArray, ref: Reference,
               reference_data: _Reference, text_field: str | None, th: Thresholds,
               embed: Embed | None, seed: int) -> ColumnTests | str:
    """The embedding test, or why it could not run."""
    from keel.providers.local.embedder import ModelFilesMissing

    try:
        embed = embed or local_embed()
    except ModelFilesMissing as exc:
        return str(exc)
    if reference_data.texts is None:
        info = reference_data.info
        assert info.start is not None and info.end is not None
        reference_data.texts = read_texts(store, feature, text_field, info.start, info.end)
    has_rows = np.bincount(groups[groups >= 0], minlength=grid.count) > 0
    texts: list[list[str] | None] = []
    for i in range(grid.count):
        is_reference = ref.kind == "window" and ref.start is None and i == 0
        if is_reference or not has_rows[i]:
            texts.append(None)
        else:
            texts.append(read_texts(store, feature, text_field, *grid.bounds(i)))
    if not reference_data.texts:
        return "the reference has no input texts"
    return embedding_tests(reference_data.texts, texts, th, embed, seed)
