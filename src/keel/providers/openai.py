"""The Chat Completions wire protocol over HTTP: OpenAI and every server that speaks it
(vLLM, Ollama, LM Studio, llama.cpp, ...).

One pooled :class:`~keel.providers.http.HTTPClient` (aiohttp) per provider, opened in
:meth:`OpenAIProvider.start`; request bodies and answers are translated in
:mod:`keel.providers.openai_wire`. Failures map onto the ProviderError tree so the invoke
stage knows what a retry can do:

=============================  =========================  =========
what happened                  raised                     retryable
=============================  =========================  =========
no answer within timeout_s     ProviderTimeout            yes
connect error, 5xx             ProviderUnavailable        yes
429                            ProviderRateLimited        yes (carries retry_after)
other 4xx                      ProviderRejected           no
body not JSON / no content     ProviderBadResponse        no (next target)
=============================  =========================  =========

The connect, first-byte and read timeouts are :mod:`keel.providers.http`'s; the total for
one attempt is the invoke stage's ``asyncio.timeout(timeout_s)``.

:meth:`OpenAIProvider.stream` reads server-sent events. The first delta must arrive
within ``first_byte_timeout_s`` (else ``timeout_s``) — connect, headers and the chunks
before it — then each later chunk within ``timeout_s`` of silence (a stall). Before the
first delta failures map as above (the caller can still fall back); after it, every
failure — a cut without ``[DONE]``, a stall, a malformed chunk, an in-stream
``{"error": ...}`` event — is ProviderStreamInterrupted.
:meth:`OpenAIProvider.embed` posts to ``/embeddings`` with the same mapping.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson

from keel.errors import (
    ProviderBadResponse,
    ProviderError,
    ProviderStreamInterrupted,
    ProviderTimeout,
    ProviderUnavailable,
)
from keel.providers.base import ProviderRequest
from keel.providers.http import HTTPClient, parse_retry_after, parse_url
from keel.providers.openai_wire import (
    CHAT_PARAMS,
    EMBED_PARAMS,
    UserContent,
    chat_body,
    chunk_delta,
    embeddings_body,
    error_event,
    label_instruction,
    next_event,
    status_error,
    to_completion,
    to_embeddings,
)
from keel.spec import ProviderSpec
from keel.types import Completion, Delta, Embeddings

__all__ = ["CHAT_PARAMS", "DEFAULT_BASE_URL", "EMBED_PARAMS", "OpenAIProvider",
           "label_instruction", "parse_retry_after"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_STREAM_HEADERS = {"accept": "text/event-stream"}


class OpenAIProvider:
    """A Chat Completions endpoint. ``spec.base_url`` defaults to OpenAI's."""

    def __init__(self, name: str, spec: ProviderSpec) -> None:
        self.name = name
        self.spec = spec
        base = (spec.base_url or DEFAULT_BASE_URL).rstrip("/")
        example = "http://localhost:11434/v1"
        self.url = parse_url(base, "/chat/completions", name, example)
        self.embeddings_url = parse_url(base, "/embeddings", name, example)
        headers = {"content-type": "application/json", "accept": "application/json",
                   **spec.headers}
        if spec.api_key:
            headers["authorization"] = f"Bearer {spec.api_key}"
        self.http = HTTPClient(name, self.url, headers, max_connections=spec.max_connections,
                               connect_timeout_s=spec.connect_timeout_s)
        self._user_content = UserContent()

    async def start(self) -> None:
        await self.http.start()

    async def prepare(self, request: ProviderRequest) -> None:
        self._user_content.prepare(request)

    async def close(self) -> None:
        await self.http.close()

    # --- one attempt ----------------------------------------------------------------

    async def complete(self, request: ProviderRequest) -> Completion:
        url = self.url
        status, headers, content = await self.http.post(
            url, chat_body(request, self._user_content), timeout_s=request.timeout_s,
            first_byte_timeout_s=request.first_byte_timeout_s, model=request.model)
        if not 200 <= status < 300:
            raise status_error(self.name, url, request, status, headers, content)
        return to_completion(request, content, self.name, url)

    async def stream(self, request: ProviderRequest) -> AsyncIterator[Delta]:
        """The deltas of one answer, the last one with the usage. The first delta within
        the first-byte timeout, then a stall timeout per chunk (see the module doc)."""
        timeout_s = request.timeout_s
        first_wait = request.first_byte_timeout_s or timeout_s
        body = chat_body(request, self._user_content, stream=True)
        chunks = deltas = 0
        async with self.http.stream(
                self.url, body, _STREAM_HEADERS, timeout_s=timeout_s,
                first_byte_timeout_s=request.first_byte_timeout_s,
                model=request.model) as response:
            if not 200 <= response.status < 300:
                content = await response.read()
                raise status_error(self.name, self.url, request, response.status,
                                   response.headers, content)
            content_type = response.headers.get("content-type", "")
            if not content_type.startswith("text/event-stream"):
                raise ProviderBadResponse(
                    f"provider '{self.name}': {self.url} answered a stream request with "
                    f"{content_type or 'no content-type'}, not text/event-stream")
            lines = response.lines()
            try:
                while True:
                    try:
                        data = await next_event(lines)
                    except ProviderTimeout:
                        what = (f"no chunk within {timeout_s:g}s" if deltas else
                                f"no first delta (time to first token) within {first_wait:g}s")
                        raise self._stream_error(request, chunks, deltas, ProviderTimeout,
                                                 what) from None
                    except ProviderUnavailable as exc:
                        raise self._stream_error(request, chunks, deltas, ProviderUnavailable,
                                                 exc.message) from None
                    if data is None:
                        raise self._stream_error(request, chunks, deltas, ProviderUnavailable,
                                                 "the stream ended without data: [DONE]")
                    if data == "[DONE]":
                        return
                    chunks += 1
                    try:
                        chunk = orjson.loads(data)
                        error = chunk.get("error")
                        delta = None if error is not None else chunk_delta(chunk)
                    except (orjson.JSONDecodeError, TypeError, AttributeError, IndexError):
                        raise self._stream_error(request, chunks, deltas, ProviderBadResponse,
                                                 f"a malformed chunk: {data[:200]!r}") from None
                    if error is not None:
                        raise self._stream_error(request, chunks, deltas, *error_event(error))
                    if delta is not None:
                        if not deltas:
                            response.mark_started()
                        deltas += 1
                        yield delta
            finally:
                await lines.aclose()

    def _stream_error(self, request: ProviderRequest, chunks: int, deltas: int,
                      before: type[ProviderError], what: str) -> ProviderError:
        """``before`` while the caller can still fall back, else ProviderStreamInterrupted."""
        where = f"provider '{self.name}': stream from {self.url} (model '{request.model}')"
        if deltas:
            return ProviderStreamInterrupted(
                f"{where} broke after {chunks} chunk(s), {deltas} delta(s) already sent: {what}")
        return before(f"{where} failed before the first delta ({chunks} chunk(s) arrived): "
                      f"{what}")

    async def embed(self, request: ProviderRequest, texts: list[str]) -> Embeddings:
        """``POST {base_url}/embeddings``: one vector per text, in order."""
        if not texts:
            return Embeddings(vectors=[], model=request.model)
        url = self.embeddings_url
        status, headers, content = await self.http.post(
            url, embeddings_body(request, texts), timeout_s=request.timeout_s,
            first_byte_timeout_s=request.first_byte_timeout_s, model=request.model)
        if not 200 <= status < 300:
            raise status_error(self.name, url, request, status, headers, content)
        return to_embeddings(request, texts, content, self.name, url)
