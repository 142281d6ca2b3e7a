"""What the commands share: options, loading the config, and printing errors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from keel.errors import ConfigError
from keel.settings import Settings
from keel.spec import KeelSpec, load_spec

console = Console()
err_console = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="keel.yaml to load [env KEEL_CONFIG; default ./keel.yaml]")
]
DatabaseOpt = Annotated[
    str | None, typer.Option("--db", help="the store: a SQLite file, or a postgresql://... URL "
                             "[env KEEL_DATABASE / KEEL_DATABASE_URL; default ./keel.db]")
]


def fail(message: str, code: int = 2) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def settings_for(config: Path | None, database: Path | str | None, **overrides: object) -> Settings:
    """Settings for a one-off command: its Keel never runs the control-plane loop (a
    short-lived command must not take the leader lease from a server)."""
    overrides.setdefault("control_interval_s", 0.0)
    if isinstance(database, str) and "://" in database:  # --db postgresql://...
        return Settings.from_env(None, config=config, database_url=database, **overrides)
    path = None if database is None else Path(database)
    settings = Settings.from_env(None, config=config, database=path, **overrides)
    if path is not None and settings.database_url is not None:
        settings = replace(settings, database_url=None)  # --db names the store: it wins
    return settings


def load(settings: Settings) -> KeelSpec:
    try:
        return load_spec(settings.config)
    except ConfigError as exc:
        fail(exc.message)
