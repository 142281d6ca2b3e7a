"""Eval runs: one version of a feature scored on one dataset version.

:class:`EvalRunner` sends every item of the dataset version (or one split of it) through
``keel.call(feature, item.input, pin=version)`` — exactly that version, no canary split,
no fallback, no event, no review — ``concurrency`` at a time, scores each output with the
run's scorers (:mod:`keel.control.scorers`) and stores it in ``eval_results`` in batches.
At the end it computes the run's metrics and marks it ``done``.

A run is resumable. Cancelled (Ctrl-C, a cancelled task) it writes what it has and turns
``interrupted``; killed it stays ``running``. Either way ``run(..., run_id=ID)`` (CLI:
``keel eval --resume ID``) evaluates only the items with no result yet, and the finished
run's metrics are those of an uninterrupted one.

Stored per item (``eval_results``): ``output`` holds ``{"output", "decision",
"confidence"}`` of the outcome (output None when the call failed), ``scores`` the scores
by scorer name (None: not applicable), ``latency_ms`` the call's total time, ``cost_usd``
its cost (None: unknown), ``error`` why the call or a scorer failed.

Metrics (``eval_runs.metrics``): ``n``; the mean of each scorer over the items it
applies to; with the ``label`` scorer ``accuracy`` (its mean), ``macro_f1`` (over the
labels that occur in the expected answers) and ``per_label`` precision / recall / F1 /
support, else ``accuracy`` is the mean of ``exact_match`` when it ran; ``coverage`` (share decided accepted, repaired or fallback: served with no
human), ``error_rate``, ``latency_p50_ms``, ``latency_p95_ms``, ``cost_per_call_usd``
(None when any call's cost is unknown) and ``mean_confidence``.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from keel.control.datasets import DatasetStore, DatasetVersion, Item
from keel.control.scorers import (
    Scorer,
    build_scorers,
    default_scorers,
    finite,
    judge_via_keel,
    label_of,
)
from keel.errors import ControlConflict, DatasetNotFound, EvalRunNotFound, VersionNotFound
from keel.gateway import local_embedder
from keel.store.db import Store
from keel.types import JSON, Decision

if TYPE_CHECKING:
    from keel.gateway import Keel

__all__ = [
    "EvalResult", "EvalRun", "EvalRunner", "Progress", "compute_metrics", "get_run",
    "latest_run", "list_runs", "paired_scores",
]

Progress = Callable[[int, int], None]  # (items done, items in the run)
SERVED = frozenset({Decision.ACCEPTED.value, Decision.REPAIRED.value, Decision.FALLBACK.value})
BATCH = 64  # results written per transaction


@dataclass(frozen=True, slots=True)
class EvalRun:
    id: str
    feature: str
    version: str
    dataset: str
    dataset_number: int
    dataset_digest: str
    split: str | None
    status: str  # running | interrupted | done
    config: dict[str, JSON]
    metrics: dict[str, JSON] | None
    gate: dict[str, JSON] | None
    passed: bool | None
    items: int
    done: int
    actor: str
    started_at: float
    finished_at: float | None

    @property
    def dataset_ref(self) -> str:
        return f"{self.dataset}@{self.dataset_number}"

    def to_dict(self) -> dict[str, JSON]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class EvalResult:
    item_hash: str
    output: JSON
    decision: str
    confidence: float | None
    scores: dict[str, float | None]
    latency_ms: float | None
    cost_usd: float | None
    error: str | None = None


# --- the store ------------------------------------------------------------------------


def _loads(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def _dumps(value: object) -> str:
    return orjson.dumps(value).decode()


def _run(row: Any) -> EvalRun:
    return EvalRun(
        id=row["id"], feature=row["feature"], version=row["version"], dataset=row["dataset"],
        dataset_number=row["dataset_number"], dataset_digest=row["dataset_digest"],
        split=row["split"], status=row["status"], config=orjson.loads(row["config"]),
        metrics=_loads(row["metrics"]), gate=_loads(row["gate"]),
        passed=None if row["passed"] is None else bool(row["passed"]), items=row["items"],
        done=row["done"], actor=row["actor"], started_at=row["started_at"],
        finished_at=row["finished_at"])


def get_run(store: Store, run_id: str) -> EvalRun:
    with store.connection() as conn:
        row = conn.execute("SELECT * FROM eval_runs WHERE id = ?", (run_id,)).fetchone()
    if row is None:
        raise EvalRunNotFound(f"no eval run '{run_id}' (list them: keel eval-runs FEATURE)",
                              param="run_id")
    return _run(row)


def list_runs(store: Store, feature: str, version: str | None = None,
              limit: int = 100) -> list[EvalRun]:
    """A feature's runs (of one version), newest first."""
    sql, args = "SELECT * FROM eval_runs WHERE feature = ?", [feature]
    if version is not None:
        sql += " AND version = ?"
        args.append(version)
    with store.connection() as conn:
        rows = conn.execute(sql + " ORDER BY started_at DESC LIMIT ?", (*args, limit)).fetchall()
    return [_run(r) for r in rows]


