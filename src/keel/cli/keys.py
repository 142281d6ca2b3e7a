"""``keel keys``: API keys from the command line (docs/access.md).

``create`` makes a key and prints it once (only its sha256 is kept), ``list`` shows ids,
prefixes, names, roles and features, ``revoke`` ends one. Running servers take a new
key at once and drop a revoked one within seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.table import Table

from keel.cli.common import ConfigOpt, DatabaseOpt, console, err_console, fail, settings_for
from keel.control import keys
from keel.control.registry import cli_actor
from keel.errors import KeelError
from keel.spec import load_spec
from keel.store import Store, open_store

app = typer.Typer(help="API keys: create (shown once), list, revoke.", no_args_is_help=True)


def open_keys(config: Path | None, database: str | None) -> tuple[Store, frozenset[str] | None]:
    """The store (migrated), and keel.yaml's feature names when it can be read."""
    settings = settings_for(config, database)
    store = open_store(settings)
    store.migrate()
    names = None
    if settings.config.is_file():
        try:
            names = frozenset(load_spec(settings.config).features)
        except KeelError as exc:
            fail(exc.message)
    return store, names


@app.command("create")
def create(
    name: Annotated[str, typer.Option("--name", help="who or what uses the key (unique among live keys)")],
    role: Annotated[str, typer.Option("--role", help=f"one of {', '.join(keys.ROLES)}")],
    feature: Annotated[list[str] | None, typer.Option(
        "--feature", help="limit the key to this feature (repeat for more); default: all")] = None,
    config: ConfigOpt = None, database: DatabaseOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create a key and print it, once: store it where its user can read it."""
    store, known = open_keys(config, database)
    if feature and known is not None and set(feature) - known:
        fail(f"no feature {', '.join(sorted(set(feature) - known))} in keel.yaml "
             f"(features: {', '.join(sorted(known))})")
    try:
        record, secret = keys.create(store, name, role, feature or None, actor=cli_actor())
    except KeelError as exc:
        fail(exc.message)
    if as_json:
        console.print_json(orjson.dumps({**record.to_json(), "key": secret}).decode())
        return
    print(secret, flush=True)  # alone on stdout, so `KEY=$(keel keys create ...)` works
    scope = ", ".join(record.features) if record.features else "every feature"
    err_console.print(f"key {record.id} '{name}' ({record.role}, {scope}); it is shown "
                      "only now", highlight=False)


@app.command("list")
def list_keys(
    config: ConfigOpt = None, database: DatabaseOpt = None,
    revoked: Annotated[bool, typer.Option("--revoked", help="include revoked keys")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Keys by id and prefix (never the keys themselves), oldest first."""
    store, _ = open_keys(config, database)
    found = keys.list_keys(store, include_revoked=revoked)
    if as_json:
        console.print_json(orjson.dumps([k.to_json() for k in found]).decode())
        return
    if not found:
        console.print("no API keys (create one: keel keys create --name NAME --role admin)")
        return
    table = Table(title="API keys", title_justify="left")
    for col in ("id", "prefix", "name", "role", "features", "created by", "revoked"):
        table.add_column(col)
    for k in found:
        table.add_row(k.id, k.prefix + "…", k.name, k.role,
                      ", ".join(k.features) if k.features else "all", k.created_by,
                      f"by {k.revoked_by}" if k.revoked_at is not None else "")
    console.print(table)


@app.command("revoke")
def revoke(
    key: Annotated[str, typer.Argument(help="the key's id (or its name)")],
    config: ConfigOpt = None, database: DatabaseOpt = None,
) -> None:
    """Revoke a key: servers refuse it within seconds."""
    store, _ = open_keys(config, database)
    try:
        record = keys.revoke(store, key, actor=cli_actor())
    except KeelError as exc:
        fail(exc.message)
    console.print(f"revoked key {record.id} '{record.name}' ({record.role})", highlight=False)
