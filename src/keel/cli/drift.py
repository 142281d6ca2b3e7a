"""``keel drift FEATURE``: has a feature's traffic drifted from its reference?

Straight on the store (no server needed). One row per time window, one column per
compared column: the test's value — ``p`` (the Benjamini–Hochberg adjusted p-value of a
KS, chi-square or MMD test), ``W`` (normalised Wasserstein), ``JS`` (Jensen–Shannon
distance) or ``AUC`` (embedding classifier) — marked ``▲`` when it drifted; then the alert
status. See docs/drift.md.

Exit codes: 0 (an alert too: it is printed), 1 with ``--fail-on-alert`` when the report
alerts, 2 a usage or configuration error.
"""

from __future__ import annotations

from typing import Annotated

import orjson
import typer
from rich.table import Table

from keel.cli.common import ConfigOpt, DatabaseOpt, console, fail, load, settings_for
from keel.control.drift import (
    MAX_WINDOWS,
    DriftReport,
    Reference,
    TestResult,
    drift_report,
    fmt_time,
    parse_duration,
    parse_time,
)
from keel.control.drift_tests import P_VALUE_METHODS
from keel.errors import KeelError
from keel.store import open_store

_SHORT = {"ks": "p", "chi2": "p", "mmd": "p", "wasserstein": "W", "jensen_shannon": "JS",
          "classifier_auc": "AUC"}


def _cell(result: TestResult | None) -> str:
    if result is None or result.method is None:
        return "[dim]-[/]"
    if result.method in P_VALUE_METHODS:
        p = result.p_adjusted
        text = "p -" if p is None else ("p<0.001" if p < 0.001 else f"p={p:.3f}")
    else:
        text = f"{_SHORT[result.method]} {result.statistic or 0:.3f}"
    return f"[bold red]{text} ▲[/]" if result.drifted else text


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def show(report: DriftReport) -> None:
    title = (f"drift of {report.feature}: {len(report.windows)} window(s) of "
             f"{_duration(report.window_s)} against {report.reference.description or 'nothing'}")
    table = Table(title=title, title_justify="left", box=None)
    table.add_column("window (UTC)", no_wrap=True)
    table.add_column("events", justify="right")
    for column in report.columns:
        table.add_column(column.name, justify="right", overflow="fold")
    table.add_column("drift")
    for w in report.windows:
        if w.role == "reference":
            verdict = "[dim]reference[/]"
        elif w.role == "untested":
            verdict = "[dim]-[/]"
        else:
            verdict = ("[bold red]ALERT[/]" if w.alert else "[red]drift[/]" if w.drifted
                       else "[green]ok[/]")
        cells = [("" if w.role == "reference" else _cell(w.columns.get(c.name)))
                 for c in report.columns]
        table.add_row(fmt_time(w.start), f"{w.n:,}", *cells, verdict)
    console.print(table)
    th = report.thresholds
    console.print(f"[dim]p: Benjamini–Hochberg adjusted p-value of KS / chi-square / MMD (drift "
                  f"below {th.alpha:g}); W: normalised Wasserstein (above {th.wasserstein:g}); "
                  f"JS: Jensen–Shannon distance (above {th.jensen_shannon:g}); AUC: embedding "
                  f"classifier (above {th.auc:g})[/]", highlight=False)
    if report.skipped:
        console.print("not compared: " + "; ".join(f"{name} ({why})" for name, why in
                                                   report.skipped.items()), highlight=False)
    for note in report.notes:
        console.print(f"note: {note}", highlight=False)
    drifted = ", ".join(report.drifted_columns()) or "none"
    if report.alert:
        since = report.alert_since
        state = "ongoing" if report.alert_active else "over by the last window"
        console.print(f"[bold red]ALERT[/]: drift in two windows in a row from "
                      f"{fmt_time(since) if since is not None else '-'} ({state}); drifted "
                      f"columns: {drifted}", highlight=False)
    elif report.drifted_windows:
        console.print(f"[yellow]no alert[/]: {report.drifted_windows} drifted window(s), never "
                      f"two in a row; drifted columns: {drifted}", highlight=False)
    else:
        console.print("[green]no alert[/]: no window drifted", highlight=False)
    t = report.timings
    if "load_s" in t:
        console.print(f"[dim]read {int(t.get('rows', 0)):,} events in {t['load_s']:.2f} s, "
                      f"tests {t['tests_s']:.2f} s, embeddings {t['embeddings_s']:.2f} s[/]",
                      highlight=False)


def drift(
    feature: Annotated[str, typer.Argument(help="the feature")],
    window: Annotated[str | None, typer.Option(
        "--window", "-w", help="window size: seconds, or 30m, 1h, 1d, 1w (default 1d)")] = None,
    windows: Annotated[int | None, typer.Option(
        "--windows", min=1, max=MAX_WINDOWS,
        help="instead of --window: cut since..until into N equal windows")] = None,
    since: Annotated[str | None, typer.Option(
        help="start: epoch seconds, an ISO date or time (UTC), or an age such as 7d "
             "(default: the first event)")] = None,
    until: Annotated[str | None, typer.Option(
        help="end (exclusive), as --since (default: after the last event)")] = None,
    reference: Annotated[str, typer.Option(
        help="window (the first window, or --reference-start..--reference-end), champion "
             "(its latest eval run's data) or dataset:NAME@N")] = "window",
    reference_start: Annotated[str | None, typer.Option(help="reference range start")] = None,
    reference_end: Annotated[str | None, typer.Option(help="reference range end")] = None,
    columns: Annotated[str | None, typer.Option(
        help="comma-separated: text_length, language, pii, label, confidence, review, refused, "
             "latency_ms, cost_usd, input_tokens, output_tokens, embedding, input.FIELD, "
             "output.FIELD (optionally :numeric or :categorical) (default: the built-in ones)")] = None,
    embeddings: Annotated[bool, typer.Option(
        "--embeddings/--no-embeddings",
        help="also compare the input texts' embeddings (local model, ~1 s per window)")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    fail_on_alert: Annotated[bool, typer.Option(
        "--fail-on-alert", help="exit 1 when the report alerts (for CI)")] = False,
    config: ConfigOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """Compare a feature's traffic, window by window, with a reference; alert on two
    drifted windows in a row."""
    settings = settings_for(config, database)
    if not settings.has_store:
        fail(f"no store at {settings.store_name}; start `keel serve` or pass --db")
    spec = load(settings)
    fspec = spec.features.get(feature)
    if fspec is None:
        fail(f"no feature '{feature}' in {settings.config} (features: {', '.join(spec.features)})")
    store = open_store(settings)
    store.migrate()
    try:
        report = drift_report(
            store, feature,
            window=None if window is None else parse_duration(window, "--window"),
            windows=windows,
            since=None if since is None else parse_time(since, "--since"),
            until=None if until is None else parse_time(until, "--until"),
            reference=Reference.parse(
                reference,
                None if reference_start is None else parse_time(reference_start, "--reference-start"),
                None if reference_end is None else parse_time(reference_end, "--reference-end")),
            columns=None if columns is None else [c.strip() for c in columns.split(",") if c.strip()],
            embeddings=embeddings,
            text_field=fspec.input.text_field if fspec.output.kind != "chat" else None,
            champion=fspec.aliases.get("champion"))
    except KeelError as exc:
        fail(exc.message)
    if json_out:
        typer.echo(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        show(report)
    if fail_on_alert and report.alert:
        raise typer.Exit(1)
