"""Feedback and outcomes per version of a feature over a range of call times.

What ``GET /api/feedback/stats``, ``keel feedback stats`` and the dashboard's feature
page show. "Version" is the version the router chose first (``routed``), as for canary
judging and the rollups; the range is on the *call's* time, so an outcome reported a
day later counts with the calls it belongs to. Calls per version come from the rollups
(:func:`keel.store.stats.overview`), the rest from ``feedback``:

- thumbs: ups and downs, and the share of ups;
- ratings: how many and their mean;
- comments and corrections (a correction rate per call);
- outcomes: per name, the calls that had it (value absent or non-zero: the rate per
  call canaries are judged by, :mod:`keel.control.live_metrics`), and the sum and count
  of the values sent (e.g. refund amounts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from keel.store import stats
from keel.store.db import Store
from keel.types import JSON


@dataclass(slots=True)
class OutcomeCounts:
    calls: int = 0  # calls with the outcome (value absent or non-zero)
    value_sum: float = 0.0
    values: int = 0  # how many carried a value

    def to_json(self, calls: int) -> dict[str, JSON]:
        return {"calls": self.calls, "rate": _share(self.calls, calls),
                "value_sum": self.value_sum, "value_mean": _mean(self.value_sum, self.values)}


@dataclass(slots=True)
class VersionFeedback:
    version: str | None
    calls: int = 0
    with_feedback: int = 0  # calls with any feedback
    thumbs_up: int = 0
    thumbs_down: int = 0
    ratings: int = 0
    rating_sum: float = 0.0
    comments: int = 0
    corrections: int = 0  # calls with a correction
    outcomes: dict[str, OutcomeCounts] = field(default_factory=dict)

    def add(self, other: VersionFeedback) -> None:
        for name in ("calls", "with_feedback", "thumbs_up", "thumbs_down", "ratings",
                     "rating_sum", "comments", "corrections"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name, counts in other.outcomes.items():
            mine = self.outcomes.setdefault(name, OutcomeCounts())
            mine.calls += counts.calls
            mine.value_sum += counts.value_sum
            mine.values += counts.values

    def to_json(self) -> dict[str, JSON]:
        thumbs = self.thumbs_up + self.thumbs_down
        return {
            "version": self.version, "calls": self.calls, "with_feedback": self.with_feedback,
            "thumbs": {"up": self.thumbs_up, "down": self.thumbs_down,
                       "up_rate": _share(self.thumbs_up, thumbs)},
            "ratings": {"count": self.ratings, "mean": _mean(self.rating_sum, self.ratings)},
            "comments": self.comments,
            "corrections": {"calls": self.corrections,
                            "rate": _share(self.corrections, self.calls)},
            "outcomes": {name: c.to_json(self.calls) for name, c in sorted(self.outcomes.items())},
        }


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _mean(total: float, n: int) -> float | None:
    return total / n if n else None


def feedback_stats(store: Store, feature: str, since: float, until: float) -> dict[str, JSON]:
    """``{"feature", "since", "until", "totals", "versions": [...]}``, versions by calls."""
    calls = {row["version"]: int(row["calls"]) for row in _version_rows(store, feature, since,
                                                                         until)}
    rows: dict[str | None, VersionFeedback] = {}

    def row_for(version: str | None) -> VersionFeedback:
        found = rows.get(version)
        if found is None:
            found = rows[version] = VersionFeedback(version, calls.get(version, 0))
        return found

    for version in calls:
        row_for(version)
    window = (feature, since, until)
    version_of = "COALESCE(routed, version)"
    with store.connection() as conn:
        grouped = conn.execute(
            f"SELECT {version_of} AS v, kind, name, COUNT(*), COUNT(DISTINCT trace_id),"
            " COALESCE(SUM(value), 0), COUNT(value),"
            " COUNT(DISTINCT CASE WHEN value IS NULL OR value <> 0 THEN trace_id END)"
            " FROM feedback WHERE feature = ? AND call_ts >= ? AND call_ts < ?"
            " GROUP BY 1, 2, 3", window).fetchall()
        touched = conn.execute(
            f"SELECT {version_of} AS v, COUNT(DISTINCT trace_id) FROM feedback"
            " WHERE feature = ? AND call_ts >= ? AND call_ts < ? GROUP BY 1", window).fetchall()
    for r in grouped:
        _count(row_for(r[0]), r[1], r[2], int(r[3]), int(r[4]), float(r[5]), int(r[6]),
               int(r[7]))
    for r in touched:
        row_for(r[0]).with_feedback = int(r[1])
    totals = VersionFeedback(None)
    for row in rows.values():
        totals.add(row)
    ordered = sorted(rows.values(), key=lambda r: (-r.calls, r.version or ""))
    return {"feature": feature, "since": since, "until": until, "totals": totals.to_json(),
            "versions": [r.to_json() for r in ordered]}


def _count(row: VersionFeedback, kind: str, name: str, n: int, traces: int, value_sum: float,
           values: int, happened: int) -> None:
    if kind == "thumbs":
        row.thumbs_up += int(value_sum)
        row.thumbs_down += n - int(value_sum)
    elif kind == "rating":
        row.ratings += values
        row.rating_sum += value_sum
    elif kind == "comment":
        row.comments += n
    elif kind == "correction":
        row.corrections += traces
    elif kind == "outcome":
        row.outcomes[name] = OutcomeCounts(happened, value_sum, values)


def _version_rows(store: Store, feature: str, since: float, until: float) -> list[Any]:
    """Calls per routed version in the range, from the rollups."""
    body = stats.overview(store, since, until, "day", feature)
    versions = body.get("versions")
    return versions if isinstance(versions, list) else []
