"""Fault injection shared by the fake upstreams: the failure modes, their per-request
state, and :class:`FakeServer`, the harness that runs a fake on a real port and can stop
listening on it (``refuse``).

A fake answers each request in the mode :meth:`Faults.take` hands it; the modes are the
same for every wire format, only the bodies differ:

================  ========================================================================
mode              what the fake does
================  ========================================================================
ok                answers normally
delay             answers normally after ``delay_s`` (a stream: headers at once, then the
                  first chunk after ``delay_s``: a slow time to first token)
timeout           holds the request ``hang_s`` before answering it normally
error             500 (server error)
bad_gateway       502
unavailable       503
rate_limit        429 with ``Retry-After: retry_after``
bad_request       400
auth              401 (invalid API key)
invalid_json      200 with a body that is not JSON (a stream: ``after_chunks`` good chunks,
                  then a malformed one)
cut_stream        streams only: ``after_chunks`` chunks, then the connection is closed
stall_stream      streams only: ``after_chunks`` chunks, then nothing for ``hang_s``
stream_error      streams only: ``after_chunks`` chunks, then an in-stream error event
refuse            the port stops listening: connections are refused (see below)
================  ========================================================================

Every mode but ``refuse`` can be limited to the next ``times`` requests. A non-streaming
request is answered normally in a stream-only mode and does not use up one of its
``times``. ``refuse`` closes the listening socket and the idle keep-alive connections, and
holds the port (bound, not listening) so nothing else takes it; it lasts ``refuse_s``
seconds, or until the next ``set_mode`` / ``reset`` when None. It needs a running server
(``start``, a context manager, or ``serve``). Over HTTP, give ``refuse_s``: nothing can
reach ``/_fake/mode`` while the fake refuses. :func:`closed_base_url` is a URL no server
listens on, for a test that only needs a refused connection.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self, get_args

import uvicorn

FakeMode = Literal[
    "ok", "delay", "timeout", "error", "bad_gateway", "unavailable", "rate_limit",
    "bad_request", "auth", "invalid_json", "cut_stream", "stall_stream", "stream_error",
    "refuse",
]
FAKE_MODES: frozenset[str] = frozenset(get_args(FakeMode))
STREAM_ONLY: frozenset[str] = frozenset({"cut_stream", "stall_stream", "stream_error"})
# the modes that answer with an HTTP error status at once
ERROR_STATUS: dict[str, int] = {
    "error": 500, "bad_gateway": 502, "unavailable": 503, "rate_limit": 429,
    "bad_request": 400, "auth": 401,
}

Receive = Callable[[], Awaitable[Any]]  # an ASGI receive


@dataclass(frozen=True, slots=True)
class Fault:
    """The failure one request gets, with the parameters it was set with."""

    mode: FakeMode
    retry_after: float | str = 1
    hang_s: float = 30.0
    delay_s: float = 0.1
    after_chunks: int = 2


class Faults:
    """The current mode and how many more requests get it; counts requests. Thread-safe:
    tests steer it from their thread while the server's thread answers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fault = Fault("ok")
        self._times: int | None = None
        self.requests = 0
        self.generation = 0  # bumped by every set(): a stale refuse timer sees the change

    @property
    def mode(self) -> FakeMode:
        return self._fault.mode

    @property
    def times(self) -> int | None:
        return self._times

    def set(self, mode: FakeMode = "ok", *, times: int | None = None,
            retry_after: float | str = 1, hang_s: float = 30.0, delay_s: float = 0.1,
            after_chunks: int = 2) -> int:
        """Validate and install a mode; returns its generation."""
        if mode not in FAKE_MODES:
            raise ValueError(f"unknown fake mode {mode!r} (known: {', '.join(sorted(FAKE_MODES))})")
        if times is not None and (isinstance(times, bool) or not isinstance(times, int)
                                  or times < 1):
            raise ValueError(f"times must be an integer >= 1 or None, not {times!r}")
        if mode == "refuse" and times is not None:
            raise ValueError("times does not apply to refuse (a refused connection is never "
                             "seen): use refuse_s, or set another mode")
        for name, value in (("hang_s", hang_s), ("delay_s", delay_s)):
            if not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, not {value!r}")
        if not isinstance(retry_after, str) and (
                not isinstance(retry_after, int | float) or retry_after < 0):
            raise ValueError(f"retry_after must be seconds >= 0 or an HTTP-date, not "
                             f"{retry_after!r}")
        if isinstance(after_chunks, bool) or not isinstance(after_chunks, int) or after_chunks < 0:
            raise ValueError(f"after_chunks must be an integer >= 0, not {after_chunks!r}")
        fault = Fault(mode, retry_after, float(hang_s), float(delay_s), after_chunks)
        with self._lock:
            self._fault, self._times = fault, times
            self.generation += 1
            return self.generation

    def reset(self) -> int:
        generation = self.set("ok")
        with self._lock:
            self.requests = 0
        return generation

    def take(self, streaming: bool) -> Fault | None:
        """Count one request; the fault it gets (None: answer normally)."""
        with self._lock:
            self.requests += 1
            fault = self._fault
            mode = fault.mode
            if mode == "ok" or mode == "refuse" or (not streaming and mode in STREAM_ONLY):
                return None
            if self._times is not None:
                self._times -= 1
                if self._times <= 0:
                    self._fault, self._times = Fault("ok"), None
            return fault


