"""Gates: what an eval run must show before its version may be champion.

:func:`evaluate_gate` applies a feature's :class:`~keel.spec.GateSpec` to a finished
candidate run and, when there is one, the champion's run on the same dataset version
and split, and stores the result on the candidate's run (``eval_runs.gate``/``passed``):

* **floors / ceilings** — ``metric >= floor`` / ``metric <= ceiling`` on the candidate's
  metrics (``accuracy``, ``macro_f1``, ``latency_p95_ms``, a scorer's name, or a dotted
  path such as ``per_label.card_arrival.f1``). A metric the run did not measure fails.
* **non-inferiority** — the candidate may be at most ``delta`` worse than the champion.
  Per item i, d_i = candidate_i − champion_i on a per-item metric (a scorer; ``accuracy``
  is the label scorer, 1 right / 0 wrong). Items are resampled with replacement
  ``resamples`` times (a seeded numpy generator: the same runs give the same answer); the
  one-sided lower bound is the (1 − confidence) quantile of the resampled mean(d). It
  passes when that bound is above −delta. Pairing removes the item-difficulty variance
  both versions share, so the bound is much tighter than comparing two accuracies.
* **guardrails** — candidate p95 latency / champion's ``<= max_latency_ratio``; candidate
  cost per call / champion's ``<= max_cost_ratio`` (skipped, with a note, when either
  cost is unknown or both are zero; a paid candidate against a free champion fails).

A candidate that *is* the champion passes the comparisons trivially; so does a first
version with no champion run to compare with (``champion_run=None``), with a note.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import orjson

from keel.control.datasets import DatasetStore, DatasetVersion, parse_ref
from keel.control.evaluation import EvalRun, get_run, paired_scores
from keel.errors import ControlConflict, DatasetNotFound, GateRequired
from keel.spec import GateSpec, NonInferioritySpec
from keel.store.db import Store
from keel.types import JSON

__all__ = ["GateCheck", "GateResult", "bootstrap_lower_bound", "evaluate_gate", "gate_dataset",
           "metric_value", "passing_run"]


@dataclass(frozen=True, slots=True)
class GateCheck:
    name: str
    passed: bool
    value: float | None
    threshold: float | None
    message: str
    skipped: bool = False  # passed because it could not be judged (see message)


@dataclass(frozen=True, slots=True)
class GateResult:
    passed: bool
    checks: list[GateCheck]
    candidate_run: str
    champion_run: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, JSON]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, JSON]) -> GateResult:
        return cls(bool(data["passed"]), [GateCheck(**c) for c in data["checks"]],
                   data["candidate_run"], data.get("champion_run"), list(data.get("notes") or []))


def metric_value(metrics: dict[str, JSON] | None, name: str) -> float | None:
    """A run's metric by name or dotted path (``per_label.x.f1``); None when absent."""
    value: JSON = metrics
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def bootstrap_lower_bound(diffs: list[float] | np.ndarray, confidence: float, resamples: int,
                          seed: int = 0) -> float:
    """The one-sided ``confidence`` lower bound of mean(diffs) by the percentile bootstrap."""
    d = np.asarray(diffs, dtype=np.float64)
    n = d.size
    if n == 0:
        raise ValueError("no paired items")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples, dtype=np.float64)
    chunk = max(1, 2_000_000 // n)  # bounded memory for large datasets
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        means[start:stop] = d[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return float(np.quantile(means, 1 - confidence))


def _bounds(spec: GateSpec, metrics: dict[str, JSON] | None) -> list[GateCheck]:
    checks = []
    bounds = [("floor", name, limit) for name, limit in spec.floors.items()]
    bounds += [("ceiling", name, limit) for name, limit in spec.ceilings.items()]
    for kind, name, limit in bounds:
        value = metric_value(metrics, name)
        if value is None:
            known = ", ".join(k for k in metrics or {} if metric_value(metrics, k) is not None)
            checks.append(GateCheck(f"{kind} {name}", False, None, limit,
                                    f"{name} was not measured (measured: {known})"))
            continue
        sign = ">=" if kind == "floor" else "<="
        passed = value >= limit if kind == "floor" else value <= limit
        checks.append(GateCheck(f"{kind} {name}", passed, value, limit,
                                f"{name} {value:.4g} {sign if passed else 'fails ' + sign} {limit:g}"))
    return checks


def _non_inferiority(store: Store, spec: NonInferioritySpec, candidate: EvalRun,
                     champion: EvalRun) -> GateCheck:
    name = f"non-inferiority {spec.metric}"
    try:
        a, b = paired_scores(store, candidate.id, champion.id, spec.metric)
    except ValueError:
        return GateCheck(name, False, None, -spec.delta,
                         f"{spec.metric} is not a per-item metric of these runs (use a scorer "
                         "name or accuracy; put corpus metrics such as macro_f1 in floors)")
    if not a:
        return GateCheck(name, False, None, -spec.delta,
                         f"no items with {spec.metric} in both runs")
    diffs = np.asarray(a) - np.asarray(b)
    lower = bootstrap_lower_bound(diffs, spec.confidence, spec.resamples, spec.seed)
    passed = lower > -spec.delta
    return GateCheck(
        name, passed, lower, -spec.delta,
        f"mean difference {diffs.mean():+.4f} over {diffs.size} items; {spec.confidence:.0%} "
        f"lower bound {lower:+.4f} {'>' if passed else '<='} -{spec.delta:g}")


def _ratio(name: str, metric: str, limit: float, candidate: EvalRun, champion: EvalRun,
           unit: str, slack: float = 0.0) -> GateCheck:
    """``candidate / champion <= limit``; a difference of at most ``slack`` passes anyway
    (ratios of a few milliseconds are scheduling noise, not a slower version)."""
    mine = metric_value(candidate.metrics, metric)
    theirs = metric_value(champion.metrics, metric)
    if mine is None or theirs is None:
        return GateCheck(name, True, None, limit,
                         f"skipped: {metric} unknown for the "
                         f"{'candidate' if mine is None else 'champion'}", skipped=True)
    if theirs == 0:
        if mine == 0:
            return GateCheck(name, True, None, limit, f"skipped: {metric} is 0 for both",
                             skipped=True)
        return GateCheck(name, False, None, limit,
                         f"champion {metric} is 0, candidate's {mine:.4g}{unit}: no ratio bounds "
                         "that (set the gate's ratio to null to allow it)")
    ratio = mine / theirs
    within = ratio <= limit
    passed = within or mine - theirs <= slack
    note = "" if within or not passed else f" (within the {slack:g}{unit} slack)"
    return GateCheck(name, passed, ratio, limit,
                     f"{mine:.4g}{unit} vs champion {theirs:.4g}{unit}: x{ratio:.3f} "
                     f"{'<=' if within else '>'} x{limit:g}{note}")


def evaluate_gate(store: Store, spec: GateSpec, candidate_run: EvalRun | str,
                  champion_run: EvalRun | str | None) -> GateResult:
    """Apply ``spec`` and store the result on the candidate's run. The runs must be done
    and, for the comparisons, on the same dataset version and split."""
    candidate = get_run(store, candidate_run) if isinstance(candidate_run, str) else candidate_run
    champion = get_run(store, champion_run) if isinstance(champion_run, str) else champion_run
    for run in (candidate, champion):
        if run is not None and run.status != "done":
            raise ControlConflict(f"eval run {run.id} is {run.status}, not done: finish it "
                                  f"first (keel eval {run.feature} --resume {run.id})")
    checks = _bounds(spec, candidate.metrics)
    notes: list[str] = []
    comparisons = spec.non_inferiority is not None or spec.max_latency_ratio is not None \
        or spec.max_cost_ratio is not None
    if champion is None:
        if comparisons:
            notes.append("no champion run to compare with: non-inferiority and guardrails skipped")
    elif champion.id == candidate.id or champion.version == candidate.version:
        if comparisons:
            notes.append("the candidate is the champion: comparisons pass trivially")
    elif (champion.feature, champion.dataset, champion.dataset_number, champion.split) != (
            candidate.feature, candidate.dataset, candidate.dataset_number, candidate.split):
        checks.append(GateCheck(
            "same dataset", False, None, None,
            f"champion run {champion.id} is on {champion.dataset_ref}"
            f"{' split ' + champion.split if champion.split else ''}, the candidate's on "
            f"{candidate.dataset_ref}{' split ' + candidate.split if candidate.split else ''}"))
    else:
        if spec.non_inferiority is not None:
            checks.append(_non_inferiority(store, spec.non_inferiority, candidate, champion))
        if spec.max_latency_ratio is not None:
            checks.append(_ratio("latency p95 ratio", "latency_p95_ms", spec.max_latency_ratio,
                                 candidate, champion, " ms", spec.latency_slack_ms))
        if spec.max_cost_ratio is not None:
            checks.append(_ratio("cost per call ratio", "cost_per_call_usd", spec.max_cost_ratio,
                                 candidate, champion, " USD"))
    result = GateResult(all(c.passed for c in checks), checks, candidate.id,
                        None if champion is None else champion.id, notes)
    record = {**result.to_dict(), "spec": spec.model_dump(mode="json")}
    with store.connection() as conn, conn:
        conn.execute("UPDATE eval_runs SET gate = ?, passed = ? WHERE id = ?",
                     (orjson.dumps(record).decode(), int(result.passed), candidate.id))
    return result


def passing_run(store: Store, feature: str, version: str, dataset: str,
                number: int) -> str | None:
    """The id of the latest done run of ``version`` on ``dataset@number`` whose gate passed."""
    with store.connection() as conn:
        row = conn.execute(
            "SELECT id FROM eval_runs WHERE feature = ? AND version = ? AND dataset = ?"
            " AND dataset_number = ? AND status = 'done' AND passed = 1"
            " ORDER BY finished_at DESC LIMIT 1", (feature, version, dataset, number)).fetchone()
    return None if row is None else str(row[0])


def gate_dataset(spec: GateSpec, datasets: DatasetStore, feature: str) -> DatasetVersion:
    """The dataset version a feature is gated on: ``gate.dataset`` 'name@N'; a bare 'name'
    at the version pinned with ``keel data pin``; no ``gate.dataset``: the pinned version.
    GateRequired when none of these says which."""
    pinned = datasets.pinned(feature)
    if spec.dataset is None:
        if pinned is not None:
            return datasets.version(*pinned)
        raise GateRequired(
            f"feature '{feature}' has no gate dataset: set gate.dataset in keel.yaml "
            f"(e.g. dataset: {feature}-golden@1), pin one (keel data pin {feature} "
            f"{feature}-golden@1) or pass --dataset NAME@N")
    name, number = parse_ref(spec.dataset)
    if number is not None:
        return datasets.version(name, number)
    if pinned is None or pinned[0] != name:
        try:
            latest = f"@{datasets.version(name).number}"
        except DatasetNotFound:
            latest = "@1"
        found = f" (pinned now: {pinned[0]}@{pinned[1]})" if pinned else ""
        raise GateRequired(
            f"feature '{feature}' is gated on dataset '{name}' but no version of it is "
            f"pinned{found}: pin one: keel data pin {feature} {name}{latest}")
    return datasets.version(name, pinned[1])
