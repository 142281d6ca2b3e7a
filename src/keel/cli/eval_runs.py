"""Eval runs from the command line: ``keel eval FEATURE`` without ``--csv`` (see
:mod:`keel.cli.evaluate`) and ``keel eval-runs FEATURE``.

Exit codes of ``keel eval``: 0 done (and the gate passed, with ``--gate``), 1 the gate
failed, 2 a usage or configuration error (unknown dataset or version, no gate dataset
pinned, a bad scorer), 130 interrupted (the run can be resumed).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from keel.cli.common import ConfigOpt, DatabaseOpt, console, err_console, fail, load, settings_for
from keel.control.evaluation import EvalRun, EvalRunner, get_run, latest_run, list_runs
from keel.control.evaluation import Progress as OnProgress
from keel.control.gates import GateResult, evaluate_gate, gate_dataset
from keel.errors import KeelError
from keel.gateway import Keel
from keel.store import open_store
from keel.types import JSON

# metrics shown in the table, in this order (scorer means are added after n)
SHOWN = ("accuracy", "macro_f1", "coverage", "error_rate", "latency_p50_ms", "latency_p95_ms",
         "cost_per_call_usd", "mean_confidence")
HIDDEN = frozenset({"n", "scored", "per_label", *SHOWN})


@dataclass(frozen=True, slots=True)
class Report:
    run: EvalRun
    champion_run: EvalRun | None = None
    gate: GateResult | None = None


@contextmanager
def _progress(quiet: bool) -> Iterator[Progress]:
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=err_console, disable=quiet) as progress:
        yield progress


def _bar(progress: Progress, description: str) -> OnProgress:
    task = progress.add_task(description, total=None)

    def advance(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    return advance


async def _evaluate(keel: Keel, feature: str, *, dataset: str | None, version: str | None,
                    split: str | None, scorers: list[str] | None, concurrency: int,
                    resume: str | None, gate: bool, actor: str, quiet: bool) -> Report:
    async with keel:
        runner = EvalRunner(keel)
        target = keel.pipeline.feature(feature)
        gate_spec = target.spec.gate
        champion = target.router.aliases["champion"]
        if resume is not None:
            previous = await asyncio.to_thread(get_run, keel.store, resume)
            if previous.feature != feature or (version and version != previous.version):
                fail(f"run {resume} evaluates {previous.feature} {previous.version}, "
                     f"not {feature} {version or ''}".rstrip())
            dv = await asyncio.to_thread(runner.datasets.version, previous.dataset,
                                         previous.dataset_number)
            version, split = previous.version, previous.split
        else:
            if dataset is not None:
                dv = await asyncio.to_thread(runner.datasets.resolve, dataset)
            else:
                dv = await asyncio.to_thread(gate_dataset, gate_spec, runner.datasets, feature)
            if split is None and (dataset is None or gate):
                split = gate_spec.split
            version = version or champion
        with _progress(quiet) as progress:
            run = await runner.run(
                feature, version, dv, split=split, scorers=scorers, concurrency=concurrency,
                actor=actor, run_id=resume,
                progress=_bar(progress, f"{feature} {version} on {dv.ref}"))
            if not gate:
                return Report(run)
            champion_run = run
            if champion != version:
                names = run.config.get("scorers") or []
                found = await asyncio.to_thread(latest_run, keel.store, feature, champion,
                                                dv.dataset, dv.number, split)
                if found is not None and set(names) <= set(found.config.get("scorers") or []):
                    champion_run = found
                else:
                    champion_run = await runner.run(
                        feature, champion, dv, split=split, scorers=names,
                        concurrency=concurrency, actor=actor,
                        progress=_bar(progress, f"{feature} {champion} (champion) on {dv.ref}"))
        result = await asyncio.to_thread(evaluate_gate, keel.store, gate_spec, run, champion_run)
        return Report(await asyncio.to_thread(get_run, keel.store, run.id), champion_run, result)


def dataset_eval(feature: str, *, dataset: str | None, version: str | None, split: str | None,
                 scorers: list[str] | None, concurrency: int, resume: str | None, gate: bool,
                 json_out: bool, actor: str, limit: int | None, config: Path | None,
                 database: str | None) -> None:
    """``keel eval FEATURE`` on a dataset version: see the module docstring."""
    if limit is not None:
        fail("--limit applies to --csv only (evaluate a split, or a smaller dataset version)")
    settings = settings_for(config, database)
    spec = load(settings)
    if feature not in spec.features:
        fail(f"no feature '{feature}' in {settings.config} (features: {', '.join(spec.features)})")
    try:
        keel = Keel(spec, settings)
        report = asyncio.run(_evaluate(
            keel, feature, dataset=dataset, version=version, split=split, scorers=scorers,
            concurrency=concurrency, resume=resume, gate=gate, actor=actor, quiet=json_out))
    except KeelError as exc:
        fail(exc.message)
    except KeyboardInterrupt:
        stopped = [r for r in list_runs(keel.store, feature, limit=5) if r.status != "done"]
        hint = f": resume it with keel eval {feature} --resume {stopped[0].id}" if stopped else ""
        err_console.print(f"interrupted{hint}", highlight=False)
        raise typer.Exit(130) from None
    if json_out:
        typer.echo(orjson.dumps({
            "run": report.run.to_dict(),
            "champion_run": None if report.champion_run is None else report.champion_run.to_dict(),
            "gate": None if report.gate is None else report.gate.to_dict(),
        }, option=orjson.OPT_INDENT_2).decode())
    else:
        show_run(report.run)
        if report.gate is not None:
            show_gate(report.gate)
    if report.gate is not None and not report.gate.passed:
        raise typer.Exit(1)


def _fmt(value: JSON) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
    return str(value)


def show_run(run: EvalRun) -> None:
    where = run.dataset_ref + (f" split {run.split}" if run.split else "")
    console.print(f"[bold]eval run {run.id}[/]: {run.feature} {run.version} on {where} "
                  f"({run.status})", highlight=False)
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    metrics = run.metrics or {}
    table.add_row("items", f"{run.done}/{run.items}")
    for name in sorted(k for k in metrics if k not in HIDDEN):
        table.add_row(f"{name} (mean)", _fmt(metrics[name]))
    for name in SHOWN:
        if name in metrics:
            table.add_row(name, _fmt(metrics[name]))
    per_label = metrics.get("per_label")
    if isinstance(per_label, dict) and per_label:
        worst = sorted(per_label.items(), key=lambda kv: (kv[1]["f1"], kv[0]))[:5]
        table.add_row("lowest F1", ", ".join(f"{k} {v['f1']:.2f}" for k, v in worst))
    console.print(table)


def show_gate(result: GateResult) -> None:
    verdict = "[bold green]PASSED[/]" if result.passed else "[bold red]FAILED[/]"
    versus = f" vs champion run {result.champion_run}" if result.champion_run and \
        result.champion_run != result.candidate_run else ""
    console.print(f"gate {verdict}: run {result.candidate_run}{versus}", highlight=False)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
    table = Table()
    for column in ("check", "result", "value", "threshold", "detail"):
        table.add_column(column, justify="right" if column in {"value", "threshold"} else "left")
    for check in result.checks:
        result_text = "[yellow]skip[/]" if check.skipped else (
            "[green]pass[/]" if check.passed else "[red]FAIL[/]")
        table.add_row(check.name, result_text,
                      _fmt(check.value), _fmt(check.threshold), check.message)
    if result.checks:
        console.print(table)


def runs(
    feature: Annotated[str, typer.Argument(help="feature whose eval runs to list")],
    version: Annotated[str | None, typer.Option("--version", help="only this version")] = None,
    run_id: Annotated[str | None, typer.Option("--run", metavar="RUN_ID",
                                               help="show one run: metrics and gate")] = None,
    limit: Annotated[int, typer.Option(min=1, help="newest N runs")] = 20,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    config: ConfigOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """List a feature's stored eval runs, newest first (or show one with --run)."""
    settings = settings_for(config, database)
    if not settings.has_store:
        fail(f"no store at {settings.store_name}; pass --db")
    store = open_store(settings)
    store.migrate()
    try:
        found = [get_run(store, run_id)] if run_id else list_runs(store, feature, version, limit)
    except KeelError as exc:
        fail(exc.message)
    if json_out:
        typer.echo(orjson.dumps([r.to_dict() for r in found], option=orjson.OPT_INDENT_2).decode())
        return
    if run_id:
        show_run(found[0])
        if found[0].gate is not None:
            show_gate(GateResult.from_dict(found[0].gate))
        return
    table = Table(title=f"eval runs of {feature}", title_justify="left", box=None)
    for column in ("run", "version", "dataset", "status", "accuracy", "gate", "started"):
        # ids never shrink; long version and dataset names are cut with an ellipsis
        table.add_column(column, no_wrap=True, min_width=12 if column == "run" else None)
    for run in found:
        metrics = run.metrics or {}
        main = metrics.get("accuracy", metrics.get("exact_match"))
        status = run.status if run.status == "done" else f"{run.status} {run.done}/{run.items}"
        table.add_row(run.id, run.version,
                      run.dataset_ref + (f" ({run.split})" if run.split else ""), status,
                      _fmt(main), "-" if run.passed is None else ("pass" if run.passed else "FAIL"),
                      dt.datetime.fromtimestamp(run.started_at).strftime("%m-%d %H:%M"))
    console.print(table)
