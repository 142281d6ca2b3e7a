"""What the commands share: options, loading the config, and printing errors."""

from __future__ import annotations

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
    Path | None, typer.Option("--db", help="SQLite file for events [env KEEL_DATABASE; default ./keel.db]")
]


def fail(message: str, code: int = 2) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def settings_for(config: Path | None, database: Path | None, **overrides: object) -> Settings:
    """Settings for a one-off command: its Keel never runs the control-plane loop (a
    short-lived command must not take the leader lease from a server)."""
    overrides.setdefault("control_interval_s", 0.0)
    return Settings.from_env(None, config=config, database=database, **overrides)


def load(settings: Settings) -> KeelSpec:
    try:
        return load_spec(settings.config)
    except ConfigError as exc:
        fail(exc.message)