def latest_run(store: Store, feature: str, version: str, dataset: str, number: int,
               split: str | None, *, status: str | None = "done") -> EvalRun | None:
    """The newest run of this version on this dataset version and split (``done`` ones
    only unless ``status`` says otherwise; None: any status)."""
    sql = ("SELECT * FROM eval_runs WHERE feature = ? AND version = ? AND dataset = ?"
           " AND dataset_number = ? AND " + ("split IS NULL" if split is None else "split = ?"))
    args: list[Any] = [feature, version, dataset, number, *([] if split is None else [split])]
    if status is not None:
        sql += " AND status = ?"
        args.append(status)
    with store.connection() as conn:
        row = conn.execute(sql + " ORDER BY started_at DESC LIMIT 1", args).fetchone()
    return None if row is None else _run(row)


def results(store: Store, run_id: str) -> list[EvalResult]:
    with store.connection() as conn:
        rows = conn.execute("SELECT * FROM eval_results WHERE run_id = ? ORDER BY item_hash",
                            (run_id,)).fetchall()
    out = []
    for row in rows:
        envelope = orjson.loads(row["output"]) if row["output"] else {}
        out.append(EvalResult(row["item_hash"], envelope.get("output"),
                              envelope.get("decision", Decision.ERROR.value),
                              envelope.get("confidence"), orjson.loads(row["scores"]),
                              row["latency_ms"], row["cost_usd"], row["error"]))
    return out


def per_item(result: EvalResult, metric: str) -> float | None:
    """One item's value of a per-item metric: a scorer's name; ``accuracy`` (the label
    scorer, else exact_match); ``latency_ms``; ``cost_usd``; ``error`` (1 when it failed)."""
    if metric == "accuracy":
        metric = "label" if "label" in result.scores else "exact_match"
    if metric == "latency_ms":
        return result.latency_ms
    if metric == "cost_usd":
        return result.cost_usd
    if metric == "error":
        return float(result.decision == Decision.ERROR.value)
    return result.scores.get(metric)


def paired_scores(store: Store, run_a: str, run_b: str,
                  metric: str) -> tuple[list[float], list[float]]:
    """Per-item values of ``metric`` in two runs, aligned on item_hash; items without a
    value in either run are left out. Raises ValueError when neither run measures it."""
    a = {r.item_hash: per_item(r, metric) for r in results(store, run_a)}
    b = {r.item_hash: per_item(r, metric) for r in results(store, run_b)}
    if a and b and all(v is None for v in a.values()) and all(v is None for v in b.values()):
        raise ValueError(f"'{metric}' is not a per-item metric of these runs")
    both = sorted(h for h in a.keys() & b.keys() if a[h] is not None and b[h] is not None)
    return [float(a[h]) for h in both], [float(b[h]) for h in both]  # type: ignore[arg-type]


def _create(store: Store, run: EvalRun) -> None:
    with store.connection() as conn, conn:
        conn.execute(
            "INSERT INTO eval_runs (id, feature, version, dataset, dataset_number, dataset_digest,"
            " split, status, config, items, done, actor, started_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (run.id, run.feature, run.version, run.dataset, run.dataset_number,
             run.dataset_digest, run.split, run.status, _dumps(run.config), run.items, run.done,
             run.actor, run.started_at))


