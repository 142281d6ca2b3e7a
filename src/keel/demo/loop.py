"""The demo's loop: serve, review, learn, gate, canary, promote, calibrate — N times.

Everything runs through Keel's own parts, in one process, with the HTTP server up:

- **traffic** goes over HTTP to ``/v1/features/intent`` (the server ``keel serve`` runs),
  one call at a time, in the workload's order;
- **reviewers** (:mod:`keel.demo.reviewers`) work the review queue after every ``batch``
  calls; each verdict lands in the ``intent-reviews`` draft;
- **learning**: the draft is committed (:class:`~keel.control.datasets.DatasetStore`),
  the ``local-head`` trainer fits a version on it (:func:`~keel.control.train.train_version`),
  an eval run on the pinned gate set (:class:`~keel.control.evaluation.EvalRunner`) is
  gated against the champion's (:func:`~keel.control.gates.evaluate_gate`);
- **canary**: :class:`~keel.control.rollout.RolloutController` starts the rollout and is
  ticked after every batch; it promotes or rolls back by itself;
- **calibration**: the new champion's eval run on the calibration set goes through
  :func:`keel.control.calibrate.calibrate` (what ``keel calibrate`` runs) and the new
  ``accept_at`` is recorded as ``keel calibrate --apply`` records it.

The demo ticks the controller and refreshes the server's view of the store itself, right
after each change, instead of waiting for the server's timer: so a run is the same for the
same seed (up to float rounding), and never waits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from keel.control.calibrate import calibrate as choose
from keel.control.datasets import DatasetStore, DatasetVersion, SplitPolicy
from keel.control.evaluation import EvalRun, EvalRunner, results
from keel.control.gates import evaluate_gate
from keel.control.registry import VersionRecord
from keel.control.reviews import dataset_for
from keel.control.rollout import controller_for
from keel.control.train import Trained, train_version
from keel.demo.config import ACTOR, FEATURE, DemoConfig, Message, Workload
from keel.demo.report import (
    CallRecord,
    CycleLog,
    DemoResult,
    PhaseCounts,
    ServeStats,
    serve_table,
)
from keel.demo.reviewers import SimulatedReviewers, Tally
from keel.errors import KeelError
from keel.gateway import Keel
from keel.spec import FeatureSpec
from keel.store.policy import record_policy_change

ProgressFn = Callable[[int, int], None]


def _train(keel: Keel, spec: FeatureSpec, dataset: str, name: str,
           progress: ProgressFn) -> tuple[VersionRecord, Trained]:
    """``keel versions train`` with one BLAS thread: the fit shares two CPUs with the
    model's threads (and other work), and a multi-threaded fit measured 7-9 s there
    against 0.3-0.4 s single-threaded."""
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    with threadpool_limits(limits=1, user_api="blas"):
        return train_version(keel.store, FEATURE, spec, dataset, keel.settings.artifacts_dir,
                             actor=ACTOR, name=name, progress=progress)


class OutOfTraffic(Exception):
    """The workload has no messages left for the next batch."""


class Demo:
    def __init__(self, cfg: DemoConfig, workload: Workload, keel: Keel, client: httpx.AsyncClient,
                 console: Console, result: DemoResult, quiet: bool = False) -> None:
        self.cfg = cfg
        self.workload = workload
        self.keel = keel
        self.client = client
        self.console = console
        self.result = result
        self.quiet = quiet
        self.truth: dict[str, Message] = {}
        self.reviewers = SimulatedReviewers(keel, self.truth)
        self.datasets = DatasetStore(keel.store)
        self.runner = EvalRunner(keel)
        self.controller = controller_for(keel.store, keel.spec)
        self.cursor = 0  # the next message of the traffic
        self.gate_set: DatasetVersion | None = None
        self.calibration_set: DatasetVersion | None = None

    # --- what the server serves now --------------------------------------------------

    @property
    def champion(self) -> str:
        return self.keel.features[FEATURE].router.aliases["champion"]

    @property
    def accept_at(self) -> float:
        return self.keel.features[FEATURE].spec.policy.accept_at

    def say(self, cycle: int, text: str) -> None:
        self.console.print(f"[bold]cycle {cycle}[/] · {text}", highlight=False)

    @contextmanager
    def progress(self) -> Iterator[Progress]:
        with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                      MofNCompleteColumn(), TimeElapsedColumn(), console=self.console,
                      transient=True,
                      disable=self.quiet or not self.console.is_terminal) as progress:
            yield progress

    @staticmethod
    def _bar(progress: Progress, task: TaskID) -> ProgressFn:
        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)
        return update

    # --- the run ---------------------------------------------------------------------

    async def run(self) -> None:
        await self.setup()
        self.result.rows.append(await self.serve(0))
        for cycle in range(1, self.cfg.cycles + 1):
            log = CycleLog(cycle, self.champion, self.accept_at)
            self.result.cycles.append(log)
            await self.learn(log)
            self.result.rows.append(await self.serve(cycle))
        self.result.complete = True

    async def setup(self) -> None:
        """The gate set (pinned) and the calibration set as dataset versions; the starting
        champion's threshold calibrated at alpha."""
        t = time.perf_counter()
        w = self.workload
        self.gate_set = await asyncio.to_thread(
            self.datasets.commit, f"{FEATURE}-golden", w.golden, actor=ACTOR,
            note=f"demo gate set: {len(w.golden)} rows of {w.files['test']}")
        await asyncio.to_thread(self.datasets.pin, FEATURE, self.gate_set.dataset,
                                self.gate_set.number, actor=ACTOR)
        self.calibration_set = await asyncio.to_thread(
            self.datasets.commit, f"{FEATURE}-calibration", w.calibration, actor=ACTOR,
            note=f"demo calibration set: {len(w.calibration)} rows of {w.files['train']}, "
                 "never served as traffic")
        self.say(0, f"gate set {self.gate_set.ref} ({self.gate_set.items} test.csv rows, pinned); "
                    f"calibration set {self.calibration_set.ref} ({self.calibration_set.items} "
                    f"train.csv rows); traffic: {len(w.traffic)} train.csv messages")
        before = self.accept_at
        details = await self.calibrate(0, self.champion)
        self.say(0, f"calibrated {self.champion}: accept_at {before:.3f} → {self.accept_at:.3f} "
                    f"(α = {self.cfg.alpha:g}; {details.get('coverage', 0):.1%} of the "
                    f"calibration set auto-accepted) [{time.perf_counter() - t:.1f} s]")

    # --- traffic and reviews ------------------------------------------------------------

    def take(self, n: int) -> list[Message]:
        if self.cursor + n > len(self.workload.traffic):
            raise OutOfTraffic(f"the workload ran out of messages after {self.cursor}")
        batch = self.workload.traffic[self.cursor:self.cursor + n]
        self.cursor += n
        return batch

    async def call(self, message: Message) -> CallRecord:
        try:
            response = await self.client.post(
                f"/v1/features/{FEATURE}",
                json={"input": {"text": message.text}, "user": message.user})
        except httpx.HTTPError:
            return CallRecord(message, None, None, "error", None, None, None, None)
        if response.status_code != 200:
            return CallRecord(message, response.headers.get("x-keel-trace-id"), None, "error",
                              None, None, None, None)
        body = response.json()
        trace_id = body["trace_id"]
        self.truth[trace_id] = message
        output = body.get("output")
        label = output.get("label") if isinstance(output, dict) else None
        total = (body.get("timings_ms") or {}).get("total")
        return CallRecord(message, trace_id, body.get("version"), body["decision"],
                          label if isinstance(label, str) else None, body.get("confidence"),
                          total, body.get("cost_usd"))

    async def batch(self, n: int) -> tuple[list[CallRecord], Tally]:
        """``n`` calls, one after another; then the reviewers work the queue."""
        records = [await self.call(m) for m in self.take(n)]
        await asyncio.to_thread(self.keel.writer.flush)  # their review items are in the store
        return records, await self.reviewers.drain()

    async def serve(self, cycle: int) -> ServeStats:
        version, accept_at = self.champion, self.accept_at
        t = time.perf_counter()
        records: list[CallRecord] = []
        tally = Tally()
        with self.progress() as progress:
            task = progress.add_task(f"cycle {cycle} · serving {version}", total=self.cfg.traffic)
            while len(records) < self.cfg.traffic:
                got, reviewed = await self.batch(min(self.cfg.batch,
                                                     self.cfg.traffic - len(records)))
                records += got
                tally.add(reviewed)
                progress.update(task, completed=len(records),
                                description=f"cycle {cycle} · serving {version} "
                                            f"({tally.items} reviewed)")
        stats = ServeStats(cycle, version, accept_at, self.cfg.alpha, PhaseCounts.of(records),
                           tally.items, tally.slips, tally.items * self.cfg.review_cost_usd,
                           time.perf_counter() - t)
        self.say(cycle, f"served {stats.calls} calls with {version} at accept_at "
                        f"{accept_at:.3f}: coverage {stats.coverage:.1%}, error "
                        f"{(stats.error or 0):.1%}, review load {stats.review_load:.1%} "
                        f"[{stats.seconds:.1f} s]")
        if not self.quiet and cycle < self.cfg.cycles:  # the last one is in the summary
            self.console.print(serve_table([*self.result.rows, stats], self.cfg.alpha))
        return stats

    # --- learning -------------------------------------------------------------------------

    async def learn(self, log: CycleLog) -> None:
        cycle = log.cycle
        t = time.perf_counter()
        spec = self.keel.features[FEATURE].spec
        try:
            data = await asyncio.to_thread(
                self.datasets.commit, dataset_for(FEATURE, spec), actor=ACTOR,
                note=f"demo cycle {cycle}: the verdicts so far",
                split_policy=SplitPolicy((("train", 1.0),)))
        except KeelError as exc:
            log.outcome, log.reason = "no_data", exc.message
            self.say(cycle, f"no dataset to train on: {escape(exc.message)}")
            return
        log.dataset, log.examples = data.ref, data.items
        log.seconds["commit"] = time.perf_counter() - t
        t = time.perf_counter()
        name = f"head-{cycle}"
        with self.progress() as progress:
            task = progress.add_task(f"cycle {cycle} · training {name} on {data.ref}")
            record, trained = await asyncio.to_thread(
                _train, self.keel, spec, data.ref, name, self._bar(progress, task))
        await self._refresh()  # the server loads the new version
        log.candidate, log.train_metrics = record.name, dict(trained.metrics)
        log.seconds["train"] = time.perf_counter() - t
        self.say(cycle, f"{data.ref}: {data.items} verdicts → trained {name} "
                        f"(local-head; {trained.metrics.get('examples')} examples + label "
                        f"sentences) [{log.seconds['train']:.1f} s]")
        t = time.perf_counter()
        if not await self.gate(log):
            log.outcome = "gate_failed"
            log.seconds["gate"] = time.perf_counter() - t
            return
        log.seconds["gate"] = time.perf_counter() - t
        t = time.perf_counter()
        await self.canary(log)
        log.seconds["canary"] = time.perf_counter() - t
        if log.outcome == "promoted":
            t = time.perf_counter()
            details = await self.calibrate(cycle, name)
            log.accept_at_after, log.calibration = self.accept_at, details
            log.seconds["calibrate"] = time.perf_counter() - t
            self.say(cycle, f"calibrated {name}: accept_at {log.accept_at_before:.3f} → "
                            f"{self.accept_at:.3f} [{log.seconds['calibrate']:.1f} s]")

    async def _refresh(self) -> None:
        """Make the server serve what the store says now (it would within a second)."""
        assert self.keel.sync is not None
        await self.keel.sync.refresh(force=True)

    async def _eval(self, progress: Progress, cycle: int, version: str,
                    dataset: DatasetVersion, concurrency: int) -> EvalRun:
        task = progress.add_task(f"cycle {cycle} · eval {version} on {dataset.ref}")
        return await self.runner.run(FEATURE, version, dataset, actor=ACTOR,
                                     concurrency=concurrency, progress=self._bar(progress, task))

    async def gate(self, log: CycleLog) -> bool:
        """``keel eval intent --version CANDIDATE --gate``: True when it passed."""
        assert self.gate_set is not None and log.candidate is not None
        # both versions at once, so their latencies (the gate's p95 guardrail) come from the
        # same minutes of the machine; a champion run from an earlier, quieter minute would
        # make the comparison a measure of the machine's load
        with self.progress() as progress:
            candidate, champion = await asyncio.gather(
                self._eval(progress, log.cycle, log.candidate, self.gate_set,
                           self.cfg.eval_concurrency),
                self._eval(progress, log.cycle, log.champion, self.gate_set,
                           self.cfg.eval_concurrency))
        spec = self.keel.features[FEATURE].spec.gate
        result = await asyncio.to_thread(evaluate_gate, self.keel.store, spec, candidate, champion)
        acc = (candidate.metrics or {}).get("accuracy")
        base = (champion.metrics or {}).get("accuracy")
        log.gate_passed = result.passed
        log.gate_accuracy = float(acc) if isinstance(acc, int | float) else None
        log.champion_gate_accuracy = float(base) if isinstance(base, int | float) else None
        log.gate_failed_checks = [c.name for c in result.checks if not c.passed]
        verdict = "[green]passed[/]" if result.passed else \
            f"[red]failed[/] ({escape('; '.join(c.message for c in result.checks if not c.passed))})"
        self.say(log.cycle, f"gate on {self.gate_set.ref}: {log.candidate} accuracy "
                            f"{(log.gate_accuracy or 0):.1%} vs {log.champion} "
                            f"{(log.champion_gate_accuracy or 0):.1%} → {verdict}")
        return result.passed

    async def canary(self, log: CycleLog) -> None:
        """Start the rollout and send traffic, ticking the controller after every batch,
        until it promotes or rolls back (or, after 3x the calls it should need, by hand)."""
        assert log.candidate is not None
        cycle, candidate = log.cycle, log.candidate
        rollout = await asyncio.to_thread(self.controller.start, FEATURE, candidate, actor=ACTOR)
        await self._refresh()
        log.steps.append(f"{rollout.weight:.0%}")
        budget = 3 * self.cfg.canary_budget()
        records: list[CallRecord] = []
        reviewed = Tally()
        with self.progress() as progress:
            task = progress.add_task(f"cycle {cycle} · canary {candidate}", total=None)
            while rollout.active:
                if len(records) >= budget:
                    await asyncio.to_thread(
                        self.controller.rollback, FEATURE, actor=ACTOR,
                        reason=f"demo: no verdict after {len(records)} calls")
                    break
                got, tally = await self.batch(self.cfg.batch)
                records += got
                reviewed.add(tally)
                transitions = await asyncio.to_thread(self.controller.tick)
                if transitions:
                    await self._refresh()
                for tr in transitions:
                    if tr.to_state == "running" and f"{tr.weight:.0%}" != log.steps[-1]:
                        log.steps.append(f"{tr.weight:.0%}")
                rollout = await asyncio.to_thread(self.controller.rollouts.get, rollout.id)
                progress.update(task, completed=len(records), description=(
                    f"cycle {cycle} · canary {candidate} at {rollout.weight:.0%} "
                    f"({len(records)} calls)"))
        final = await asyncio.to_thread(self.controller.rollouts.get, rollout.id)
        log.outcome, log.reason = final.state, final.reason or ""
        for version in sorted({r.version for r in records if r.version}):
            counts = PhaseCounts.of([r for r in records if r.version == version])
            log.canary[version] = {"calls": counts.calls, "coverage": counts.accepted / counts.calls,
                                   "error": counts.error}
        shares = ", ".join(f"{v}: {c['calls']} calls, {c['coverage']:.0%} auto-accepted, "
                           f"{(c['error'] or 0):.1%} of those wrong" for v, c in log.canary.items())
        self.say(cycle, f"canary #{final.id}: {' → '.join(log.steps)} → {final.state} "
                        f"({shares}; {reviewed.items} reviewed) — {escape(final.reason or '')}")

    # --- calibration ------------------------------------------------------------------------

    async def calibrate(self, cycle: int, version: str) -> dict[str, float | int | str | None]:
        """``keel calibrate`` on the version's eval run over the calibration set, applied."""
        assert self.calibration_set is not None
        with self.progress() as progress:  # latency does not matter here: more at once
            run = await self._eval(progress, cycle, version, self.calibration_set,
                                   4 * self.cfg.eval_concurrency)
        rows = await asyncio.to_thread(results, self.keel.store, run.id)
        conf = [r.confidence for r in rows if r.confidence is not None]
        correct = [r.scores.get("label") == 1.0 for r in rows if r.confidence is not None]
        found = choose(conf, correct, self.cfg.alpha, self.cfg.delta)
        details: dict[str, float | int | str | None] = {
            "alpha": self.cfg.alpha, "delta": self.cfg.delta, "n": found.n,
            "coverage": found.coverage, "error": found.error, "ucb": found.ucb,
            "method": found.method, "eval_run": run.id, "reason": found.reason}
        if found.threshold is None:
            self.say(cycle, f"[yellow]no threshold meets α for {version}[/]: {escape(found.reason)}; "
                            f"accept_at stays {self.accept_at:.3f}")
            return details
        await asyncio.to_thread(
            record_policy_change, self.keel.store, FEATURE, "accept_at", self.accept_at,
            found.threshold, actor=ACTOR,
            source=f"eval run {run.id} of {version} on {self.calibration_set.ref}",
            details={k: v for k, v in details.items() if k != "reason"})
        await self._refresh()
        return details
