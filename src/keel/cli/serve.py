"""``keel serve``: the HTTP server on the embedded default or a configured store."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import typer
import uvicorn
import uvloop

from keel.cli.common import ConfigOpt, DatabaseOpt, console, err_console, fail, load, settings_for
from keel.control.keys import list_keys
from keel.errors import KeelError
from keel.gateway import Keel
from keel.server import create_app
from keel.server.access import is_loopback
from keel.settings import Settings
from keel.store import open_store

log = logging.getLogger("keel.server")


def check_access(settings: Settings) -> str | None:
    """Refuse (exit 2) to serve a non-loopback address with no API key anywhere, unless
    --insecure-no-auth says so (then loudly). Else the line to print when it is open."""
    if settings.api_keys:
        return None
    store = open_store(settings)
    store.migrate()
    if list_keys(store):
        return None
    if is_loopback(settings.host):
        return ("no API keys: anyone on this machine can call it (create one with `keel keys "
                "create --name NAME --role admin`; docs/access.md)")
    if not settings.insecure_no_auth:
        fail(f"refusing to serve on {settings.host} without API keys: anyone who can reach it "
             "could call every feature and change the control plane. Create a key with `keel "
             "keys create --name NAME --role admin` (or set KEEL_API_KEYS), bind to 127.0.0.1, "
             "or pass --insecure-no-auth if this network is really private")
    message = (f"INSECURE: serving {settings.host} with no API keys (--insecure-no-auth): anyone "
               "who can reach this address can call every feature and change the control plane")
    log.warning(message)
    err_console.print(f"[bold red]{message}[/]", highlight=False)
    return message


def serve_workers(keel: Keel, settings: Settings, workers: int, log_level: str,
                  open_access: str | None) -> None:
    """Check that Keel starts (the model loads, the store migrates) in this process, then
    let uvicorn's supervisor run ``workers`` processes of :func:`keel.server.workers.app`."""
    from keel.server import workers as worker_app

    async def check() -> None:
        try:
            await keel.start()
        except KeelError as exc:
            fail(exc.message)
        finally:
            await keel.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(check())
    console.print(f"[bold]keel[/] serving {len(keel.spec.features)} feature(s) "
                  f"({', '.join(keel.spec.features)}) on http://{settings.host}:{settings.port} "
                  f"with {workers} workers — store: {settings.store_name}", highlight=False)
    if open_access:
        console.print(open_access, style="yellow", highlight=False)
    worker_app.export(settings)
    uvicorn.run("keel.server.workers:app", factory=True, host=settings.host, port=settings.port,
                workers=workers, log_level=log_level, access_log=False, loop="uvloop",
                http="httptools", timeout_graceful_shutdown=30)


def serve(
    config: ConfigOpt = None,
    database: DatabaseOpt = None,
    host: Annotated[str | None, typer.Option(help="address to bind [env KEEL_HOST; default 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="port [env KEEL_PORT; default 8000]")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "warning",
    insecure_no_auth: Annotated[bool, typer.Option(
        "--insecure-no-auth", help="serve a non-loopback address although no API key exists: "
        "anyone who can reach it may do anything (never on a shared network)")] = False,
    workers: Annotated[int, typer.Option(
        min=1, help="worker processes sharing the port (each a Keel; they share the store, "
        "and Redis when KEEL_REDIS_URL is set; docs/scale-out.md)")] = 1,
) -> None:
    """Serve every feature of keel.yaml over HTTP (OpenAI-compatible API + feature API)."""
    settings = settings_for(config, database, host=host, port=port, control_interval_s=None,
                            insecure_no_auth=insecure_no_auth or None)
    open_access = check_access(settings)
    spec = load(settings)
    try:
        keel = Keel(spec, settings)
    except KeelError as exc:
        fail(exc.message)
    if workers > 1:
        serve_workers(keel, settings, workers, log_level, open_access)
        return
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
            f"— store: {settings.store_name}", highlight=False,
        )
        if open_access:
            console.print(open_access, style="yellow", highlight=False)
        await server.serve()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())