def _set_status(store: Store, run_id: str, status: str) -> None:
    with store.connection() as conn, conn:
        conn.execute("UPDATE eval_runs SET status = ? WHERE id = ?", (status, run_id))


def _write(store: Store, run_id: str, batch: Sequence[EvalResult]) -> None:
    """One transaction: the results (a result already there is kept) and ``done``."""
    rows = [(run_id, r.item_hash, _dumps({"output": r.output, "decision": r.decision,
                                          "confidence": r.confidence}),
             _dumps(r.scores), r.latency_ms, r.cost_usd, r.error) for r in batch]
    with store.connection() as conn, conn:
        conn.executemany("INSERT INTO eval_results VALUES (?,?,?,?,?,?,?) ON CONFLICT DO NOTHING", rows)
        conn.execute("UPDATE eval_runs SET done = (SELECT COUNT(*) FROM eval_results"
                     " WHERE run_id = ?) WHERE id = ?", (run_id, run_id))


def _finish(store: Store, run_id: str, metrics: dict[str, JSON]) -> None:
    with store.connection() as conn, conn:
        conn.execute("UPDATE eval_runs SET status = 'done', metrics = ?, finished_at = ?"
                     " WHERE id = ?", (_dumps(metrics), time.time(), run_id))


def _done_hashes(store: Store, run_id: str) -> set[str]:
    with store.connection() as conn:
        return {r[0] for r in conn.execute(
            "SELECT item_hash FROM eval_results WHERE run_id = ?", (run_id,))}


# --- metrics --------------------------------------------------------------------------


def classification(pairs: Sequence[tuple[str, str | None]]) -> dict[str, JSON]:
    """accuracy, macro-F1 (over the expected labels) and per-label precision / recall /
    F1 / support from (expected, predicted) pairs; predicted None: no label (an error)."""
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for truth, pred in pairs:
        if pred == truth:
            tp[truth] += 1
        else:
            fn[truth] += 1
            if pred is not None:
                fp[pred] += 1
    truths = {t for t, _ in pairs}
    per_label: dict[str, JSON] = {}
    for label in sorted(truths | set(fp)):
        p_den, r_den = tp[label] + fp[label], tp[label] + fn[label]
        precision = tp[label] / p_den if p_den else 0.0
        recall = tp[label] / r_den if r_den else 0.0
        f1_den = 2 * tp[label] + fp[label] + fn[label]
        per_label[label] = {"precision": precision, "recall": recall,
                            "f1": 2 * tp[label] / f1_den if f1_den else 0.0, "support": r_den}
    f1s = [per_label[label]["f1"] for label in truths]
    return {"accuracy": sum(tp.values()) / len(pairs) if pairs else None,
            "macro_f1": sum(f1s) / len(f1s) if f1s else None, "per_label": per_label}


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def compute_metrics(rows: Sequence[EvalResult], expected: dict[str, JSON]) -> dict[str, JSON]:
    """A run's metrics from its results; ``expected`` maps item_hash -> expected answer."""
    n = len(rows)
    metrics: dict[str, JSON] = {"n": n}
    names = sorted({name for r in rows for name in r.scores})
    for name in names:
        values = [v for r in rows if (v := r.scores.get(name)) is not None]
        metrics[name] = _mean(values)
    metrics["scored"] = {name: sum(r.scores.get(name) is not None for r in rows) for name in names}
    if "label" in names:
        pairs = [(truth, label_of(r.output)) for r in rows
                 if (truth := label_of(expected.get(r.item_hash))) is not None]
        metrics.update(classification(pairs))
    elif "exact_match" in names:  # what "accuracy" means without labels: exact answers
        metrics["accuracy"] = metrics["exact_match"]
    metrics["coverage"] = sum(r.decision in SERVED for r in rows) / n if n else None
    metrics["error_rate"] = sum(r.decision == Decision.ERROR.value for r in rows) / n if n else None
    latencies = [r.latency_ms for r in rows if r.latency_ms is not None]
    if latencies:
        p50, p95 = np.percentile(np.asarray(latencies, dtype=np.float64), [50, 95])
        metrics["latency_p50_ms"], metrics["latency_p95_ms"] = float(p50), float(p95)
    else:
        metrics["latency_p50_ms"] = metrics["latency_p95_ms"] = None
    costs = [r.cost_usd for r in rows]
    metrics["cost_per_call_usd"] = (None if not costs or any(c is None for c in costs)
                                    else sum(c for c in costs if c is not None) / n)
    metrics["mean_confidence"] = _mean([r.confidence for r in rows if r.confidence is not None])
    return metrics