async def wait(receive: Receive, seconds: float, stopping: threading.Event) -> bool:
    """Hold a request ``seconds``; False when the client hung up or the server stops first.

    Call it once the request body is read: the next ASGI message is then http.disconnect.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    disconnect = asyncio.ensure_future(receive())
    try:
        while not disconnect.done():
            if stopping.is_set():
                return False
            left = deadline - loop.time()
            if left <= 0:
                return True
            await asyncio.wait((disconnect,), timeout=min(left, 0.05))
        return False
    finally:
        disconnect.cancel()


# --- a connection closed mid-response on purpose --------------------------------------

_cutting: contextvars.ContextVar[bool] = contextvars.ContextVar("keel_fake_cutting",
                                                                default=False)


def cut_connection() -> None:
    """Mark the current response as cut on purpose: the ASGI app then returns without
    finishing it, uvicorn closes the connection, and the error it logs is dropped."""
    _cutting.set(True)


class _QuietCuts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _cutting.get()


_QUIET = _QuietCuts()


def closed_base_url(host: str = "127.0.0.1") -> str:
    """``http://host:<port>/v1`` on a port nothing listens on: connections are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    return f"http://{host}:{port}/v1"


def _check_refuse_s(refuse_s: float | None) -> None:
    if refuse_s is not None and (isinstance(refuse_s, bool)
                                 or not isinstance(refuse_s, int | float) or refuse_s < 0):
        raise ValueError(f"refuse_s must be a number >= 0 or None, not {refuse_s!r}")


# --- running a fake ---------------------------------------------------------------------


