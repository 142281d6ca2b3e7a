"""``keel check CONFIG``: validate a keel.yaml without starting anything."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from keel.cli.common import console, fail
from keel.errors import ConfigError
from keel.spec import load_spec


def check(
    config: Annotated[Path, typer.Argument(help="the keel.yaml to check")] = Path("keel.yaml"),
) -> None:
    """Validate a keel.yaml: exit 0 and list its features, or name every problem and exit 2."""
    try:
        spec = load_spec(config)
    except ConfigError as exc:
        fail(exc.message)
    table = Table(title=f"{config}: OK", title_justify="left")
    for column in ("feature", "output", "champion", "versions", "fallbacks", "validators"):
        table.add_column(column)
    for name, feature in spec.features.items():
        table.add_row(
            name,
            feature.output.kind + (f" ({len(feature.output.labels)} labels)" if feature.output.labels else ""),
            feature.aliases["champion"],
            ", ".join(f"{v} [{s.provider}:{s.model}]" for v, s in feature.versions.items()),
            ", ".join(feature.fallbacks) or "-",
            ", ".join(f"{v.type}->{v.on_fail}" for v in feature.validators) or "-",
        )
    console.print(table)
