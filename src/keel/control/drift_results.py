"""What a drift report says, and how test results become verdicts.

:func:`judge` takes every column's :class:`~keel.control.drift_tests.ColumnTests`,
corrects all their p-values together (Benjamini–Hochberg), flags each test (adjusted p
below alpha, or a distance above its threshold), marks a window drifted when any of its
columns is, and applies the alert rule (two tested windows in a row). The dataclasses
are the report :func:`keel.control.drift.drift_report` returns; ``to_json`` is what the
API serves and the dashboard plots.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from keel.control.drift_data import Column
from keel.control.drift_tests import (
    CLASSIFIER_AUC,
    JENSEN_SHANNON,
    P_VALUE_METHODS,
    WASSERSTEIN,
    ColumnTests,
    Thresholds,
    alerts,
    benjamini_hochberg,
)
from keel.types import JSON

__all__ = ["DriftReport", "ReferenceInfo", "TestResult", "WindowResult", "judge"]


def _num(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


@dataclass(frozen=True, slots=True)
class TestResult:
    """One column in one window. ``threshold`` is alpha for p-value tests (compared with
    ``p_adjusted``) and the distance's threshold otherwise."""

    method: str | None  # ks | chi2 | wasserstein | jensen_shannon | mmd | classifier_auc
    statistic: float | None
    p_value: float | None
    p_adjusted: float | None
    threshold: float | None
    n: int
    drifted: bool
    summary: dict[str, object]
    note: str | None = None

    def to_json(self) -> dict[str, JSON]:
        return {"method": self.method, "statistic": _num(self.statistic),
                "p_value": _num(self.p_value), "p_adjusted": _num(self.p_adjusted),
                "threshold": self.threshold, "n": self.n, "drifted": self.drifted,
                "summary": self.summary, "note": self.note}


@dataclass(frozen=True, slots=True)
class WindowResult:
    index: int
    start: float
    end: float
    n: int  # events in the window
    role: Literal["reference", "tested", "untested"]  # untested: no column could be tested
    drifted: bool
    alert: bool  # this and the previous tested window drifted
    columns: dict[str, TestResult]

    @property
    def drifted_columns(self) -> list[str]:
        return [name for name, r in self.columns.items() if r.drifted]

    def to_json(self) -> dict[str, JSON]:
        return {"index": self.index, "start": self.start, "end": self.end, "n": self.n,
                "role": self.role, "drifted": self.drifted, "alert": self.alert,
                "drifted_columns": self.drifted_columns,
                "columns": {k: v.to_json() for k, v in self.columns.items()}}


@dataclass(frozen=True, slots=True)
class ReferenceInfo:
    kind: str
    description: str
    n: int  # events or dataset items
    start: float | None = None
    end: float | None = None
    dataset: str | None = None  # NAME@N
    eval_run: str | None = None
    version: str | None = None

    def to_json(self) -> dict[str, JSON]:
        return {"kind": self.kind, "description": self.description, "n": self.n,
                "start": self.start, "end": self.end, "dataset": self.dataset,
                "eval_run": self.eval_run, "version": self.version}


