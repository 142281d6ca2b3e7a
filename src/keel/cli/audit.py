"""``keel audit``: the audit trail of control-plane changes (docs/access.md).

``list`` shows the newest rows; ``verify`` walks the hash chain and exits 1 naming the
first row that was changed, deleted or inserted behind Keel's back.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import orjson
import typer
from rich.markup import escape
from rich.table import Table

from keel.cli.common import ConfigOpt, DatabaseOpt, console, err_console, settings_for
from keel.control import audit
from keel.store import Store, open_store

app = typer.Typer(help="The audit trail of control-plane changes: list, verify.",
                  no_args_is_help=True)


def _store(config: ConfigOpt, database: DatabaseOpt) -> Store:
    store = open_store(settings_for(config, database))
    store.migrate()
    return store


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


@app.command("list")
def list_entries(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="rows to show")] = 20,
    target: Annotated[str | None, typer.Option(
        "--target", help="only this target and below it (a feature: intent)")] = None,
    config: ConfigOpt = None, database: DatabaseOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The newest changes first: when, who, what, on what."""
    rows = audit.entries(_store(config, database), limit=limit, target=target)
    if as_json:
        console.print_json(orjson.dumps([e.to_json() for e in rows]).decode())
        return
    table = Table(title="audit trail (newest first)", title_justify="left")
    for col in ("#", "when (UTC)", "actor", "action", "target", "details"):
        table.add_column(col)
    for e in rows:
        details = orjson.dumps(e.details).decode()
        table.add_row(str(e.seq), _when(e.ts), escape(e.actor), e.action, escape(e.target),
                      escape(details if len(details) <= 120 else details[:119] + "…"))
    console.print(table)


@app.command("verify")
def verify(config: ConfigOpt = None, database: DatabaseOpt = None) -> None:
    """Check the hash chain: exit 0 when intact, 1 naming the first bad row."""
    result = audit.verify(_store(config, database))
    if result.ok:
        console.print(f"audit trail intact: {result.rows} row(s); head {result.head}",
                      highlight=False)
        return
    err_console.print(f"[bold red]audit trail broken at row {result.bad_seq}:[/] "
                      f"{escape(result.problem or '')} ({result.rows} row(s) before it are "
                      "intact)", highlight=False, soft_wrap=True)
    raise typer.Exit(1)
