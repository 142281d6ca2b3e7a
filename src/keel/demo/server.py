"""The demo's HTTP server: what ``keel serve`` runs (the same app on uvicorn), in this
process and on this event loop, so the demo can drive the control plane between calls
while the dashboard, the API and ``/metrics`` show everything as it happens."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from dataclasses import replace

import uvicorn

from keel.errors import ConfigError, KeelError
from keel.gateway import Keel
from keel.server import create_app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (0: any free port); a clear error when it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is in use (a `keel serve`?): pass --port "
                              "with another port, or --port 0 for any free one") from None
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


class DemoServer:
    """Starts with :meth:`start` (the app's lifespan starts the Keel), stops with
    :meth:`stop` (the lifespan closes it: the event writer is drained)."""

    def __init__(self, keel: Keel, host: str, port: int) -> None:
        self.keel = keel
        self.sock = bind(host, port)
        self.port = int(self.sock.getsockname()[1])
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(
            create_app(keel), log_level="warning", access_log=False,
            timeout_graceful_shutdown=10, loop="none", http="httptools", lifespan="on"))
        self.task: asyncio.Task[None] | None = None

    async def start(self, timeout_s: float = 120.0) -> None:
        # as `keel serve` does: start Keel before the socket serves, so a model that cannot
        # load is a clear error (the lifespan's start is then a no-op; its close drains)
        try:
            await self.keel.start()
        except KeelError as exc:
            self.sock.close()
            raise ConfigError(exc.message) from None
        self.task = asyncio.get_running_loop().create_task(self.server.serve(sockets=[self.sock]))
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not self.server.started:
            if self.task.done():
                self.task.result()  # re-raises what stopped it
                raise ConfigError("the server stopped while starting (see the log above)")
            if asyncio.get_running_loop().time() > deadline:
                raise ConfigError(f"the server did not start within {timeout_s:.0f} s")
            await asyncio.sleep(0.05)

    @property
    def stopping(self) -> bool:
        """The server was asked to stop (Ctrl-C or SIGTERM: uvicorn catches them)."""
        return self.server.should_exit or (self.task is not None and self.task.done())

    def follow_store(self, interval_s: float = 1.0) -> None:
        """From now on behave as ``keel serve``: follow the store every interval and lead
        the rollout controller (the demo drove both itself until now)."""
        keel = self.keel
        keel.settings = replace(keel.settings, control_interval_s=interval_s)
        if keel.sync is not None:
            keel.sync.start()

    async def wait(self) -> None:
        """Until the server stops (Ctrl-C)."""
        if self.task is not None:
            await self.task

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.sock.close()
