"""``keel calibrate FEATURE``: the confidence threshold that keeps the error of
auto-accepted answers at or below alpha, from human verdicts (or a labelled CSV).

Prints the risk–coverage table, the threshold chosen with a finite-sample guarantee
(see docs/calibration.md), each validator's precision and recall against the
reviewers, and with ``--apply`` records the new ``accept_at`` in the store (who,
when, why), which Keel applies over keel.yaml from its next start.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from keel.cli.common import ConfigOpt, DatabaseOpt, console, fail, load, settings_for
from keel.cli.evaluate import read_rows, run_rows
from keel.control.calibrate import TABLE, format_risk_coverage, risk_coverage, validator_quality
from keel.control.calibrate import calibrate as choose
from keel.gateway import Keel
from keel.settings import Settings
from keel.store import open_store
from keel.store.db import DB_ERRORS
from keel.store.policy import record_policy_change


def verdicts(settings: Settings, feature: str) -> tuple[list[float], list[bool], list[list[dict[str, Any]]]]:
    """(confidence, approved as is, validator results) of the closed review items of the
    audit sample (an unbiased sample of calls), or of all closed items when there is none."""
    db = settings.store_name
    if not settings.has_store:
        fail(f"no store at {db}; pass --db, or --csv to calibrate on labelled data")
    store = open_store(settings)
    conn = store.connect()
    try:
        done = ("SELECT confidence, final_verdict, validations FROM review_items WHERE feature = ?"
                " AND status = 'done' AND confidence IS NOT NULL")
        rows = conn.execute(done + " AND audit = 1", (feature,)).fetchall()
        if not rows:
            # only items sent to review for doubt: biased towards low confidence
            rows = conn.execute(done, (feature,)).fetchall()
            if rows:
                console.print("[yellow]no audit sample (review.audit_rate): calibrating on the "
                              "items reviewed for doubt, which over-represent low confidence[/]")
    except DB_ERRORS as exc:
        fail(f"{db} has no review data ({exc}); start keel serve once to create it")
    finally:
        conn.close()
        store.close()
    return ([r[0] for r in rows], [r[1] == "approve" for r in rows],
            [orjson.loads(r[2]) for r in rows])


def from_csv(keel: Keel, feature: str, path: Path, text_column: str, label_column: str,
             limit: int | None) -> tuple[list[float], list[bool]]:
    rows = read_rows(path, text_column, label_column, limit)
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console) as progress:
        outcomes = asyncio.run(run_rows(keel, feature, rows, 16, progress))
    conf, correct = [], []
    for (_, truth), outcome in zip(rows, outcomes, strict=True):
        if outcome.confidence is None:
            continue
        label = outcome.output.get("label") if isinstance(outcome.output, dict) else None
        conf.append(outcome.confidence)
        correct.append(label == truth)
    return conf, correct


def calibrate(
    feature: Annotated[str, typer.Argument(help="feature to calibrate")],
    alpha: Annotated[float, typer.Option(help="target error rate of auto-accepted answers")] = 0.1,
    delta: Annotated[float, typer.Option(help="allowed probability that the guarantee fails")] = 0.1,
    csv_path: Annotated[Path | None, typer.Option("--csv", help="labelled CSV instead of review verdicts")] = None,
    text_column: Annotated[str, typer.Option(help="CSV column with the text")] = "text",
    label_column: Annotated[str, typer.Option(help="CSV column with the true label")] = "category",
    limit: Annotated[int | None, typer.Option(help="only the first N CSV rows")] = None,
    apply: Annotated[bool, typer.Option("--apply", help="record the new accept_at")] = False,
    actor: Annotated[str, typer.Option(help="who is changing the policy (recorded)")] = "cli",
    config: ConfigOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """Choose accept_at so auto-accepted answers are wrong at most alpha of the time."""
    if not 0 < alpha < 1 or not 0 < delta < 1:
        fail("--alpha and --delta must be between 0 and 1")
    settings = settings_for(config, database)
    spec = load(settings)
    if feature not in spec.features:
        fail(f"no feature '{feature}' in {settings.config} (features: {', '.join(spec.features)})")
    validations: list[list[dict[str, Any]]] = []
    if csv_path is not None:
        with tempfile.TemporaryDirectory() as tmp:
            keel = Keel(spec, settings_for(config, Path(tmp) / "calibrate.db"))
            conf, correct = from_csv(keel, feature, csv_path, text_column, label_column, limit)
        source = f"csv:{csv_path}"
    else:
        conf, correct, validations = verdicts(settings, feature)
        source = "review verdicts"
    if not conf:
        fail(f"no labelled items for '{feature}' from {source}: review some outputs first "
             "(set review.audit_rate so accepted answers are sampled too)")
    result = choose(conf, correct, alpha, delta)
    console.print(f"[bold]{feature}[/]: {len(conf)} labelled items from {source}; "
                  f"alpha={alpha}, delta={delta}", highlight=False)
    marks = (*TABLE, result.threshold) if result.threshold is not None else TABLE
    console.print(format_risk_coverage(risk_coverage(conf, correct, alpha, delta, marks),
                                       result.threshold), highlight=False, markup=False)
    current = spec.features[feature].policy.accept_at
    if result.threshold is None:
        console.print(f"[red]no threshold meets alpha={alpha}[/]: {result.reason}", highlight=False)
    else:
        console.print(
            f"accept_at = [bold]{result.threshold:.3f}[/] (now {current}): coverage "
            f"{result.coverage:.3f}, calibration error {result.error or 0:.3f}, "
            f"upper bound {result.ucb or 0:.3f} — {result.reason}", highlight=False)
    _validators_report(validations, correct)
    if apply:
        if result.threshold is None:
            fail("nothing to apply: no threshold meets alpha (raise alpha or gather more verdicts)")
        store = open_store(settings)
        store.migrate()
        record_policy_change(
            store, feature, "accept_at", current, result.threshold,
            actor=actor, source=source,
            details={"alpha": alpha, "delta": delta, "n": result.n, "coverage": result.coverage,
                     "ucb": result.ucb, "method": result.method})
        console.print(f"recorded: accept_at {current} -> {result.threshold:.3f} by {actor}; "
                      "Keel applies it from its next start", highlight=False)


def _validators_report(validations: list[list[dict[str, Any]]], correct: list[bool]) -> None:
    names = sorted({v["validator"] for item in validations for v in item})
    if not names:
        return
    table = Table(title="validators against the reviewers", title_justify="left")
    for column in ("validator", "flagged", "precision", "recall"):
        table.add_column(column)
    for name in names:
        flags = [any(v["validator"] == name and not v["passed"] for v in item) for item in validations]
        q = validator_quality(flags, [not c for c in correct])
        table.add_row(name, str(q.true_pos + q.false_pos),
                      "-" if q.precision is None else f"{q.precision:.2f}",
                      "-" if q.recall is None else f"{q.recall:.2f}")
    console.print(table)
