"""Test doubles users can use too: a fake OpenAI-compatible upstream.

:class:`FakeUpstream` speaks the OpenAI wire format — ``POST /v1/chat/completions``
(plain, tool calls, and ``stream: true`` server-sent events), ``POST /v1/embeddings``,
``GET /v1/models`` — and can be told to fail (the modes are in :mod:`keel.testing.faults`),
in-process with :meth:`FakeUpstream.set_mode` or over HTTP (``POST /_fake/mode``) so a
separate process can be steered::

    with FakeUpstream(reply="billing") as up:        # a real server on 127.0.0.1:<free port>
        up.set_mode("rate_limit", times=1, retry_after=2)
        up.set_mode("cut_stream", after_chunks=3)     # a stream dies after 3 chunks
        up.reply_tool_call = ("get_weather", '{"city": "Paris"}')
        ...  # call up.base_url (ends in /v1); up.requests counts API calls

    python -m keel.testing --port 9100 --reply billing   # the same, as a process

Control endpoints: ``POST /_fake/mode`` ``{"mode", "times", "retry_after", "hang_s",
"delay_s", "after_chunks", "refuse_s"}``, ``POST /_fake/reset``, ``GET /_fake/stats``,
``GET /_fake/last_request``.
The ok path does no sleeps and little work: the fake is the upstream of latency benchmarks.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import re
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from keel.testing.faults import (
    ERROR_STATUS,
    FAKE_MODES,
    FakeMode,
    FakeServer,
    Fault,
    closed_base_url,
    cut_connection,
    wait,
)

__all__ = ["FAKE_MODES", "FakeMode", "FakeUpstream", "RecordedRequest", "ReplyFn",
           "closed_base_url", "echo", "fake_embedding", "main"]

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


def fake_embedding(text: str, dim: int = 8) -> list[float]:
    """The fake's vector for ``text``: a unit vector from a hash of it, float32-exact (so
    the ``float`` and ``base64`` encodings agree)."""
    raw = hashlib.shake_256(text.encode()).digest(4 * dim)
    values = [v / 2**31 - 1.0 for v in struct.unpack(f"<{dim}I", raw)]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    return list(struct.unpack(f"<{dim}f", struct.pack(f"<{dim}f", *(v / norm for v in values))))


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """The last API request the fake received (header names lower-cased)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any  # the parsed JSON body, or the raw text when it was not JSON

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "path": self.path, "headers": self.headers,
                "body": self.body}


_JSON = "application/json"
_DONE = b"data: [DONE]\n\n"
_PIECE = re.compile(r"\s*\S{1,4}|\s+")  # token-sized pieces of a streamed reply
_BAD_GATEWAY = (b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
                b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>"
                b"\r\n</body>\r\n</html>\r\n")
_STREAM_ERROR = {"error": {"message": "The server had an error while processing your request.",
                           "type": "server_error", "param": None, "code": None}}


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, headers=headers, media_type=_JSON)


