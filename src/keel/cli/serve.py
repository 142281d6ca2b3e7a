"""``keel serve``: the HTTP server on the embedded default or a configured store."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
import uvicorn
import uvloop

from keel.cli.common import ConfigOpt, DatabaseOpt, console, fail, load, settings_for
from keel.errors import KeelError
from keel.gateway import Keel
from keel.server import create_app

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def serve(
    config: ConfigOpt = None,
    database: DatabaseOpt = None,
    host: Annotated[str | None, typer.Option(help="address to bind [env KEEL_HOST; default 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="port [env KEEL_PORT; default 8000]")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "warning",
) -> None:
    """Serve every feature of keel.yaml over HTTP (OpenAI-compatible API + feature API)."""
    settings = settings_for(config, database, host=host, port=port, control_interval_s=None)
    if not settings.api_keys and settings.host not in LOOPBACK:
        fail(f"refusing to serve on {settings.host} without API keys: anyone who can reach it "
             "could spend your model budget. Set KEEL_API_KEYS, or bind to 127.0.0.1")
    spec = load(settings)
    try:
        keel = Keel(spec, settings)
    except KeelError as exc:
        fail(exc.message)
    app = create_app(keel)
    server = uvicorn.Server(uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=log_level, access_log=False,
        timeout_graceful_shutdown=30, loop="none", http="httptools"))

    async def run() -> None:
        # start here, before the socket opens, so a model or head that cannot load is a
        # clear error and exit 2; the app's lifespan closes Keel (draining the events)
        try:
            await keel.start()
        except KeelError as exc:
            fail(exc.message)
        console.print(
            f"[bold]keel[/] serving {len(spec.features)} feature(s) "
            f"({', '.join(spec.features)}) on http://{settings.host}:{settings.port} "
            f"— events in {settings.database}", highlight=False,
        )
        if not settings.api_keys:
            console.print("no API keys set (KEEL_API_KEYS): open to this machine only",
                          style="yellow", highlight=False)
        await server.serve()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())
