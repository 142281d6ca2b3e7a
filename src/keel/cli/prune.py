"""``keel prune``: apply keel.yaml's retention to the store now, and say what went."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from keel.cli.common import ConfigOpt, DatabaseOpt, console, fail, load, settings_for
from keel.control.retention import TARGETS, Pruner
from keel.store import open_store

_WHAT = {
    "events": ("events", "events_days"),
    "payloads": ("event inputs and outputs", "payloads_days"),
    "closed_reviews": ("closed review items", "closed_reviews_days"),
    "minute_rollups": ("minute rollup rows", "minute_rollups_days"),
    "hour_rollups": ("hour rollup rows", "hour_rollups_days"),
}


def prune(
    config: ConfigOpt = None,
    database: DatabaseOpt = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="count what would go, delete nothing")] = False,
) -> None:
    """Delete what is older than keel.yaml's retention (events, payloads, closed reviews,
    minute and hour rollups), in batches; print what was deleted."""
    settings = settings_for(config, database)
    spec = load(settings)
    if settings.database_url is None and not settings.has_store:
        fail(f"no event store at {settings.store_name}; start `keel serve` or pass --db")
    store = open_store(settings)
    store.migrate()
    pruner = Pruner(store, spec.retention)
    counts = pruner.count() if dry_run else pruner.run().counts
    retention = spec.retention.model_dump()
    table = Table(title="would be pruned (dry run)" if dry_run else "pruned",
                  title_justify="left")
    for column in ("what", "kept for", "rows"):
        table.add_column(column, justify="right" if column == "rows" else "left")
    for target in TARGETS:
        label, key = _WHAT[target]
        days = retention[key]
        table.add_row(label, "for ever" if days is None else f"{days:g} days",
                      f"{counts[target]:,}")
    console.print(table)
    total = sum(counts.values())
    verb = "would delete" if dry_run else "deleted"
    console.print(f"{verb} {total:,} row(s); day rollups and the cost ledger are kept",
                  highlight=False)
