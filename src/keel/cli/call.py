"""``keel call FEATURE JSON``: one call in-process, printed as the API would answer it."""

from __future__ import annotations

from typing import Annotated

import orjson
import typer

from keel.cli.common import ConfigOpt, DatabaseOpt, console, fail, load, settings_for
from keel.errors import KeelError
from keel.gateway import open_sync
from keel.server.schema import outcome_body


def call(
    feature: Annotated[str, typer.Argument(help="feature name")],
    input: Annotated[str, typer.Argument(help='the input as JSON, e.g. \'{"text": "hi"}\'')],
    config: ConfigOpt = None,
    database: DatabaseOpt = None,
    user: Annotated[str | None, typer.Option(help="end-user id to record")] = None,
) -> None:
    """Call a feature once, without a server, and print the outcome as JSON."""
    try:
        data = orjson.loads(input)
    except orjson.JSONDecodeError as exc:
        fail(f"INPUT is not valid JSON: {exc}")
    if not isinstance(data, dict):
        fail('INPUT must be a JSON object, e.g. \'{"text": "my card has not arrived"}\'')
    settings = settings_for(config, database)
    spec = load(settings)
    try:
        with open_sync(settings, spec) as keel:
            outcome = keel.call(feature, data, user=user)
    except KeelError as exc:
        fail(f"{exc.code}: {exc.message}")
    console.print_json(orjson.dumps(outcome_body(outcome)).decode())
    if outcome.error_code:
        raise typer.Exit(1)
