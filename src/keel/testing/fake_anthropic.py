"""A fake Anthropic upstream: the Messages API (``POST /v1/messages``), streaming included,
that fails on command, in-process with :meth:`FakeAnthropic.set_mode` or over HTTP
(``POST /_fake/mode``)::

    with FakeAnthropic(reply="billing", api_key="sk-test") as fake:  # 127.0.0.1:<free port>
        fake.set_mode("overloaded", times=1)
        ...  # anthropic.Anthropic(base_url=fake.base_url, api_key="sk-test")

``base_url`` has no ``/v1``, like Anthropic's. Replies are text, :class:`ToolUse` blocks
or a list of both; streams send the real event sequence (message_start,
content_block_start, ping, content_block_delta..., content_block_stop, message_delta,
message_stop). Modes: ok, delay, timeout, error (500), unavailable (503), overloaded
(529), bad_gateway (502, an HTML page), invalid_json, rate_limit (429 + retry-after),
bad_request (400), auth (401), cut_stream, stall_stream, stream_error (see
:meth:`FakeAnthropic.set_mode`). Errors have Anthropic's shape
``{"type": "error", "error": {"type", "message"}}``. Control endpoints: ``POST /_fake/mode`` ``{"mode", "times", "retry_after",
"hang_s", "delay_s", "cut_after"}``, ``POST /_fake/reset``, ``GET /_fake/stats``,
``GET /_fake/last_request``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Literal, get_args

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from keel.testing.fake_openai import RecordedRequest

AnthropicMode = Literal["ok", "delay", "timeout", "error", "unavailable", "overloaded",
                        "bad_gateway", "invalid_json", "rate_limit", "bad_request", "auth",
                        "cut_stream", "stall_stream", "stream_error"]
ANTHROPIC_MODES: frozenset[str] = frozenset(get_args(AnthropicMode))


@dataclass(frozen=True, slots=True)
class ToolUse:
    """A ``tool_use`` block the fake answers with (``id`` is made up when None)."""

    name: str
    input: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


@dataclass(frozen=True, slots=True)
class _Setting:
    mode: AnthropicMode = "ok"
    times: int | None = None
    retry_after: float | str = 1
    hang_s: float = 30.0
    delay_s: float = 0.2
    cut_after: int = 2


Reply = str | ToolUse | list[str | ToolUse]
AnthropicReplyFn = Callable[[dict[str, Any]], Reply]
"""Makes the reply from the parsed request body (``model``, ``messages``, ``tools``, ...)."""

# mode -> (HTTP status, Anthropic error type, message)
_ERRORS: dict[str, tuple[int, str, str]] = {
    "error": (500, "api_error", "Internal server error"),
    "unavailable": (503, "api_error", "Service unavailable"),
    "overloaded": (529, "overloaded_error", "Overloaded"),
    "rate_limit": (429, "rate_limit_error",
                   "Number of request tokens has exceeded your per-minute rate limit"),
    "bad_request": (400, "invalid_request_error", "Invalid request (the fake was told to refuse)"),
    "auth": (401, "authentication_error", "invalid x-api-key"),
}
_BAD_GATEWAY = b"<html><head><title>502 Bad Gateway</title></head><body>502</body></html>"
_WORDS = re.compile(r"\s*\S+\s*|\s+")


class _Cut(Exception):
    """Raised inside a response to drop the connection (cut_stream)."""


class _QuietCut(logging.Filter):
    """Keeps uvicorn from logging a traceback for every deliberate cut."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _Cut))


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    headers = {"request-id": f"req_{uuid.uuid4().hex[:24]}", **(headers or {})}
    return Response(orjson.dumps(data), status, headers, media_type="application/json")


def _error(status: int, type_: str, message: str,
           headers: dict[str, str] | None = None) -> Response:
    return _json({"type": "error", "error": {"type": type_, "message": message}}, status, headers)