# --- running --------------------------------------------------------------------------


class EvalRunner:
    def __init__(self, keel: Keel, *, batch_size: int = BATCH) -> None:
        self.keel = keel
        self.store = keel.store
        self.datasets = DatasetStore(keel.store)
        self.batch_size = batch_size

    def scorers_for(self, feature: str, specs: Sequence[str] | None) -> tuple[list[str], list[Scorer]]:
        """The scorer specs (the feature's defaults when None) and the scorers built."""
        kind = self.keel.pipeline.feature(feature).spec.output.kind
        local = self.keel.providers.get("local")
        embed = local_embedder(local) if local is not None else None
        names = list(specs) if specs else default_scorers(kind, embeddings=embed is not None)
        return names, build_scorers(names, kind=kind, embed=embed,
                                    judge=lambda f, v: judge_via_keel(self.keel, f, v))

    async def run(
        self,
        feature: str,
        version: str,
        dataset: str | DatasetVersion,
        *,
        split: str | None = None,
        scorers: Sequence[str | Scorer] | None = None,
        concurrency: int = 16,
        actor: str,
        progress: Progress | None = None,
        run_id: str | None = None,
    ) -> EvalRun:
        """Evaluate ``version`` of ``feature`` on a dataset version ("name@N", "name" for
        its latest, or a DatasetVersion). ``scorers``: specs such as ``"regex=^A"`` or
        Scorer objects; default: the feature's (see :func:`default_scorers`). ``run_id``:
        resume that run (same feature, version, dataset version and split), scoring with
        the scorers it was started with unless others are given."""
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        target = self.keel.pipeline.feature(feature)
        if version not in target.targets:
            loaded = ", ".join(sorted(target.targets)) or "none"
            raise VersionNotFound(f"feature '{feature}' has no version '{version}' loaded "
                                  f"(loaded: {loaded})", param="version")
        dv = dataset if isinstance(dataset, DatasetVersion) else await asyncio.to_thread(
            self.datasets.resolve, dataset)
        previous = None
        if run_id is not None:
            previous = await asyncio.to_thread(get_run, self.store, run_id)
            mine = (previous.feature, previous.version, previous.dataset, previous.dataset_number,
                    previous.split)
            if mine != (feature, version, dv.dataset, dv.number, split):
                raise ControlConflict(
                    f"run {run_id} evaluates {previous.feature} {previous.version} on "
                    f"{previous.dataset_ref}" + (f" split {previous.split}" if previous.split else "")
                    + "; resume it with the same feature, version, dataset and split")
            if previous.status == "done":
                return previous
        given = scorers if scorers is not None else (
            previous.config.get("scorers") if previous is not None else None)
        names, built = self._scorers(feature, given)
        items = await asyncio.to_thread(self.datasets.items, dv.dataset, dv.number, split)
        if not items:
            where = f"{dv.dataset}@{dv.number}" + (f" split '{split}'" if split else "")
            splits = ", ".join(f"{k} ({v})" for k, v in sorted(dv.splits.items())) or "none"
            raise DatasetNotFound(f"{where} has no items (splits: {splits})", param="split")
        if previous is None:
            run = EvalRun(
                id=secrets.token_hex(6), feature=feature, version=version, dataset=dv.dataset,
                dataset_number=dv.number, dataset_digest=dv.digest, split=split,
                status="running", config={"scorers": names, "concurrency": concurrency},
                metrics=None, gate=None, passed=None, items=len(items), done=0, actor=actor,
                started_at=time.time(), finished_at=None)
            await asyncio.to_thread(_create, self.store, run)
        else:
            run = previous
            await asyncio.to_thread(_set_status, self.store, run.id, "running")
        done = await asyncio.to_thread(_done_hashes, self.store, run.id)
        pending = [item for item in items if item.item_hash not in done]
        await self._evaluate_all(run, pending, built, concurrency, len(done), len(items), progress)
        rows = await asyncio.to_thread(results, self.store, run.id)
        metrics = compute_metrics(rows, {item.item_hash: item.expected for item in items})
        await asyncio.to_thread(_finish, self.store, run.id, metrics)
        return await asyncio.to_thread(get_run, self.store, run.id)

    def _scorers(self, feature: str,
                 given: Sequence[str | Scorer] | None) -> tuple[list[str], list[Scorer]]:
        """Specs are built (none given: the defaults); Scorer objects are used as they are
        and recorded by name (a resume must pass them again)."""
        specs = [s for s in given or [] if isinstance(s, str)]
        objects = [s for s in given or [] if not isinstance(s, str)]
        names, built = self.scorers_for(feature, specs) if specs or not objects else ([], [])
        return names + [s.name for s in objects], built + objects

    async def _evaluate_all(self, run: EvalRun, pending: list[Item], scorers: list[Scorer],
                            concurrency: int, done: int, total: int,
                            progress: Progress | None) -> None:
        queue = iter(pending)  # shared by the workers: one event loop, no lock needed
        buffer: list[EvalResult] = []
        # one writer thread: batches land in order, and an interrupted run can wait for
        # the batch in flight before writing the rest
        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keel-eval-writer")
        write_lock = asyncio.Lock()
        count = done
        if progress is not None:
            progress(count, total)

        async def flush() -> None:
            async with write_lock:
                batch = buffer[:]
                del buffer[:]
                if batch:  # shielded: a cancel must not drop a batch not yet started
                    write = writer.submit(_write, self.store, run.id, batch)
                    await asyncio.shield(asyncio.wrap_future(write))

        async def worker() -> None:
            nonlocal count
            for item in queue:
                buffer.append(await self.evaluate(run.feature, run.version, item, scorers))
                count += 1
                if progress is not None:
                    progress(count, total)
                if len(buffer) >= self.batch_size:
                    await flush()

        tasks = [asyncio.create_task(worker()) for _ in range(min(concurrency, len(pending)))]
        try:
            await asyncio.gather(*tasks)
            await flush()
        except BaseException:
            for task in tasks:
                task.cancel()
            # waited for here, not awaited: the task may be being cancelled, and what was
            # evaluated must land so that a resume does not evaluate it again
            writer.submit(_write, self.store, run.id, buffer[:]).result()
            writer.submit(_set_status, self.store, run.id, "interrupted").result()
            raise
        finally:
            writer.shutdown(wait=False)

    async def evaluate(self, feature: str, version: str, item: Item,
                       scorers: Sequence[Scorer]) -> EvalResult:
        """One item: the pinned call, then every scorer. Failures are results, not raises."""
        error: str | None = None
        try:
            outcome = await self.keel.call(feature, item.input, pin=version)
        except Exception as exc:  # bad input (a RequestError) or a bug: an error result
            code = getattr(exc, "code", type(exc).__name__)
            output, decision, confidence, latency, cost = None, Decision.ERROR.value, None, None, None
            error = f"{code}: {getattr(exc, 'message', exc)}"
        else:
            failed = outcome.decision is Decision.ERROR
            output = None if failed else outcome.output
            decision, confidence = outcome.decision.value, outcome.confidence
            latency, cost = outcome.timings_ms.get("total"), outcome.cost_usd
            if failed:
                error = f"{outcome.error_code}: {outcome.error}"
        scores: dict[str, float | None] = {}
        for scorer in scorers:
            try:
                scores[scorer.name] = finite(await scorer.score(item.input, item.expected, output))
            except Exception as exc:  # a judge that failed: no score, and why
                scores[scorer.name] = None
                note = f"scorer {scorer.name}: {type(exc).__name__}: {exc}"
                error = note if error is None else f"{error}; {note}"
        return EvalResult(item.item_hash, output, decision, confidence, scores, latency, cost,
                          error)
