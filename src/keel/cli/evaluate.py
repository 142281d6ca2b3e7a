"""``keel eval FEATURE``: measure a version of a feature.

Two sources of examples:

* ``--csv PATH``: a labelled CSV through the feature's champion, through the real
  pipeline (checks, route, invoke, validate, decide): accuracy, macro-F1, coverage (the
  share accepted without a human) and the accuracy of what was accepted. Events go to a
  throwaway store unless --db is given; nothing else is stored.
* a dataset version (``--dataset NAME[@N]``, default the feature's gate dataset): an
  **eval run** (:mod:`keel.control.evaluation`) of ``--version`` (default the champion),
  stored in the real store, resumable with ``--resume RUN_ID``. ``--gate`` also runs the
  champion on the same dataset version when it has no run there yet, applies the
  feature's gate (:mod:`keel.control.gates`) and exits 1 when it fails (0 when it
  passes, 2 on usage or config errors): a pre-merge check for any CI.

``keel eval-runs FEATURE`` lists stored runs; ``--run ID`` shows one.
"""

from __future__ import annotations

import asyncio
import csv
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from keel.cli.common import ConfigOpt, DatabaseOpt, console, fail, load, settings_for
from keel.cli.eval_runs import dataset_eval
from keel.control.evaluation import classification
from keel.gateway import Keel
from keel.types import Decision, Outcome


def read_rows(path: Path, text_column: str, label_column: str, limit: int | None) -> list[tuple[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = {text_column, label_column} - set(reader.fieldnames or [])
            if missing:
                fail(f"{path}: no column(s) {', '.join(sorted(missing))} "
                     f"(columns: {', '.join(reader.fieldnames or [])})")
            rows = [(r[text_column], r[label_column]) for r in reader]
    except FileNotFoundError:
        fail(f"{path}: file not found")
    return rows[:limit] if limit else rows


def macro_f1(pairs: list[tuple[str, str | None]]) -> float:
    value = classification(pairs)["macro_f1"]
    return float(value) if isinstance(value, int | float) else 0.0


async def run_rows(keel: Keel, feature: str, rows: list[tuple[str, str]], concurrency: int,
               progress: Progress) -> list[Outcome]:
    task = progress.add_task(f"{feature}", total=len(rows))
    results: list[Outcome | None] = [None] * len(rows)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(rows)):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            results[i] = await keel.call(feature, {"text": rows[i][0]})
            progress.advance(task)

    async with keel:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return [r for r in results if r is not None]


def evaluate(
    feature: Annotated[str, typer.Argument(help="feature to evaluate")],
    csv_path: Annotated[Path | None, typer.Option(
        "--csv", help="labelled CSV through the champion, e.g. ../shared/data/banking77/test.csv "
                      "(nothing stored)")] = None,
    text_column: Annotated[str, typer.Option(help="--csv: column with the input text")] = "text",
    label_column: Annotated[str, typer.Option(help="--csv: column with the true label")] = "category",
    limit: Annotated[int | None, typer.Option(help="--csv: only the first N rows")] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="calls in flight")] = 16,
    dataset: Annotated[str | None, typer.Option(
        "--dataset", help="dataset version NAME@N (NAME: its latest) \\[default: the gate's]")] = None,
    version: Annotated[str | None, typer.Option(
        "--version", help="version to evaluate \\[default: the champion]")] = None,
    split: Annotated[str | None, typer.Option(
        help="only this split \\[default: gate.split for the gate dataset or --gate]")] = None,
    scorer: Annotated[list[str] | None, typer.Option(
        "--scorer", help="label, exact_match, regex=PATTERN, json_valid\\[=SCHEMA.json], "
                         "similarity, judge=FEATURE\\[@VERSION]; repeat for several "
                         "\\[default: by output kind]")] = None,
    resume: Annotated[str | None, typer.Option(
        "--resume", metavar="RUN_ID", help="finish an interrupted run")] = None,
    gate: Annotated[bool, typer.Option(
        "--gate", help="apply the feature's gate; exit 1 when it fails")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON, no progress bar")] = False,
    actor: Annotated[str, typer.Option(help="who runs the evaluation (recorded)")] = "cli",
    config: ConfigOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """Measure a version: on a labelled CSV, or as a stored eval run on a dataset version
    (with --gate: a pre-merge check, exit 1 when the gate fails)."""
    if csv_path is None:
        dataset_eval(feature, dataset=dataset, version=version, split=split, scorers=scorer,
                     concurrency=concurrency, resume=resume, gate=gate, json_out=json_out,
                     actor=actor, limit=limit, config=config, database=database)
        return
    given = [name for name, value in (("--dataset", dataset), ("--version", version),
                                      ("--split", split), ("--scorer", scorer),
                                      ("--resume", resume), ("--gate", gate),
                                      ("--json", json_out)) if value]
    if given:
        fail(f"--csv cannot be combined with {', '.join(given)}: those evaluate a stored "
             "dataset version (commit the examples to a dataset first)")
    rows = read_rows(csv_path, text_column, label_column, limit)
    if not rows:
        fail(f"{csv_path}: no rows")
    with tempfile.TemporaryDirectory() as tmp:
        settings = settings_for(config, database or Path(tmp) / "eval.db")
        spec = load(settings)
        if feature not in spec.features:
            fail(f"no feature '{feature}' in {settings.config} (features: {', '.join(spec.features)})")
        keel = Keel(spec, settings)
        start = time.perf_counter()
        with Progress("[progress.description]{task.description}", BarColumn(),
                      MofNCompleteColumn(), TimeRemainingColumn(), console=console) as progress:
            outcomes = asyncio.run(run_rows(keel, feature, rows, concurrency, progress))
        elapsed = time.perf_counter() - start

    def label(o: Outcome) -> str | None:
        return o.output.get("label") if isinstance(o.output, dict) else None

    pairs = [(truth, label(o)) for (_, truth), o in zip(rows, outcomes, strict=True)]
    n = len(pairs)
    correct = sum(t == p for t, p in pairs)
    accepted = [(t, label(o)) for (_, t), o in zip(rows, outcomes, strict=True)
                if o.decision in {Decision.ACCEPTED, Decision.REPAIRED, Decision.FALLBACK}]
    decisions = Counter(str(o.decision) for o in outcomes)
    confs = [o.confidence for o in outcomes if o.confidence is not None]
    table = Table(title=f"{feature} (champion {spec.features[feature].aliases['champion']}) on {csv_path}",
                  title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("examples", str(n))
    table.add_row("accuracy (all answers)", f"{correct / n:.4f}")
    table.add_row("macro-F1", f"{macro_f1(pairs):.4f}")
    table.add_row("coverage (auto-accepted)", f"{len(accepted) / n:.4f}")
    if accepted:
        table.add_row("accuracy of accepted", f"{sum(t == p for t, p in accepted) / len(accepted):.4f}")
    if confs:
        table.add_row("mean confidence", f"{sum(confs) / len(confs):.4f}")
    table.add_row("decisions", ", ".join(f"{k}={v}" for k, v in sorted(decisions.items())))
    table.add_row("throughput", f"{n / elapsed:.1f} calls/s")
    console.print(table)