def _error(status: int, message: str, type_: str, code: str | None = None,
           param: str | None = None, headers: dict[str, str] | None = None) -> Response:
    """An error in OpenAI's shape, which its SDK and Keel's provider both parse."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return _json(body, status, headers)


def _fault_error(fault: Fault) -> Response:
    mode = fault.mode
    if mode == "rate_limit":
        value = fault.retry_after
        value = value if isinstance(value, str) else f"{value:g}"
        return _error(429, "Rate limit reached for requests. Please try again later.",
                      "requests", "rate_limit_exceeded", headers={"retry-after": value})
    if mode == "bad_request":
        return _error(400, "Invalid request (fake upstream told to refuse it).",
                      "invalid_request_error", param="messages")
    if mode == "auth":
        return _error(401, "Incorrect API key provided: sk-fake***. You can find your API key "
                      "at https://platform.openai.com/account/api-keys.",
                      "invalid_request_error", "invalid_api_key")
    if mode == "bad_gateway":
        return Response(_BAD_GATEWAY, status_code=502, media_type="text/html")
    if mode == "unavailable":
        return _error(503, "That model is currently overloaded with other requests. You can "
                      "retry your request.", "server_error")
    return _error(500, "The server had an error while processing your request.",
                  "server_error")


def _tokens(text: str) -> int:
    return len(text.split())  # a cheap, stable stand-in for a tokenizer


def _sse(data: Any) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


class _EventStream(Response):
    """``text/event-stream`` chunks, one ASGI body message each, with a stream fault
    (or ``delay``) applied after ``fault.after_chunks`` of them."""

    media_type = "text/event-stream"

    def __init__(self, events: list[bytes], fault: Fault | None,
                 stopping: threading.Event) -> None:
        self.status_code = 200
        self.background = None
        self.events = events
        self.fault = fault
        self.stopping = stopping
        self.raw_headers = [(b"content-type", b"text/event-stream; charset=utf-8"),
                            (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        fault, events = self.fault, self.events
        mode = fault.mode if fault is not None else "ok"
        if fault is not None and mode == "delay" and not await wait(
                receive, fault.delay_s, self.stopping):
            cut_connection()  # the client left or the server stops
            return
        # a stream fault strikes after `after_chunks` chunks (at the latest before [DONE])
        at = min(fault.after_chunks, len(events)) if fault is not None else -1
        for i in range(len(events) + 1):
            if i == at and fault is not None:
                if mode == "cut_stream":
                    cut_connection()
                    return  # without finishing the body: the connection is closed
                if mode == "stall_stream" and not await wait(receive, fault.hang_s,
                                                             self.stopping):
                    cut_connection()
                    return
                if mode in ("stream_error", "invalid_json"):  # a bad event ends the stream
                    bad = (_sse(_STREAM_ERROR) if mode == "stream_error"
                           else b'data: {"id": "chatcmpl-broken", "choices": [\n\n')
                    await send({"type": "http.response.body", "body": bad, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return
            if i < len(events):
                await send({"type": "http.response.body", "body": events[i], "more_body": True})
        await send({"type": "http.response.body", "body": _DONE, "more_body": False})


class FakeUpstream(FakeServer):
    """A fake OpenAI-compatible server; a context manager that runs it on a free port.

    ``reply`` is a fixed string or a :data:`ReplyFn` (e.g. :func:`echo`);
    ``reply_tool_call`` = ``(name, arguments_json)`` answers with that tool call instead
    (``content`` null, ``finish_reason`` "tool_calls"). When a request asks for
    ``logprobs``, every token gets ``token_logprob``. When ``cached_tokens`` or
    ``reasoning_tokens`` is set, usage carries OpenAI's ``prompt_tokens_details`` and
    ``completion_tokens_details`` with them (otherwise neither, like vLLM).
    Embeddings are :func:`fake_embedding` vectors of ``embedding_dim`` (or the request's
    ``dimensions``). ``.app`` is the ASGI app, usable without starting a server.
    """

    def __init__(self, reply: str | ReplyFn = "ok", *,
                 reply_tool_call: tuple[str, str] | None = None,
                 models: tuple[str, ...] = ("fake-model",), token_logprob: float = -0.05,
                 cached_tokens: int = 0, reasoning_tokens: int = 0, embedding_dim: int = 8,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host=host, port=port)
        self.reply = reply
        self.reply_tool_call = reply_tool_call
        self.models = models
        self.token_logprob = token_logprob
        self.cached_tokens = cached_tokens
        self.reasoning_tokens = reasoning_tokens
        self.embedding_dim = embedding_dim
        self._last: tuple[str, str, list[tuple[bytes, bytes]], bytes] | None = None
        self.app = Starlette(routes=[
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/embeddings", self._embeddings, methods=["POST"]),
            Route("/v1/models", self._models, methods=["GET"]),
            Route("/_fake/mode", self._http_mode, methods=["POST"]),
            Route("/_fake/reset", self._http_reset, methods=["POST"]),
            Route("/_fake/stats", self._http_stats, methods=["GET"]),
            Route("/_fake/last_request", self._http_last, methods=["GET"]),
        ])

    def reset(self) -> None:
        """Back to ``ok`` with the request count and the last request cleared."""
        super().reset()
        self._last = None

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

    async def _fault_response(self, request: Request, fault: Fault,
                              streaming: bool) -> Response | None:
        """The response a fault gives at once, or None to go on (after any wait)."""
        mode = fault.mode
        if mode in ERROR_STATUS:
            return _fault_error(fault)
        if mode == "timeout":
            await wait(request.receive, fault.hang_s, self._stopping)
        elif mode == "delay" and not streaming:
            await wait(request.receive, fault.delay_s, self._stopping)
        elif mode == "invalid_json" and not streaming:
            return Response(b'{"id": "chatcmpl-broken", "choices": [', media_type=_JSON)
        return None

    # --- the OpenAI surface ------------------------------------------------------------

    async def _chat(self, request: Request) -> Response:
        raw = await request.body()
        # kept raw: decoded only when a test asks (GET /_fake/last_request)
        self._last = (request.method, request.url.path, request.headers.raw, raw)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        streaming = isinstance(body, dict) and body.get("stream") is True
        fault = self.faults.take(streaming)
        if fault is not None:
            early = await self._fault_response(request, fault, streaming)
            if early is not None:
                return early
        if body is None:
            return _error(400, "We could not parse the JSON body of your request.",
                          "invalid_request_error")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error(400, "'messages' is a required property", "invalid_request_error",
                          param="messages")
        if streaming:
            return _EventStream(self._chunks(body), fault, self._stopping)
        return _json(self._completion(body))

    def _answer(self, body: dict[str, Any]) -> tuple[str | None, dict[str, Any] | None, int]:
        """(content, tool call, completion tokens) for one request."""
        tool = self.reply_tool_call
        if tool is not None:
            call = {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                    "function": {"name": tool[0], "arguments": tool[1]}}
            return None, call, _tokens(tool[1]) + 1
        content = self.reply if isinstance(self.reply, str) else self.reply(body)
        return content, None, _tokens(content) if content is not None else 0

    def _usage(self, body: dict[str, Any], completion_tokens: int) -> dict[str, Any]:
        prompt_tokens = sum(
            _tokens(m["content"]) for m in body["messages"]
            if isinstance(m, dict) and isinstance(m.get("content"), str)
        )
        usage: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        if self.cached_tokens or self.reasoning_tokens:  # else the ok path stays lean
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens,
                                              "audio_tokens": 0}
            usage["completion_tokens_details"] = {
                "reasoning_tokens": self.reasoning_tokens, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
        return usage

    def _logprobs(self, tokens: list[str]) -> dict[str, Any]:
        return {"content": [
            {"token": tok, "logprob": self.token_logprob, "bytes": list(tok.encode()),
             "top_logprobs": []}
            for tok in tokens
        ], "refusal": None}

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        content, call, completion_tokens = self._answer(body)
        message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
        if call is not None:
            message["tool_calls"] = [call]
        choice: dict[str, Any] = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": "stop" if call is None else "tool_calls",
        }
        if body.get("logprobs") and content is not None:
            choice["logprobs"] = self._logprobs(content.split())
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or self.models[0],
            "choices": [choice],
            "usage": self._usage(body, completion_tokens),
            "system_fingerprint": "fp_keel_fake",
        }

    def _chunks(self, body: dict[str, Any]) -> list[bytes]:
        """The ``data:`` events of a streamed answer, in OpenAI's order (without [DONE])."""
        content, call, completion_tokens = self._answer(body)
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        head: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": body.get("model") or self.models[0],
            "system_fingerprint": "fp_keel_fake",
        }
        logprobs = bool(body.get("logprobs"))

        def chunk(delta: dict[str, Any], finish: str | None = None,
                  lp: dict[str, Any] | None = None) -> bytes:
            data = {**head, "choices": [{"index": 0, "delta": delta, "logprobs": lp,
                                         "finish_reason": finish}]}
            if include_usage:
                data["usage"] = None
            return _sse(data)

        if call is not None:
            first = {"index": 0, "id": call["id"], "type": "function",
                     "function": {"name": call["function"]["name"], "arguments": ""}}
            events = [chunk({"role": "assistant", "content": None, "tool_calls": [first],
                             "refusal": None})]
            args: str = call["function"]["arguments"]
            events += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": args[i:i + 8]}}]})
                       for i in range(0, len(args), 8)]
            finish = "tool_calls"
        else:
            events = [chunk({"role": "assistant", "content": "", "refusal": None})]
            events += [chunk({"content": piece}, lp=self._logprobs([piece]) if logprobs else None)
                       for piece in _PIECE.findall(content or "")]
            finish = "stop"
        events.append(chunk({}, finish))
        if include_usage:
            events.append(_sse({**head, "choices": [],
                                "usage": self._usage(body, completion_tokens)}))
        return events

    async def _embeddings(self, request: Request) -> Response:
        raw = await request.body()
        self._last = (request.method, request.url.path, request.headers.raw, raw)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        fault = self.faults.take(False)
        if fault is not None:
            early = await self._fault_response(request, fault, False)
            if early is not None:
                return early
        if not isinstance(body, dict):
            return _error(400, "We could not parse the JSON body of your request.",
                          "invalid_request_error")
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if (not isinstance(texts, list) or not texts
                or not all(isinstance(t, str | list) and t for t in texts)):
            return _error(400, "'$.input' is invalid. Please check the API reference: "
                          "https://platform.openai.com/docs/api-reference.",
                          "invalid_request_error", param="input")
        dim = body.get("dimensions") or self.embedding_dim
        if not isinstance(dim, int) or dim < 1:
            return _error(400, f"Invalid 'dimensions': {dim!r}", "invalid_request_error",
                          param="dimensions")
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        tokens = 0
        for i, text in enumerate(texts):
            text = text if isinstance(text, str) else orjson.dumps(text).decode()
            vector = fake_embedding(text, dim)
            tokens += _tokens(text)
            embedding: Any = (base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode()
                              if as_base64 else vector)
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        return _json({"object": "list", "data": data,
                      "model": body.get("model") or self.models[0],
                      "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def _models(self, request: Request) -> Response:
        created = int(time.time())
        data = [{"id": m, "object": "model", "created": created, "owned_by": "keel-fake"}
                for m in self.models]
        return _json({"object": "list", "data": data})

    # --- control endpoints --------------------------------------------------------------

    _MODE_KEYS = frozenset({"mode", "times", "retry_after", "hang_s", "delay_s",
                            "after_chunks", "refuse_s"})

    async def _http_mode(self, request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
            if not isinstance(body, dict):
                raise TypeError("the body must be a JSON object")
            unknown = set(body) - self._MODE_KEYS
            if unknown:
                raise ValueError(f"unknown keys {sorted(unknown)} "
                                 f"(known: {', '.join(sorted(self._MODE_KEYS))})")
            await self.set_mode_async(**body)
        except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
            return _error(400, f"bad /_fake/mode body: {exc}", "invalid_request_error")
        return await self._http_stats(request)

    async def _http_reset(self, request: Request) -> Response:
        await self.reset_async()
        self._last = None
        return await self._http_stats(request)

    async def _http_stats(self, request: Request) -> Response:
        return _json({"requests": self.faults.requests, "mode": self.faults.mode,
                      "times": self.faults.times})

    async def _http_last(self, request: Request) -> Response:
        last = self.last_request
        if last is None:
            return _error(404, "no API request received yet", "not_found_error")
        return _json(last.to_dict())


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
    parser.add_argument("--embedding-dim", type=int, default=8, help="embedding size (default 8)")
    parser.add_argument("--cached-tokens", type=int, default=0,
                        help="usage.prompt_tokens_details.cached_tokens to report")
    args = parser.parse_args(argv)
    reply: str | ReplyFn = echo if args.echo else args.reply
    fake = FakeUpstream(reply, models=tuple(args.model or ["fake-model"]),
                        embedding_dim=args.embedding_dim, cached_tokens=args.cached_tokens,
                        host=args.host, port=args.port)
    print(f"fake upstream on http://{args.host}:{args.port}/v1", flush=True)
    fake.serve()


if __name__ == "__main__":
    main()