class FakeServer:
    """Runs ``self.app`` on a real port: in a background thread (a context manager, sync or
    async) or in the foreground (:meth:`serve`). Holds the :class:`Faults` and applies
    ``refuse`` to the listening socket. Subclasses build ``self.app``."""

    app: Any  # the ASGI app

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port  # the bound port once started
        self._bind_port = port
        self.faults = Faults()
        self._stopping = threading.Event()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._held: socket.socket | None = None  # the port while refusing: bound, not listening
        self._tasks: set[asyncio.Task[None]] = set()

    # --- steering --------------------------------------------------------------------------

    def set_mode(self, mode: FakeMode = "ok", *, times: int | None = None,
                 retry_after: float | str = 1, hang_s: float = 30.0, delay_s: float = 0.1,
                 after_chunks: int = 2, refuse_s: float | None = None) -> None:
        """Answer the next ``times`` requests (all when None) in ``mode``, then ``ok``.

        ``retry_after``: the 429's Retry-After (seconds, or an HTTP-date string).
        ``hang_s``: how long ``timeout`` and ``stall_stream`` hold before going on normally
        (they stop early when the client hangs up or the server stops).
        ``delay_s``: the wait of ``delay``. ``after_chunks``: chunks a stream fault sends
        first. ``refuse_s``: how long ``refuse`` lasts (None: until the mode changes).
        """
        _check_refuse_s(refuse_s)
        generation = self.faults.set(mode, times=times, retry_after=retry_after, hang_s=hang_s,
                                     delay_s=delay_s, after_chunks=after_chunks)
        self._in_loop(self._apply_listening(generation, refuse_s))

    def reset(self) -> None:
        """Back to ``ok`` (listening again) with the request count cleared."""
        generation = self.faults.reset()
        self._in_loop(self._apply_listening(generation, None))

    async def set_mode_async(self, mode: FakeMode = "ok", *, refuse_s: float | None = None,
                             **params: Any) -> None:
        """:meth:`set_mode` from inside the server's own loop (its HTTP control endpoint)."""
        _check_refuse_s(refuse_s)
        generation = self.faults.set(mode, **params)
        await self._apply_listening(generation, refuse_s)

    async def reset_async(self) -> None:
        await self._apply_listening(self.faults.reset(), None)

    @property
    def mode(self) -> FakeMode:
        return self.faults.mode

    @property
    def requests(self) -> int:
        """How many API requests arrived (each retry counts; control endpoints do not)."""
        return self.faults.requests

    def _in_loop(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a coroutine in the server's loop and wait for it (or just schedule it when
        called from that loop)."""
        loop = self._loop()
        if loop is None:
            coro.close()
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._spawn(coro)
        else:
            asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=10)

    def _loop(self) -> asyncio.AbstractEventLoop | None:
        server = self._server
        if server is None or not server.started or not server.servers:
            return None
        loop: asyncio.AbstractEventLoop = server.servers[0].get_loop()
        return loop if loop.is_running() else None

    async def _apply_listening(self, generation: int, refuse_s: float | None) -> None:
        server = self._server
        if server is None or not server.started:
            return
        loop = asyncio.get_running_loop()
        if self.faults.mode != "refuse":
            await self._listen(server)
            return
        if self._held is None:
            for listener in server.servers:
                listener.close()
            # idle keep-alive connections go too; busy ones close after their response
            for connection in list(server.server_state.connections):
                connection.shutdown()
            self._held = await self._hold_port()
        if refuse_s is not None:
            loop.call_later(refuse_s, self._end_refuse, generation)

    def _end_refuse(self, generation: int) -> None:
        if self.faults.generation == generation and self.faults.mode == "refuse":
            self._spawn(self._apply_listening(self.faults.set("ok"), None))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _hold_port(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 5
        while True:  # the closed listener may take a loop iteration to let the port go
            try:
                sock.bind((self.host, self.port))
                return sock
            except OSError:
                if time.monotonic() > deadline:
                    sock.close()
                    raise
                await asyncio.sleep(0.005)

    async def _listen(self, server: uvicorn.Server) -> None:
        sock, self._held = self._held, None
        if sock is None:
            return
        # the protocol factory uvicorn's Server.startup builds for its own listeners
        config = server.config
        factory = functools.partial(
            config.http_protocol_class, config=config,  # type: ignore[call-arg]
            server_state=server.server_state, app_state=server.lifespan.state)
        listener = await asyncio.get_running_loop().create_server(
            factory, sock=sock, backlog=config.backlog)
        server.servers.append(listener)

    # --- running it -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``: what an OpenAI client's base_url should be."""
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__} is not started: use it as a context "
                               "manager")
        return f"http://{self.host}:{self.port}/v1"

    def _bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._bind_port))
        self.port = sock.getsockname()[1]
        return sock

    def start(self, timeout_s: float = 10.0) -> None:
        """Serve in a background thread; returns once the port accepts connections."""
        if self._server is not None:
            raise RuntimeError(f"{type(self).__name__} is already started")
        sock = self._bind()
        config = uvicorn.Config(self.app, lifespan="off", log_config=None, log_level="warning",
                                access_log=False, timeout_graceful_shutdown=2)
        logging.getLogger("uvicorn.error").addFilter(_QUIET)
        self._server = server = uvicorn.Server(config)
        self._stopping.clear()
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                                        name=f"keel-fake:{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                sock.close()
                raise RuntimeError(f"{type(self).__name__} did not start on "
                                   f"{self.host}:{self.port}")
            time.sleep(0.002)

    def serve(self) -> None:
        """Serve in the foreground until interrupted (``python -m keel.testing``)."""
        sock = self._bind()
        config = uvicorn.Config(self.app, lifespan="off", log_level="warning",
                                access_log=False, timeout_graceful_shutdown=2)
        logging.getLogger("uvicorn.error").addFilter(_QUIET)
        self._server = server = uvicorn.Server(config)
        try:
            server.run(sockets=[sock])
        finally:
            self._release()

    def stop(self) -> None:
        """Stop serving; hanging requests are released first. Safe to call twice."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._stopping.set()
        server.should_exit = True
        thread.join(timeout=10)
        self._release()

    def _release(self) -> None:
        self._server = self._thread = None
        held, self._held = self._held, None
        if held is not None:
            held.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await asyncio.to_thread(self.stop)
