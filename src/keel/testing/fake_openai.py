"""Test doubles users can use too: a fake OpenAI-compatible upstream.

:class:`FakeUpstream` speaks the Chat Completions wire format (``POST /v1/chat/completions``,
``GET /v1/models``) and can be told to fail, in-process with :meth:`FakeUpstream.set_mode`
or over HTTP (``POST /_fake/mode``) so a separate process can be steered::

    with FakeUpstream(reply="billing") as up:        # a real server on 127.0.0.1:<free port>
        up.set_mode("rate_limit", times=1, retry_after=2)
        ...  # call up.base_url (ends in /v1); up.requests counts chat calls

    python -m keel.testing --port 9100 --reply billing   # the same, as a process

Control endpoints: ``POST /_fake/mode`` ``{"mode", "times", "retry_after", "hang_s"}``,
``POST /_fake/reset``, ``GET /_fake/stats``, ``GET /_fake/last_request``.
The ok path does no sleeps and little work: the fake is the upstream of latency benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, get_args

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

FakeMode = Literal["ok", "timeout", "error", "invalid_json", "rate_limit", "bad_request"]
FAKE_MODES: frozenset[str] = frozenset(get_args(FakeMode))

ReplyFn = Callable[[dict[str, Any]], str | None]
"""Makes the reply text from the parsed request body (``model``, ``messages``, ...).
None sends ``"content": null``, as real servers do for tool calls and refusals."""


def echo(body: dict[str, Any]) -> str:
    """A :data:`ReplyFn` answering with the content of the last user message."""
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else orjson.dumps(content).decode()
    return ""


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """The last chat request the fake received (header names lower-cased)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any  # the parsed JSON body, or the raw text when it was not JSON

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "path": self.path, "headers": self.headers,
                "body": self.body}


_JSON = "application/json"


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, headers=headers, media_type=_JSON)


