"""The Chat Completions wire protocol over HTTP: OpenAI and every server that speaks it
(vLLM, Ollama, LM Studio, llama.cpp, ...).

One pooled :class:`httpx.AsyncClient` per provider, opened in :meth:`OpenAIProvider.start`.
Failures map onto the ProviderError tree so the invoke stage knows what a retry can do:

=============================  =========================  =========
what happened                  raised                     retryable
=============================  =========================  =========
no answer within timeout_s     ProviderTimeout            yes
connect error, 5xx             ProviderUnavailable        yes
429                            ProviderRateLimited        yes (carries retry_after)
other 4xx                      ProviderRejected           no
body not JSON / no content     ProviderBadResponse        no (next target)
=============================  =========================  =========

Kinds ``label``/``text``/``json`` send one user message built from the input and prompt;
``chat`` sends the caller's ``messages`` as they are and returns the assistant message
(``content`` null when it holds ``tool_calls``). Params: the version's, then the call's
``options``, both through the :data:`CHAT_PARAMS` allow-list.

:meth:`OpenAIProvider.stream` reads server-sent events. ``request.timeout_s`` bounds the
time to the first delta (connect, headers and the chunks before it), then the silence
before each later chunk (a stall). Before the first delta failures map as above (the
caller can still fall back); after it, every failure — a cut without ``[DONE]``, a stall,
a malformed chunk, an in-stream ``{"error": ...}`` event — is ProviderStreamInterrupted.
:meth:`OpenAIProvider.embed` posts to ``/embeddings`` with the same mapping.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator
from email.utils import parsedate_to_datetime
from typing import Any, cast

import httpx
import orjson

from keel.errors import (
    ConfigError,
    ProviderBadResponse,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderStreamInterrupted,
    ProviderTimeout,
    ProviderUnavailable,
)
from keel.providers.base import ProviderRequest, render_prompt, shape_output
from keel.spec import ProviderSpec
from keel.types import Completion, Delta, Embeddings, Usage

DEFAULT_BASE_URL = "https://api.openai.com/v1"

# Request params forwarded as-is; anything else in a version's params (e.g. "text_field")
# is Keel's own. Server-specific extras (vLLM's top_k, guided_json, ...) go in "extra_body".
CHAT_PARAMS: frozenset[str] = frozenset({
    "temperature", "top_p", "max_tokens", "max_completion_tokens", "n", "stop", "seed",
    "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs",
    "response_format", "tools", "tool_choice", "parallel_tool_calls", "user",
    "reasoning_effort", "service_tier", "metadata", "store", "prediction", "verbosity",
})
EMBED_PARAMS: frozenset[str] = frozenset({"dimensions", "user"})
# in-stream error types that say the request itself is wrong (anything else: the server)
_REJECTED_TYPES = frozenset({"invalid_request_error", "authentication_error",
                             "permission_error", "not_found_error"})

_HINTS = {
    401: "check the provider's api_key",
    403: "check the api_key's permissions for this model",
    404: "check base_url (it usually ends in /v1) and the model name",
}


def _snippet(data: bytes, limit: int = 200) -> str:
    text = data[:limit].decode("utf-8", "replace")
    return text + ("..." if len(data) > limit else "")


def _upstream_message(data: bytes) -> str:
    """The error message of an error body: OpenAI's, Ollama's or FastAPI's shape, or raw."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        return _snippet(data) or "(empty body)"
    if isinstance(body, dict):
        err = body.get("error", body.get("detail"))
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
        if isinstance(err, str):
            return err
    return _snippet(data)