@dataclass(frozen=True, slots=True)
class DriftReport:
    feature: str
    since: float | None
    until: float | None
    window_s: float | None
    reference: ReferenceInfo
    thresholds: Thresholds
    columns: list[Column]  # the columns tested, in order (the embedding is "embedding")
    skipped: dict[str, str]  # column -> why it was not tested
    reference_summary: dict[str, dict[str, object]]
    windows: list[WindowResult]
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def alert(self) -> bool:
        """Two tested windows in a row drifted, anywhere in the report."""
        return any(w.alert for w in self.windows)

    @property
    def alert_active(self) -> bool:
        """The latest tested window is in alert."""
        tested = [w for w in self.windows if w.role == "tested"]
        return bool(tested) and tested[-1].alert

    @property
    def alert_since(self) -> float | None:
        """Start of the window where the latest alert run began (its first drifted window)."""
        if not self.alert:
            return None
        tested = [w for w in self.windows if w.role == "tested"]
        last = max(i for i, w in enumerate(tested) if w.alert)
        first = last
        while first > 0 and tested[first - 1].drifted:
            first -= 1
        return tested[first].start

    @property
    def drifted_windows(self) -> int:
        return sum(w.drifted for w in self.windows)

    def drifted_columns(self) -> list[str]:
        """Columns that drifted in any window, in column order."""
        hit = {name for w in self.windows for name in w.drifted_columns}
        return [c.name for c in self.columns if c.name in hit]

    def to_json(self) -> dict[str, JSON]:
        return {
            "feature": self.feature, "since": self.since, "until": self.until,
            "window_s": self.window_s, "reference": self.reference.to_json(),
            "thresholds": self.thresholds.to_json(),
            "columns": [c.to_json() for c in self.columns], "skipped": self.skipped,
            "alert": self.alert, "alert_active": self.alert_active,
            "alert_since": self.alert_since, "drifted_windows": self.drifted_windows,
            "drifted_columns": self.drifted_columns(),
            "reference_summary": self.reference_summary,
            "windows": [w.to_json() for w in self.windows], "notes": self.notes,
            "timings": self.timings,
        }


def _flags(tests: ColumnTests, adjusted: np.ndarray, th: Thresholds) -> list[bool]:
    out = []
    for w, method in enumerate(tests.method):
        if method is None:
            out.append(False)
        elif method in P_VALUE_METHODS:
            out.append(bool(adjusted[w] < th.alpha))
        else:
            limit = {WASSERSTEIN: th.wasserstein, JENSEN_SHANNON: th.jensen_shannon,
                     CLASSIFIER_AUC: th.auc}[method]
            out.append(bool(tests.statistic[w] > limit))
    return out


def _threshold(method: str | None, th: Thresholds) -> float | None:
    if method is None:
        return None
    if method in P_VALUE_METHODS:
        return th.alpha
    return {WASSERSTEIN: th.wasserstein, JENSEN_SHANNON: th.jensen_shannon,
            CLASSIFIER_AUC: th.auc}[method]


def judge(tests: dict[str, ColumnTests], bounds: Sequence[tuple[float, float]],
          events: Sequence[int], th: Thresholds, *, first_is_reference: bool) -> list[WindowResult]:
    """Windows with their verdicts, from every column's tests (one entry per window in
    ``bounds`` and ``events``). With ``first_is_reference`` window 0 is the reference:
    its tests are dropped and it takes no part in the alert rule."""
    count = len(bounds)
    p_all = np.concatenate([
        np.where([m in P_VALUE_METHODS for m in t.method], t.p_value, np.nan) for t in tests.values()
    ]) if tests else np.empty(0)
    adjusted_all = benjamini_hochberg(p_all)
    adjusted = {name: adjusted_all[i * count:(i + 1) * count] for i, name in enumerate(tests)}
    flags = {name: _flags(t, adjusted[name], th) for name, t in tests.items()}
    rows = []
    for i, (lo, hi) in enumerate(bounds):
        columns = {}
        for name, t in tests.items():
            method = t.method[i]
            columns[name] = TestResult(
                method, _num(t.statistic[i]),
                _num(t.p_value[i]) if method in P_VALUE_METHODS else None,
                _num(adjusted[name][i]) if method in P_VALUE_METHODS else None,
                _threshold(method, th), int(t.n[i]), flags[name][i], t.summary[i],
                t.note[i] if t.note else None)
        is_reference = first_is_reference and i == 0
        tested = not is_reference and any(r.method is not None for r in columns.values())
        role: Literal["reference", "tested", "untested"] = (
            "reference" if is_reference else "tested" if tested else "untested")
        if is_reference:
            columns = {}
        rows.append((i, lo, hi, int(events[i]), role, any(r.drifted for r in columns.values()),
                     columns))
    alert_flags = alerts([drifted if role == "tested" else None
                          for _, _, _, _, role, drifted, _ in rows])
    return [WindowResult(i, lo, hi, n, role, drifted, alert, columns)
            for (i, lo, hi, n, role, drifted, columns), alert in zip(rows, alert_flags, strict=True)]
