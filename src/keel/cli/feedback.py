"""``keel feedback``: end-user feedback and business outcomes, straight from the store
(no server needed). ``list`` prints the latest feedback; ``stats`` the thumbs, ratings,
corrections and outcome rates per version. ``--json`` prints what the API returns."""

from __future__ import annotations

import datetime as dt
import enum
import time
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from keel.cli.common import DatabaseOpt, console, fail, settings_for
from keel.control.feedback import FeedbackStore
from keel.control.feedback_stats import feedback_stats
from keel.store import Store, open_store

app = typer.Typer(name="feedback", no_args_is_help=True, add_completion=False,
                  help="End-user feedback and business outcomes per call, feature and version.")



class KindChoice(enum.StrEnum):
    thumbs = "thumbs"
    rating = "rating"
    comment = "comment"
    correction = "correction"
    outcome = "outcome"


FeatureOpt = Annotated[str | None, typer.Option("--feature", "-f", help="only this feature")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON (as the API answers)")]


def _store(database: Any) -> Store:
    settings = settings_for(None, database)
    if settings.database_url is None and not settings.has_store:
        fail(f"no store at {settings.store_name}; start `keel serve` or pass --db")
    store = open_store(settings)
    store.migrate()
    return store


def _print_json(body: Any) -> None:
    typer.echo(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())


@app.command("list")
def list_feedback(
    feature: FeatureOpt = None,
    trace: Annotated[str | None, typer.Option("--trace", "-t", help="only this call")] = None,
    kind: Annotated[KindChoice | None, typer.Option(help="only this kind")] = None,
    version: Annotated[str | None, typer.Option(help="only this version (routed to)")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=500, help="how many")] = 20,
    database: DatabaseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The latest feedback, newest first."""
    store = _store(database)
    items, total = FeedbackStore(store).list(
        trace_id=trace, feature=feature, kind=None if kind is None else str(kind.value),
        version=version, limit=limit)
    if as_json:
        _print_json({"feedback": [f.to_json() for f in items], "total": total, "limit": limit,
                     "offset": 0})
        return
    if not items:
        console.print("no feedback yet: send some with POST /api/feedback (docs/feedback.md)")
        return
    table = Table(title=f"{len(items)} of {total} piece(s) of feedback", title_justify="left")
    for column in ("when", "trace", "feature", "version", "kind", "value", "source", "comment"):
        table.add_column(column, no_wrap=column in {"when", "trace"}, overflow="fold")
    for f in items:
        body = f.to_json()
        value = body["value"]
        if f.kind == "outcome":
            value = f.name + ("" if f.value is None else f" = {f.value:g}")
        elif f.kind == "correction":
            value = orjson.dumps(f.output).decode()
        table.add_row(_when(f.updated_at), f.trace_id[:12], f.feature, f.routed or f.version or "-",
                      f.kind + (f" (r{f.revision})" if f.revision > 1 else ""),
                      "-" if value is None else str(value), f.source, f.comment or "")
    console.print(table)


@app.command("stats")
def stats(
    feature: Annotated[str, typer.Option("--feature", "-f", help="the feature")],
    days: Annotated[float, typer.Option(min=0.001, help="calls of the last N days")] = 7.0,
    database: DatabaseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Per version: calls, thumbs up share, mean rating, corrections and outcome rates."""
    store = _store(database)
    until = time.time()
    body = feedback_stats(store, feature, until - days * 86400, until)
    if as_json:
        _print_json(body)
        return
    versions: list[dict[str, Any]] = body["versions"]
    if not versions:
        console.print(f"no calls or feedback for '{feature}' in the last {days:g} day(s)")
        return
    outcomes = sorted({name for v in versions for name in v["outcomes"]})
    table = Table(title=f"feedback on {feature}, calls of the last {days:g} day(s)",
                  title_justify="left")
    for column in ("version", "calls", "with feedback", "thumbs up", "rating", "corrections",
                   *outcomes):
        table.add_column(column, justify="left" if column == "version" else "right")
    for v in [*versions, body["totals"]]:
        thumbs, ratings = v["thumbs"], v["ratings"]
        row = [v["version"] or ("all" if v is body["totals"] else "-"), f"{v['calls']:,}",
               f"{v['with_feedback']:,}",
               f"{_pct(thumbs['up_rate'])} of {thumbs['up'] + thumbs['down']}",
               "-" if ratings["mean"] is None else f"{ratings['mean']:.2f} ({ratings['count']})",
               f"{v['corrections']['calls']} ({_pct(v['corrections']['rate'])})"]
        for name in outcomes:
            o = v["outcomes"].get(name)
            row.append("-" if o is None else f"{_pct(o['rate'])} ({o['calls']})")
        table.add_row(*row)
    console.print(table)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%m-%d %H:%M:%S")