def parse_retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP-date)."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000
            if math.isfinite(value) and value >= 0:
                return value
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        value = float(raw)
        return value if math.isfinite(value) and value >= 0 else None
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def label_instruction(labels: list[str], descriptions: dict[str, str] | None) -> str:
    """The default prompt head for a label feature with no prompt of its own."""
    descriptions = descriptions or {}
    lines = [f"- {label}: {descriptions[label]}" if descriptions.get(label) else f"- {label}"
             for label in labels]
    return (
        "Classify the input into exactly one of these labels:\n" + "\n".join(lines)
        + "\n\nAnswer with the label only, exactly as written above, and nothing else."
        + "\n\nInput:\n"
    )


class OpenAIProvider:
    """A Chat Completions endpoint. ``spec.base_url`` defaults to OpenAI's."""

    def __init__(self, name: str, spec: ProviderSpec) -> None:
        self.name = name
        self.spec = spec
        base = (spec.base_url or DEFAULT_BASE_URL).rstrip("/")
        url = httpx.URL(base + "/chat/completions")
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(
                f"providers.{name}.base_url: '{spec.base_url}' is not an http(s) URL "
                "(e.g. http://localhost:11434/v1)"
            )
        self.url = url
        self.embeddings_url = httpx.URL(base + "/embeddings")
        self._client: httpx.AsyncClient | None = None
        self._timeouts: dict[float, httpx.Timeout] = {}
        # (feature, version) -> (labels, descriptions, instruction); identity-checked
        self._instructions: dict[
            tuple[str, str], tuple[list[str], dict[str, str] | None, str]
        ] = {}

    async def start(self) -> None:
        if self._client is not None:
            return
        headers = {"content-type": "application/json", "accept": "application/json",
                   **self.spec.headers}
        if self.spec.api_key:
            headers["authorization"] = f"Bearer {self.spec.api_key}"
        n = self.spec.max_connections
        self._client = httpx.AsyncClient(
            headers=headers,
            limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
            timeout=self._timeout(self.spec.timeout_s),
        )

    async def prepare(self, request: ProviderRequest) -> None:
        if request.output_kind == "label" and request.prompt is None and request.labels:
            self._instruction(request, request.labels)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # --- one attempt ----------------------------------------------------------------

    async def complete(self, request: ProviderRequest) -> Completion:
        client = self._client or await self._started()
        body = self._body(request)
        try:
            # a total deadline: httpx's read timeout is per read, not per response
            async with asyncio.timeout(request.timeout_s):
                response = await client.post(self.url, content=body,
                                             timeout=self._timeout(request.timeout_s))
        except (httpx.TimeoutException, TimeoutError):
            raise self._timeout_error(request, self.url) from None
        except httpx.TransportError as exc:
            raise self._connect_error(self.url, exc) from None
        status = response.status_code
        if not 200 <= status < 300:
            raise self._status_error(request, response)
        return self._completion(request, response.content)

    async def stream(self, request: ProviderRequest) -> AsyncIterator[Delta]:
        """The deltas of one answer, the last one with the usage. ``timeout_s`` is the
        time to first delta and the per-chunk stall timeout (see the module doc)."""
        client = self._client or await self._started()
        timeout_s = request.timeout_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s  # the first delta's: time to first token
        http_request = client.build_request(
            "POST", self.url, content=self._body(request, stream=True),
            headers={"accept": "text/event-stream"}, timeout=self._timeout(timeout_s))
        response: httpx.Response | None = None
        lines: AsyncGenerator[str, None] | None = None
        chunks = deltas = 0
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    response = await client.send(http_request, stream=True)
                    if not 200 <= response.status_code < 300:
                        await response.aread()
            except (httpx.TimeoutException, TimeoutError):
                raise self._timeout_error(request, self.url) from None
            except httpx.TransportError as exc:
                raise self._connect_error(self.url, exc) from None
            if not 200 <= response.status_code < 300:
                raise self._status_error(request, response)
            content_type = response.headers.get("content-type", "")
            if not content_type.startswith("text/event-stream"):
                raise ProviderBadResponse(
                    f"provider '{self.name}': {self.url} answered a stream request with "
                    f"{content_type or 'no content-type'}, not text/event-stream")
            lines = cast(AsyncGenerator[str, None], response.aiter_lines())
            while True:
                if deltas:  # after the first delta: the stall timeout, per chunk
                    deadline = loop.time() + timeout_s
                try:
                    async with asyncio.timeout_at(deadline):
                        data = await _next_event(lines)
                except (httpx.TimeoutException, TimeoutError):
                    what = "no chunk" if deltas else "no first delta (time to first token)"
                    raise self._stream_error(request, chunks, deltas, ProviderTimeout,
                                             f"{what} within {timeout_s:g}s") from None
                except httpx.HTTPError as exc:
                    raise self._stream_error(
                        request, chunks, deltas, ProviderUnavailable,
                        f"the connection broke: {type(exc).__name__}: {exc}") from None
                if data is None:
                    raise self._stream_error(request, chunks, deltas, ProviderUnavailable,
                                             "the stream ended without data: [DONE]")
                if data == "[DONE]":
                    return
                chunks += 1
                try:
                    chunk = orjson.loads(data)
                    error = chunk.get("error")
                    delta = None if error is not None else _chunk_delta(chunk)
                except (orjson.JSONDecodeError, TypeError, AttributeError, IndexError):
                    raise self._stream_error(request, chunks, deltas, ProviderBadResponse,
                                             f"a malformed chunk: {data[:200]!r}") from None
                if error is not None:
                    raise self._stream_error(request, chunks, deltas, *_error_event(error))
                if delta is not None:
                    deltas += 1
                    yield delta
        finally:
            if lines is not None:
                await lines.aclose()
            if response is not None:
                await response.aclose()

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
        client = self._client or await self._started()
        body: dict[str, Any] = {"model": request.model, "input": texts}
        for source in (request.params, request.options):
            for key in EMBED_PARAMS & source.keys():
                body[key] = source[key]
        body["encoding_format"] = "float"
        url = self.embeddings_url
        try:
            async with asyncio.timeout(request.timeout_s):
                response = await client.post(url, content=orjson.dumps(body),
                                             timeout=self._timeout(request.timeout_s))
        except (httpx.TimeoutException, TimeoutError):
            raise self._timeout_error(request, url) from None
        except httpx.TransportError as exc:
            raise self._connect_error(url, exc) from None
        if not 200 <= response.status_code < 300:
            raise self._status_error(request, response)
        content = response.content
        try:
            data = orjson.loads(content)
            items = sorted(data["data"], key=lambda item: item["index"])
            vectors = [[float(x) for x in item["embedding"]] for item in items]
            usage = Usage(input_tokens=(data.get("usage") or {}).get("prompt_tokens") or 0)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            raise ProviderBadResponse(
                f"provider '{self.name}': HTTP 200 from {url} without data[].embedding "
                f"lists of numbers: {_snippet(content)!r}"
            ) from None
        if len(vectors) != len(texts):
            raise ProviderBadResponse(
                f"provider '{self.name}': {url} returned {len(vectors)} vectors for "
                f"{len(texts)} texts")
        return Embeddings(vectors=vectors, usage=usage, model=data.get("model") or request.model)

    async def _started(self) -> httpx.AsyncClient:
        await self.start()
        assert self._client is not None
        return self._client

    def _timeout_error(self, request: ProviderRequest, url: httpx.URL) -> ProviderTimeout:
        return ProviderTimeout(
            f"provider '{self.name}': no response from {url} within "
            f"{request.timeout_s:g}s (model '{request.model}'); the server is slow or "
            "stuck: raise timeout_s or check it"
        )

    def _connect_error(self, url: httpx.URL, exc: Exception) -> ProviderUnavailable:
        return ProviderUnavailable(
            f"provider '{self.name}': cannot reach {url}: "
            f"{type(exc).__name__}: {str(exc) or 'connection failed'}; is the server running "
            "and base_url right?"
        )

    def _body(self, request: ProviderRequest, stream: bool = False) -> bytes:
        messages: list[dict[str, Any]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        if request.output_kind == "chat" and request.messages is not None:
            messages += request.messages
        else:
            messages.append({"role": "user", "content": self._user_content(request)})
        body: dict[str, Any] = {"model": request.model, "messages": messages}
        params = request.params
        if params:
            for key, value in params.items():
                if key in CHAT_PARAMS:
                    body[key] = value
            extra = params.get("extra_body")
            if isinstance(extra, dict):
                body.update(extra)
        options = request.options
        if options:  # the call's own Chat Completions options win over the version's
            for key, value in options.items():
                if key in CHAT_PARAMS:
                    body[key] = value
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return orjson.dumps(body)

    def _user_content(self, request: ProviderRequest) -> str:
        if request.prompt is not None:
            return render_prompt(request.prompt, request.input)
        field = request.params.get("text_field") or "text"
        text = request.input.get(field)
        if not isinstance(text, str):
            text = orjson.dumps(request.input).decode()
        if request.output_kind == "label" and request.labels:
            return self._instruction(request, request.labels) + text
        return text

    def _instruction(self, request: ProviderRequest, labels: list[str]) -> str:
        key = (request.feature, request.version)
        cached = self._instructions.get(key)
        descriptions = request.label_descriptions
        if cached is not None and cached[0] is labels and cached[1] is descriptions:
            return cached[2]
        text = label_instruction(labels, descriptions)
        self._instructions[key] = (labels, descriptions, text)
        return text

    def _timeout(self, timeout_s: float) -> httpx.Timeout:
        timeout = self._timeouts.get(timeout_s)
        if timeout is None:
            connect = min(self.spec.connect_timeout_s, timeout_s)
            timeout = self._timeouts[timeout_s] = httpx.Timeout(timeout_s, connect=connect)
        return timeout

    # --- reading the answer -----------------------------------------------------------

    def _status_error(
        self, request: ProviderRequest, response: httpx.Response
    ) -> ProviderRateLimited | ProviderUnavailable | ProviderRejected | ProviderBadResponse:
        status = response.status_code
        where = (f"provider '{self.name}': HTTP {status} from {response.url} "
                 f"(model '{request.model}')")
        message = _upstream_message(response.content)
        if status == 429:
            retry_after = parse_retry_after(response.headers)
            wait = f"; retry after {retry_after:g}s" if retry_after is not None else ""
            return ProviderRateLimited(f"{where}: rate limited: {message}{wait}",
                                       retry_after=retry_after)
        if status >= 500:
            return ProviderUnavailable(f"{where}: server error: {message}")
        if 400 <= status < 500:
            hint = _HINTS.get(status)
            return ProviderRejected(f"{where}: {message}" + (f" ({hint})" if hint else ""))
        return ProviderBadResponse(f"{where}: unexpected status: {message}")

    def _completion(self, request: ProviderRequest, content: bytes) -> Completion:
        kind = request.output_kind
        try:
            data = orjson.loads(content)
            choice = data["choices"][0]
            message = choice["message"]
            text = message.get("content") if kind == "chat" else message["content"]
        except orjson.JSONDecodeError:
            raise ProviderBadResponse(
                f"provider '{self.name}': HTTP 200 from {self.url} but the body is not JSON: "
                f"{_snippet(content)!r}"
            ) from None
        except (KeyError, IndexError, TypeError, AttributeError):
            raise ProviderBadResponse(
                f"provider '{self.name}': HTTP 200 from {self.url} without "
                f"choices[0].message.content: {_snippet(content)!r}"
            ) from None
        finish_reason = choice.get("finish_reason")
        # a null content is an answer for chat (a tool call's), never for the other kinds
        if not isinstance(text, str) and (kind != "chat" or text is not None):
            refusal = message.get("refusal")
            why = f"the model refused: {refusal}" if refusal else "content is not a string"
            raise ProviderBadResponse(
                f"provider '{self.name}': HTTP 200 from {self.url} but {why} "
                f"(finish_reason {finish_reason!r})"
            )
        usage = _usage(data.get("usage"))
        model = data.get("model") or request.model
        if kind == "chat" or text is None:
            output: dict[str, Any] = {"role": "assistant", "content": text}
            tool_calls = message.get("tool_calls")
            if tool_calls:
                output["tool_calls"] = tool_calls
            refusal = message.get("refusal")
            if refusal:
                output["refusal"] = refusal
            return Completion(output=output, usage=usage, text=text or "", model=model,
                              finish_reason=finish_reason)
        confidence = None
        if kind == "label" and request.params.get("logprobs"):
            confidence = _confidence(choice.get("logprobs"))
        return Completion(
            output=shape_output(kind, text),
            confidence=confidence,
            usage=usage,
            text=text,
            model=model,
            finish_reason=finish_reason,
        )


def _usage(usage: Any) -> Usage:
    """OpenAI's usage object; cached and reasoning tokens from its ``*_details``."""
    if not isinstance(usage, dict):
        return Usage()
    tokens = Usage(usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0)
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict):
        tokens.cached_input_tokens = details.get("cached_tokens") or 0
    details = usage.get("completion_tokens_details")
    if isinstance(details, dict):
        tokens.reasoning_tokens = details.get("reasoning_tokens") or 0
    return tokens