def _sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _tokens(value: Any) -> int:
    """Whitespace words in every string of a value: a cheap, stable tokenizer stand-in."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, dict):
        return sum(_tokens(v) for k, v in value.items() if k not in ("type", "id", "role"))
    if isinstance(value, list):
        return sum(_tokens(v) for v in value)
    return 0


def _validate(body: Any) -> str | None:
    """What the real API would reject in this body, in its words; None when it is fine."""
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    for key in ("model", "max_tokens", "messages"):
        if key not in body:
            return f"{key}: Field required"
    if not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1:
        return "max_tokens: Input should be a valid integer greater than or equal to 1"
    if not isinstance(body["messages"], list):
        return "messages: Input should be a valid list"
    for i, message in enumerate(body["messages"]):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if not isinstance(message.get("content"), str | list):
            return f"messages.{i}.content: Field required"
    return None


class _Reply:
    """An ASGI response sent in chunks, that can drop the connection or stall at ``at``."""

    def __init__(self, fake: FakeAnthropic, status: int, headers: dict[str, str],
                 chunks: list[bytes], fault: str | None = None, at: int = 0,
                 hang_s: float = 0.0) -> None:
        self.fake, self.status, self.headers, self.chunks = fake, status, headers, chunks
        self.fault, self.at, self.hang_s = fault, at, hang_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = [(k.encode(), v.encode()) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": self.status, "headers": raw})
        for i, chunk in enumerate(self.chunks):
            if i == self.at and self.fault == "cut":
                raise _Cut("connection dropped on purpose (cut_stream)")
            if i == self.at and self.fault == "stall":
                await self.fake._hang(receive, self.hang_s)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class FakeAnthropic:
    """A fake Anthropic Messages API server; a context manager running it on a free port.

    ``reply`` is text, a :class:`ToolUse`, a list of both, or a function of the request
    body returning one. ``api_key``, when given, must arrive as ``x-api-key`` or as
    ``authorization: Bearer`` (what anthropic SDK 2.x sends); 401 otherwise.
    ``stop_reason`` overrides the natural one (end_turn, or tool_use);
    ``cache_read_tokens`` / ``cache_write_tokens`` are reported in every usage.
    """

    def __init__(self, reply: Reply | AnthropicReplyFn = "ok", *, api_key: str | None = None,
                 models: tuple[str, ...] = ("claude-fake",), host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.reply = reply
        self.api_key = api_key
        self.models = models
        self.stop_reason: str | None = None
        self.cache_read_tokens = 0
        self.cache_write_tokens = 0
        self.host, self.port, self._bind_port = host, port, port
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._setting = _Setting()
        self._requests = 0
        self._last: RecordedRequest | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = Starlette(routes=[
            Route("/v1/messages", self._messages, methods=["POST"]),
            Route("/v1/models", self._models, methods=["GET"]),
            Route("/_fake/mode", self._http_mode, methods=["POST"]),
            Route("/_fake/reset", self._http_reset, methods=["POST"]),
            Route("/_fake/stats", self._http_stats, methods=["GET"]),
            Route("/_fake/last_request", self._http_last, methods=["GET"]),
        ])

    # --- steering (thread-safe: tests call these while the server thread runs) ---------

    def set_mode(self, mode: AnthropicMode = "ok", *, times: int | None = None,
                 retry_after: float | str = 1, hang_s: float = 30.0, delay_s: float = 0.2,
                 cut_after: int = 2) -> None:
        """Answer the next ``times`` message requests (all when None) in ``mode``, then ok.

        ``retry_after``: the 429's retry-after (seconds or an HTTP-date); ``hang_s``: how
        long ``timeout`` and ``stall_stream`` hold on (less if the client hangs up);
        ``delay_s``: how long ``delay`` waits before answering; ``cut_after``: how many
        content_block_delta events ``cut_stream``, ``stall_stream`` and ``stream_error``
        send first (``stream_error`` then sends an ``overloaded_error`` event; a request
        that does not stream gets a 529). Without streaming, ``cut_stream`` and
        ``stall_stream`` strike half-way through the JSON body.
        """
        if mode not in ANTHROPIC_MODES:
            raise ValueError(f"unknown fake mode {mode!r} "
                             f"(known: {', '.join(sorted(ANTHROPIC_MODES))})")
        if times is not None and times < 1:
            raise ValueError(f"times must be >= 1 or None, not {times}")
        with self._lock:
            self._setting = _Setting(mode, times, retry_after, hang_s, delay_s, cut_after)

    def reset(self) -> None:
        """Back to ``ok`` with the request count and the last request cleared."""
        self.set_mode("ok")
        with self._lock:
            self._requests, self._last = 0, None

    @property
    def mode(self) -> AnthropicMode:
        return self._setting.mode

    @property
    def requests(self) -> int:
        """How many ``POST /v1/messages`` requests arrived (each retry counts)."""
        return self._requests

    @property
    def last_request(self) -> RecordedRequest | None:
        """The last message request (header names lower-cased, the body parsed)."""
        return self._last

    def _take_mode(self) -> _Setting:
        """Consume one use of the current mode; the setting this request runs in."""
        with self._lock:
            setting = self._setting
            if setting.mode != "ok" and setting.times is not None:
                left = setting.times - 1
                self._setting = replace(setting, times=left) if left else _Setting()
            return setting

    # --- the Anthropic surface ---------------------------------------------------------

    async def _messages(self, request: Request) -> Response | _Reply:
        raw = await request.body()
        try:
            body: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        recorded = body if body is not None else raw.decode("utf-8", "replace")
        self._last = RecordedRequest(request.method, request.url.path, dict(request.headers),
                                     recorded)
        with self._lock:
            self._requests += 1
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        if self.api_key is not None and self.api_key not in (
                request.headers.get("x-api-key"), bearer):
            return _error(401, "authentication_error", "invalid x-api-key")
        if "anthropic-version" not in request.headers:
            return _error(400, "invalid_request_error", "anthropic-version: header is required")
        setting = self._take_mode()
        mode, hang_s, cut_after = setting.mode, setting.hang_s, setting.cut_after
        if mode in _ERRORS:
            status, type_, text = _ERRORS[mode]
            wait = setting.retry_after
            wait = wait if isinstance(wait, str) else f"{wait:g}"
            return _error(status, type_, text,
                          {"retry-after": wait} if mode == "rate_limit" else None)
        if mode == "bad_gateway":
            return Response(_BAD_GATEWAY, 502, media_type="text/html")
        if mode == "invalid_json":
            return Response(b'{"id": "msg_broken", "content": [', media_type="application/json")
        if body is None:
            return _error(400, "invalid_request_error", "There was an issue with the JSON body")
        problem = _validate(body)
        if problem:
            return _error(400, "invalid_request_error", problem)
        if mode in ("timeout", "delay"):
            await self._hang(request.receive, hang_s if mode == "timeout" else setting.delay_s)
        message = self._message(body)
        fault = {"cut_stream": "cut", "stall_stream": "stall"}.get(mode)
        if body.get("stream"):
            chunks, at = self._events(message, cut_after)
            if mode == "stream_error":  # Anthropic sends overloaded errors in-stream too
                chunks = [*chunks[:at], _sse("error", {"type": "error", "error": {
                    "type": "overloaded_error", "message": "Overloaded"}})]
            headers = {"content-type": "text/event-stream; charset=utf-8",
                       "cache-control": "no-cache", "request-id": f"req_{uuid.uuid4().hex[:24]}"}
            return _Reply(self, 200, headers, chunks, fault, at, hang_s)
        if mode == "stream_error":
            return _error(529, "overloaded_error", "Overloaded")
        if fault is None:
            return _json(message)
        data = orjson.dumps(message)  # half the body, then a cut or a stall
        headers = {"content-type": "application/json", "content-length": str(len(data))}
        half = len(data) // 2
        return _Reply(self, 200, headers, [data[:half], data[half:]], fault, 1, hang_s)

    def _message(self, body: dict[str, Any]) -> dict[str, Any]:
        reply = self.reply(body) if callable(self.reply) else self.reply
        items = reply if isinstance(reply, list) else [reply]
        content: list[dict[str, Any]] = [
            {"type": "text", "text": item} if isinstance(item, str) else
            {"type": "tool_use", "id": item.id or f"toolu_{uuid.uuid4().hex[:24]}",
             "name": item.name, "input": item.input}
            for item in items
        ]
        natural = "tool_use" if any(b["type"] == "tool_use" for b in content) else "end_turn"
        return {
            "id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
            "model": body.get("model") or self.models[0], "content": content,
            "stop_reason": self.stop_reason or natural, "stop_sequence": None,
            "usage": {"input_tokens": _tokens(body.get("system")) + _tokens(body["messages"]),
                      "cache_creation_input_tokens": self.cache_write_tokens,
                      "cache_read_input_tokens": self.cache_read_tokens,
                      "output_tokens": _tokens(content)},
        }

    @staticmethod
    def _events(message: dict[str, Any], cut_after: int) -> tuple[list[bytes], int]:
        """The SSE chunks for a message, and the index of the chunk after ``cut_after``
        content_block_delta events (where cut_stream and stall_stream strike)."""
        events: list[tuple[str, dict[str, Any]]] = []
        usage = dict(message["usage"], output_tokens=1)
        start = dict(message, content=[], stop_reason=None, usage=usage)
        events.append(("message_start", {"type": "message_start", "message": start}))
        at = 1 if cut_after <= 0 else -1  # 0: nothing after message_start
        for index, block in enumerate(message["content"]):
            empty = dict(block, text="") if block["type"] == "text" else dict(block, input={})
            events.append(("content_block_start", {"type": "content_block_start",
                                                   "index": index, "content_block": empty}))
            if index == 0:
                events.append(("ping", {"type": "ping"}))
            if block["type"] == "text":
                pieces = [{"type": "text_delta", "text": w} for w in _WORDS.findall(block["text"])]
            else:
                js = orjson.dumps(block["input"]).decode() if block["input"] else ""
                step = max(1, len(js) // 3)
                pieces = [{"type": "input_json_delta", "partial_json": js[i:i + step]}
                          for i in range(0, len(js), step)]
                pieces.insert(0, {"type": "input_json_delta", "partial_json": ""})
            for piece in pieces:
                events.append(("content_block_delta", {"type": "content_block_delta",
                                                       "index": index, "delta": piece}))
                cut_after -= 1
                if cut_after == 0:
                    at = len(events)
            events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
        events.append(("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
            "usage": {"output_tokens": message["usage"]["output_tokens"]}}))
        events.append(("message_stop", {"type": "message_stop"}))
        chunks = [_sse(name, data) for name, data in events]
        return chunks, at if at >= 0 else len(chunks) - 2  # before message_delta at worst

    async def _hang(self, receive: Receive, hang_s: float) -> None:
        """Wait hang_s, or until the client hangs up or the server stops."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + hang_s
        disconnect = asyncio.ensure_future(receive())  # the body is read: next is disconnect
        try:
            while not self._stopping.is_set() and not disconnect.done():
                left = deadline - loop.time()
                if left <= 0:
                    break
                await asyncio.wait((disconnect,), timeout=min(left, 0.05))
        finally:
            disconnect.cancel()

    async def _models(self, request: Request) -> Response:
        data = [{"type": "model", "id": m, "display_name": m,
                 "created_at": "2025-01-01T00:00:00Z"} for m in self.models]
        return _json({"data": data, "has_more": False, "first_id": self.models[0],
                      "last_id": self.models[-1]})

    # --- control endpoints --------------------------------------------------------------

    async def _http_mode(self, request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
            if not isinstance(body, dict):
                raise TypeError("the body must be a JSON object")
            self.set_mode(body.get("mode", "ok"), times=body.get("times"),
                          retry_after=body.get("retry_after", 1),
                          hang_s=body.get("hang_s", 30.0), delay_s=body.get("delay_s", 0.2),
                          cut_after=body.get("cut_after", 2))
        except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
            return _error(400, "invalid_request_error", f"bad /_fake/mode body: {exc}")
        return await self._http_stats(request)

    async def _http_reset(self, request: Request) -> Response:
        self.reset()
        return await self._http_stats(request)

    async def _http_stats(self, request: Request) -> Response:
        setting = self._setting
        return _json({"requests": self._requests, "mode": setting.mode, "times": setting.times})

    async def _http_last(self, request: Request) -> Response:
        last = self.last_request
        if last is None:
            return _error(404, "not_found_error", "no message request received yet")
        return _json(last.to_dict())

    # --- running it ---------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``, without /v1: what an Anthropic client's base_url is."""
        if self._server is None:
            raise RuntimeError("FakeAnthropic is not started: use it as a context manager")
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> None:
        """Serve in a background thread; returns once the port accepts connections."""
        if self._server is not None:
            raise RuntimeError("FakeAnthropic is already started")
        log = logging.getLogger("uvicorn.error")
        if not any(isinstance(f, _QuietCut) for f in log.filters):
            log.addFilter(_QuietCut())
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._bind_port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, lifespan="off", log_config=None, log_level="warning",
                                access_log=False, timeout_graceful_shutdown=2)
        self._server = server = uvicorn.Server(config)
        self._stopping.clear()
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                                        name=f"keel-fake-anthropic:{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                sock.close()
                raise RuntimeError(f"FakeAnthropic did not start on {self.host}:{self.port}")
            time.sleep(0.002)

    def stop(self) -> None:
        """Stop serving; hanging requests are released first. Safe to call twice."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._stopping.set()
        server.should_exit = True
        thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> FakeAnthropic:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    async def __aenter__(self) -> FakeAnthropic:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await asyncio.to_thread(self.stop)
