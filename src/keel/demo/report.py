"""What a demo run measured, and how it is shown: per serving phase (the rows of the
table and the plot) and per learning cycle (dataset, training, gate, canary, threshold).

Every number of a serving phase is measured on that phase's calls, as the HTTP client got
them, against the messages' true labels:

- **coverage**: share of calls decided ``accepted`` (or ``repaired`` / ``fallback``):
  answered with no human;
- **error**: share of those auto-accepted answers whose label is wrong — what α bounds —
  with a two-sided 90% Clopper–Pearson interval;
- **review load**: verdicts the reviewers gave on the phase's calls, per call (answers
  below ``accept_at`` plus the ``audit_rate`` sample);
- **cost**: the model's cost (the events' ``cost_usd``) plus ``review_cost_usd`` per
  verdict, per 1,000 calls;
- **latency**: p50 / p95 of the server's ``timings_ms.total``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from rich.table import Table
from scipy.stats import beta  # type: ignore[import-untyped]

from keel.demo.config import Message

SERVED = frozenset({"accepted", "repaired", "fallback"})
Within = Literal["yes", "noise", "no"]


@dataclass(frozen=True, slots=True)
class CallRecord:
    message: Message
    trace_id: str | None
    version: str | None
    decision: str
    label: str | None
    confidence: float | None
    latency_ms: float | None
    cost_usd: float | None

    @property
    def served(self) -> bool:
        return self.decision in SERVED

    @property
    def right(self) -> bool:
        return self.label == self.message.label


def interval(k: int, n: int, level: float = 0.9) -> tuple[float | None, float | None]:
    """Two-sided Clopper–Pearson interval of k successes in n."""
    if n == 0:
        return None, None
    tail = (1 - level) / 2
    low = 0.0 if k == 0 else float(beta.ppf(tail, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - tail, k + 1, n - k))
    return low, high


@dataclass(frozen=True, slots=True)
class PhaseCounts:
    calls: int
    accepted: int
    wrong: int
    correct: int
    model_cost_usd: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None

    @classmethod
    def of(cls, records: list[CallRecord]) -> PhaseCounts:
        served = [r for r in records if r.served]
        costs = [r.cost_usd for r in records]
        latencies = [r.latency_ms for r in records if r.latency_ms is not None]
        return cls(
            calls=len(records), accepted=len(served), wrong=sum(not r.right for r in served),
            correct=sum(r.right for r in records),
            model_cost_usd=None if any(c is None for c in costs) else float(
                sum(c for c in costs if c is not None)),
            latency_p50_ms=float(np.percentile(latencies, 50)) if latencies else None,
            latency_p95_ms=float(np.percentile(latencies, 95)) if latencies else None)

    @property
    def error(self) -> float | None:
        return self.wrong / self.accepted if self.accepted else None


@dataclass(frozen=True, slots=True)
class ServeStats:
    """One serving phase: ``calls`` messages served by ``version`` at ``accept_at``."""

    cycle: int
    version: str
    accept_at: float
    alpha: float
    counts: PhaseCounts
    reviewed: int
    reviewer_slips: int
    review_cost_usd: float  # for all the phase's verdicts
    seconds: float

    @property
    def calls(self) -> int:
        return self.counts.calls

    @property
    def coverage(self) -> float:
        return self.counts.accepted / self.calls if self.calls else 0.0

    @property
    def error(self) -> float | None:
        return self.counts.error

    @property
    def error_interval(self) -> tuple[float | None, float | None]:
        return interval(self.counts.wrong, self.counts.accepted)

    @property
    def within(self) -> Within:
        """yes: error <= alpha; noise: above, but not significantly (its 95% lower
        bound is <= alpha); no: significantly above alpha."""
        if self.error is None or self.error <= self.alpha:
            return "yes"
        low, _ = interval(self.counts.wrong, self.counts.accepted, level=0.9)
        return "noise" if low is not None and low <= self.alpha else "no"

    @property
    def review_load(self) -> float:
        return self.reviewed / self.calls if self.calls else 0.0

    @property
    def accuracy(self) -> float:
        return self.counts.correct / self.calls if self.calls else 0.0

    @property
    def cost_per_1k_usd(self) -> float | None:
        if self.counts.model_cost_usd is None or not self.calls:
            return None
        return (self.counts.model_cost_usd + self.review_cost_usd) / self.calls * 1000

    def to_json(self) -> dict[str, Any]:
        low, high = self.error_interval
        return {"cycle": self.cycle, "version": self.version, "accept_at": self.accept_at,
                "calls": self.calls, "accepted": self.counts.accepted, "wrong": self.counts.wrong,
                "coverage": self.coverage, "error": self.error, "error_low": low,
                "error_high": high, "alpha": self.alpha, "within_alpha": self.within,
                "review_load": self.review_load, "reviewed": self.reviewed,
                "reviewer_slips": self.reviewer_slips, "accuracy": self.accuracy,
                "model_cost_usd": self.counts.model_cost_usd,
                "review_cost_usd": self.review_cost_usd, "cost_per_1k_usd": self.cost_per_1k_usd,
                "latency_p50_ms": self.counts.latency_p50_ms,
                "latency_p95_ms": self.counts.latency_p95_ms, "seconds": self.seconds}


@dataclass(slots=True)
class CycleLog:
    """One learning cycle: verdicts -> dataset version -> candidate -> gate -> canary."""

    cycle: int
    champion: str  # before the cycle
    accept_at_before: float
    dataset: str | None = None  # name@N of the review dataset trained on
    examples: int = 0  # items in it
    candidate: str | None = None
    train_metrics: dict[str, Any] = field(default_factory=dict)
    gate_passed: bool | None = None
    gate_accuracy: float | None = None  # the candidate's, on the gate set
    champion_gate_accuracy: float | None = None
    gate_failed_checks: list[str] = field(default_factory=list)
    outcome: str = "skipped"  # promoted | rolled_back | gate_failed | out_of_traffic
    reason: str = ""
    steps: list[str] = field(default_factory=list)  # the canary's transitions
    canary: dict[str, dict[str, Any]] = field(default_factory=dict)  # per version
    accept_at_after: float | None = None
    calibration: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class DemoResult:
    config: dict[str, Any]
    url: str
    workdir: str
    rows: list[ServeStats] = field(default_factory=list)
    cycles: list[CycleLog] = field(default_factory=list)
    plot: str | None = None
    elapsed_s: float = 0.0
    complete: bool = False

    @property
    def promoted(self) -> list[str]:
        return [c.candidate for c in self.cycles if c.outcome == "promoted" and c.candidate]

    def to_json(self) -> dict[str, Any]:
        return {"config": self.config, "url": self.url, "workdir": self.workdir,
                "rows": [r.to_json() for r in self.rows],
                "cycles": [c.to_json() for c in self.cycles], "promoted": self.promoted,
                "plot": self.plot, "elapsed_s": self.elapsed_s, "complete": self.complete}


# --- tables -------------------------------------------------------------------------------


def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def serve_table(rows: list[ServeStats], alpha: float) -> Table:
    table = Table(title=f"serving phases (α = {alpha:g}: the error allowed among auto-accepted "
                        "answers)", title_justify="left")
    for name, right in (("cycle", True), ("version", False), ("accept_at", True),
                        ("calls", True), ("coverage", True), ("error [90% CI]", True),
                        ("≤ α", False), ("review load", True), ("cost / 1k calls", True),
                        ("p50 / p95 ms", True), ("accuracy", True)):
        table.add_column(name, justify="right" if right else "left", no_wrap=True)
    mark = {"yes": "[green]yes[/]", "noise": "[yellow]~ (noise)[/]", "no": "[red]no[/]"}
    for row in rows:
        low, high = row.error_interval
        ci = "" if low is None or high is None else f" [{100 * low:.1f}, {100 * high:.1f}]"
        cost = row.cost_per_1k_usd
        p50, p95 = row.counts.latency_p50_ms, row.counts.latency_p95_ms
        table.add_row(
            str(row.cycle), row.version, f"{row.accept_at:.3f}", str(row.calls),
            _pct(row.coverage), _pct(row.error) + ci, mark[row.within], _pct(row.review_load),
            "unknown" if cost is None else f"${cost:.2f}",
            "-" if p50 is None or p95 is None else f"{p50:.1f} / {p95:.1f}",
            _pct(row.accuracy))
    return table


def cycle_table(cycles: list[CycleLog]) -> Table:
    table = Table(title="learning cycles: verdicts -> dataset -> train -> gate -> canary -> "
                        "calibrate", title_justify="left")
    for name in ("cycle", "trained on", "candidate", "gate accuracy (vs champion)", "canary",
                 "accept_at", "seconds"):
        table.add_column(name, no_wrap=name in {"cycle", "candidate"}, overflow="fold")
    for c in cycles:
        gate = "-"
        if c.gate_accuracy is not None:
            gate = (f"{_pct(c.gate_accuracy)} vs {_pct(c.champion_gate_accuracy)} "
                    + ("[green]pass[/]" if c.gate_passed else "[red]fail[/]"))
            if c.gate_failed_checks:
                gate += f" ({', '.join(c.gate_failed_checks)})"
        outcome = {"promoted": "[green]promoted[/]", "rolled_back": "[red]rolled back[/]",
                   "gate_failed": "[yellow]not started[/]"}.get(c.outcome, c.outcome)
        canary = " → ".join([*c.steps, outcome]) if c.steps else outcome
        after = c.accept_at_after if c.accept_at_after is not None else c.accept_at_before
        table.add_row(str(c.cycle), f"{c.dataset or '-'} ({c.examples} verdicts)",
                      c.candidate or "-", gate, canary,
                      f"{c.accept_at_before:.3f} → {after:.3f}",
                      f"{sum(c.seconds.values()):.0f}")
    return table


def headline(result: DemoResult, alpha: float) -> str:
    """One paragraph: where coverage, error, review load and cost went."""
    rows = result.rows
    if not rows:
        return "no traffic was served"
    first, last = rows[0], rows[-1]
    errors = [r.error for r in rows if r.error is not None]
    within = sum(r.error is None or r.error <= alpha for r in rows)
    cost = ""
    if first.cost_per_1k_usd is not None and last.cost_per_1k_usd is not None:
        cost = f"; cost per 1,000 calls ${first.cost_per_1k_usd:.2f} → ${last.cost_per_1k_usd:.2f}"
    return (f"coverage {_pct(first.coverage)} → {_pct(last.coverage)}; error of auto-accepted "
            f"answers at most {_pct(max(errors) if errors else None)} "
            f"(≤ α = {alpha:g} in {within} of {len(rows)} phases); review load "
            f"{_pct(first.review_load)} → {_pct(last.review_load)}{cost}; "
            f"{len(result.promoted)} version(s) promoted ({', '.join(result.promoted) or 'none'})")