def _error_event(error: Any) -> tuple[type[ProviderError], str]:
    """The error class and message for an in-stream ``{"error": ...}`` event."""
    if not isinstance(error, dict):
        return ProviderUnavailable, f"the server sent an error event: {error}"
    kind = f"{error.get('type')} {error.get('code')}"
    cls: type[ProviderError] = ProviderUnavailable
    if "rate_limit" in kind:
        cls = ProviderRateLimited
    elif any(t in kind for t in _REJECTED_TYPES):
        cls = ProviderRejected
    return cls, f"the server sent an error event: {error.get('message') or error}"


def _chunk_delta(chunk: dict[str, Any]) -> Delta | None:
    """The delta of one ``chat.completion.chunk`` (None when it carries nothing: the
    opening role-only chunk). Raises TypeError/AttributeError on a malformed one."""
    text, tool_calls, finish_reason = "", None, None
    choices = chunk.get("choices")
    if choices:
        choice = choices[0]
        delta = choice.get("delta") or {}
        text = delta.get("content") or ""
        if not isinstance(text, str):
            raise TypeError("delta.content is not a string")
        tool_calls = delta.get("tool_calls") or None
        if tool_calls is not None and not isinstance(tool_calls, list):
            raise TypeError("delta.tool_calls is not a list")
        finish_reason = choice.get("finish_reason")
    raw_usage = chunk.get("usage")
    usage = _usage(raw_usage) if isinstance(raw_usage, dict) else None
    if text or tool_calls or finish_reason or usage:
        return Delta(text, tool_calls, finish_reason, usage)
    return None


async def _next_event(lines: AsyncIterator[str]) -> str | None:
    """The data of the next server-sent event (None at the end of the stream). ``event:``,
    ``id:`` and ``retry:`` fields and ``:`` comments (keep-alives) are skipped."""
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                return "\n".join(data)
        elif line.startswith("data:"):
            data.append(line[6:] if line.startswith("data: ") else line[5:])
    return "\n".join(data) if data else None


def _confidence(logprobs: Any) -> float | None:
    """P(the whole answer) = exp(sum of its token logprobs), when the server sent them."""
    if not isinstance(logprobs, dict):
        return None
    tokens = logprobs.get("content")
    if not isinstance(tokens, list) or not tokens:
        return None
    try:
        total = math.fsum(float(t["logprob"]) for t in tokens)
    except (KeyError, TypeError, ValueError):
        return None
    return min(1.0, max(0.0, math.exp(total)))
