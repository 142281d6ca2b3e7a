"""``keel events``: the most recent calls as a table."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer
from rich.table import Table

from keel.cli.common import DatabaseOpt, console, fail, settings_for
from keel.store import open_store


def events(
    database: DatabaseOpt = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="how many")] = 20,
    feature: Annotated[str | None, typer.Option(help="only this feature")] = None,
) -> None:
    """Show recent calls: time, feature, version, decision, confidence, latency, cost."""
    settings = settings_for(None, database)
    if not settings.has_store:
        fail(f"no event store at {settings.store_name}; start `keel serve` or pass --db")
    store = open_store(settings)
    rows = store.recent_events(limit=limit, feature=feature)
    table = Table(title=f"{len(rows)} most recent of {store.count_events(feature)} events",
                  title_justify="left")
    for column in ("time", "feature", "version", "decision", "conf", "ms", "cost $", "tries", "trace"):
        table.add_column(column, no_wrap=column in {"time", "decision", "trace"},
                         overflow="fold")
    for row in rows:
        when = dt.datetime.fromtimestamp(row["ts"]).strftime("%H:%M:%S")
        tries = row["attempts"]
        table.add_row(
            when, row["feature"], row["version"] or "-",
            row["decision"] + (f" ({row['error_code']})" if row["error_code"] else ""),
            "-" if row["confidence"] is None else f"{row['confidence']:.2f}",
            f"{row['latency_ms']:.1f}",
            "unknown" if row["cost_usd"] is None else f"{row['cost_usd']:.6g}",
            f"{sum(a['ok'] for a in tries)}/{len(tries)}", row["trace_id"][:12],
        )
    console.print(table)