def _error(status: int, message: str, type_: str, code: str | None = None,
           param: str | None = None, headers: dict[str, str] | None = None) -> Response:
    """An error in OpenAI's shape, which its SDK and Keel's provider both parse."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return _json(body, status, headers)


def _tokens(text: str) -> int:
    return len(text.split())  # a cheap, stable stand-in for a tokenizer


class FakeUpstream:
    """A fake OpenAI-compatible server; a context manager that runs it on a free port.

    ``reply`` is a fixed string or a :data:`ReplyFn` (e.g. :func:`echo`). When a request
    asks for ``logprobs``, every whitespace-separated token gets ``token_logprob``.
    ``.app`` is the ASGI app, usable without starting a server.
    """

    def __init__(self, reply: str | ReplyFn = "ok", *, models: tuple[str, ...] = ("fake-model",),
                 token_logprob: float = -0.05, host: str = "127.0.0.1", port: int = 0) -> None:
        self.reply = reply
        self.models = models
        self.token_logprob = token_logprob
        self.host = host
        self.port = port  # the bound port once started
        self._bind_port = port
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._mode: FakeMode = "ok"
        self._times: int | None = None
        self._retry_after: float | str = 1
        self._hang_s = 30.0
        self._requests = 0
        self._last: tuple[str, str, list[tuple[bytes, bytes]], bytes] | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = Starlette(routes=[
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/models", self._models, methods=["GET"]),
            Route("/_fake/mode", self._http_mode, methods=["POST"]),
            Route("/_fake/reset", self._http_reset, methods=["POST"]),
            Route("/_fake/stats", self._http_stats, methods=["GET"]),
            Route("/_fake/last_request", self._http_last, methods=["GET"]),
        ])

    # --- steering (thread-safe: tests call these while the server thread runs) ---------

    def set_mode(self, mode: FakeMode = "ok", *, times: int | None = None,
                 retry_after: float | str = 1, hang_s: float = 30.0) -> None:
        """Answer the next ``times`` chat requests (all when None) in ``mode``, then ``ok``.

        ``retry_after`` is the 429's Retry-After (seconds, or an HTTP-date string);
        ``hang_s`` is how long ``timeout`` holds a request before answering it normally
        (it stops early when the client hangs up or the server stops).
        """
        if mode not in FAKE_MODES:
            raise ValueError(f"unknown fake mode {mode!r} (known: {', '.join(sorted(FAKE_MODES))})")
        if times is not None and times < 1:
            raise ValueError(f"times must be >= 1 or None, not {times}")
        with self._lock:
            self._mode, self._times = mode, times
            self._retry_after, self._hang_s = retry_after, hang_s

    def reset(self) -> None:
        """Back to ``ok`` with the request count and the last request cleared."""
        self.set_mode("ok")
        with self._lock:
            self._requests, self._last = 0, None

    @property
    def mode(self) -> FakeMode:
        return self._mode

    @property
    def requests(self) -> int:
        """How many chat completion requests arrived (each retry counts)."""
        return self._requests

    @property
    def last_request(self) -> RecordedRequest | None:
        last = self._last
        if last is None:
            return None
        method, path, raw_headers, raw_body = last
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw_headers}
        try:
            body: Any = orjson.loads(raw_body)
        except orjson.JSONDecodeError:
            body = raw_body.decode("utf-8", "replace")
        return RecordedRequest(method, path, headers, body)

    def _take_mode(self) -> tuple[FakeMode, float | str, float]:
        """Count one request and consume one use of the current failure mode."""
        with self._lock:
            self._requests += 1
            mode = self._mode
            if mode != "ok" and self._times is not None:
                self._times -= 1
                if self._times <= 0:
                    self._mode, self._times = "ok", None
            return mode, self._retry_after, self._hang_s

    # --- the OpenAI surface ------------------------------------------------------------

    async def _chat(self, request: Request) -> Response:
        raw = await request.body()
        # kept raw: decoded only when a test asks (GET /_fake/last_request)
        self._last = (request.method, request.url.path, request.headers.raw, raw)
        mode, retry_after, hang_s = self._take_mode()
        if mode == "error":
            return _error(500, "The server had an error while processing your request.",
                          "server_error")
        if mode == "rate_limit":
            value = retry_after if isinstance(retry_after, str) else f"{retry_after:g}"
            return _error(429, "Rate limit reached for requests. Please try again later.",
                          "requests", "rate_limit_exceeded", headers={"retry-after": value})
        if mode == "bad_request":
            return _error(400, "Invalid request (fake upstream told to refuse it).",
                          "invalid_request_error", param="messages")
        if mode == "invalid_json":
            return Response(b'{"id": "chatcmpl-broken", "choices": [', media_type=_JSON)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _error(400, "We could not parse the JSON body of your request.",
                          "invalid_request_error")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error(400, "'messages' is a required property", "invalid_request_error",
                          param="messages")
        if body.get("stream"):
            # SSE streaming goes here: answer with text/event-stream
            # `data: {chat.completion.chunk}` lines and a final `data: [DONE]`.
            return _error(400, "stream=true is not supported by the fake upstream yet",
                          "invalid_request_error", param="stream")
        if mode == "timeout":
            await self._hang(request, hang_s)
        return _json(self._completion(body))

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        content = self.reply if isinstance(self.reply, str) else self.reply(body)
        prompt_tokens = sum(
            _tokens(m["content"]) for m in body["messages"]
            if isinstance(m, dict) and isinstance(m.get("content"), str)
        )
        completion_tokens = _tokens(content) if content is not None else 0
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
        if body.get("logprobs") and content is not None:
            choice["logprobs"] = {"content": [
                {"token": tok, "logprob": self.token_logprob, "bytes": list(tok.encode()),
                 "top_logprobs": []}
                for tok in content.split()
            ], "refusal": None}
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or self.models[0],
            "choices": [choice],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
            "system_fingerprint": "fp_keel_fake",
        }

    async def _hang(self, request: Request, hang_s: float) -> None:
        """Hold the request until hang_s passes, the client hangs up or the server stops."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + hang_s
        # the body is read, so the next ASGI message is http.disconnect
        disconnect = asyncio.ensure_future(request.receive())
        try:
            while not self._stopping.is_set() and not disconnect.done():
                left = deadline - loop.time()
                if left <= 0:
                    break
                await asyncio.wait((disconnect,), timeout=min(left, 0.05))
        finally:
            disconnect.cancel()

    async def _models(self, request: Request) -> Response:
        created = int(time.time())
        data = [{"id": m, "object": "model", "created": created, "owned_by": "keel-fake"}
                for m in self.models]
        return _json({"object": "list", "data": data})

    # --- control endpoints --------------------------------------------------------------

    async def _http_mode(self, request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
            if not isinstance(body, dict):
                raise TypeError("the body must be a JSON object")
            self.set_mode(body.get("mode", "ok"), times=body.get("times"),
                          retry_after=body.get("retry_after", 1), hang_s=body.get("hang_s", 30.0))
        except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
            return _error(400, f"bad /_fake/mode body: {exc}", "invalid_request_error")
        return await self._http_stats(request)

    async def _http_reset(self, request: Request) -> Response:
        self.reset()
        return await self._http_stats(request)

    async def _http_stats(self, request: Request) -> Response:
        return _json({"requests": self._requests, "mode": self._mode, "times": self._times})

    async def _http_last(self, request: Request) -> Response:
        last = self.last_request
        if last is None:
            return _error(404, "no chat request received yet", "not_found_error")
        return _json(last.to_dict())

    # --- running it ---------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``: what an OpenAI client's base_url should be."""
        if self._server is None:
            raise RuntimeError("FakeUpstream is not started: use it as a context manager")
        return f"http://{self.host}:{self.port}/v1"

    def start(self, timeout_s: float = 10.0) -> None:
        """Serve in a background thread; returns once the port accepts connections."""
        if self._server is not None:
            raise RuntimeError("FakeUpstream is already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._bind_port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, lifespan="off", log_config=None, log_level="warning",
                                access_log=False, timeout_graceful_shutdown=2)
        self._server = server = uvicorn.Server(config)
        self._stopping.clear()
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                                        name=f"keel-fake-upstream:{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                sock.close()
                raise RuntimeError(f"FakeUpstream did not start on {self.host}:{self.port}")
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

    def __enter__(self) -> FakeUpstream:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    async def __aenter__(self) -> FakeUpstream:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await asyncio.to_thread(self.stop)


def main(argv: list[str] | None = None) -> None:
    """``python -m keel.testing``: run the fake upstream as its own process."""
    parser = argparse.ArgumentParser(prog="python -m keel.testing",
                                     description="A fake OpenAI-compatible upstream.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--reply", default="ok", help="fixed reply text (default: ok)")
    group.add_argument("--echo", action="store_true", help="reply with the last user message")
    parser.add_argument("--model", action="append", help="model id(s) /v1/models lists")
    args = parser.parse_args(argv)
    reply: str | ReplyFn = echo if args.echo else args.reply
    fake = FakeUpstream(reply, models=tuple(args.model or ["fake-model"]))
    print(f"fake upstream on http://{args.host}:{args.port}/v1", flush=True)
    uvicorn.run(fake.app, host=args.host, port=args.port, lifespan="off", log_level="warning",
                access_log=False, timeout_graceful_shutdown=2)


if __name__ == "__main__":
    main()
