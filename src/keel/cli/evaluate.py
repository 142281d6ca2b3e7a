"""``keel eval FEATURE --csv PATH``: a labelled CSV through the feature's champion.

Runs every row through the real pipeline (checks, route, invoke, validate, decide)
and reports accuracy, macro-F1, coverage (the share accepted without a human) and
the accuracy of what was accepted. Events go to a throwaway store unless --db is given.
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
    labels = {t for t, _ in pairs}
    scores = []
    for label in labels:
        denom = 2 * tp[label] + fp[label] + fn[label]
        scores.append(2 * tp[label] / denom if denom else 0.0)
    return sum(scores) / len(scores) if scores else 0.0


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
    csv_path: Annotated[Path, typer.Option("--csv", help="labelled CSV, e.g. ../shared/data/banking77/test.csv")],
    text_column: Annotated[str, typer.Option(help="column with the input text")] = "text",
    label_column: Annotated[str, typer.Option(help="column with the true label")] = "category",
    limit: Annotated[int | None, typer.Option(help="only the first N rows")] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="calls in flight")] = 16,
    config: ConfigOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """Measure a feature's champion on a labelled CSV: accuracy, macro-F1, coverage."""
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
