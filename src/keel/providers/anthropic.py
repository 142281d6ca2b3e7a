"""Anthropic's Messages API over HTTP (``POST {base_url}/v1/messages``).

One pooled :class:`httpx.AsyncClient` per provider, opened in :meth:`AnthropicProvider.start`.
The translation to and from Anthropic's wire format lives in
:mod:`keel.providers.anthropic_wire`; this module does the I/O and maps failures onto the
ProviderError tree so the invoke stage knows what a retry can do:

=================================  =========================  =========
what happened                      raised                     retryable
=================================  =========================  =========
no answer within timeout_s         ProviderTimeout            yes
connect error, 5xx, 529 overload   ProviderUnavailable        yes
429                                ProviderRateLimited        yes (carries retry_after)
401/403 (api_key), other 4xx       ProviderRejected           no
body not JSON / not a message      ProviderBadResponse        no (next target)
stream broke after a delta         ProviderStreamInterrupted  no
=================================  =========================  =========

``base_url`` is Anthropic's root (https://api.anthropic.com, without ``/v1``; a trailing
``/v1`` is tolerated). Anthropic has no embeddings API: :meth:`embed` is rejected.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, NoReturn

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
from keel.providers.anthropic_wire import (
    ANTHROPIC_VERSION,
    AnthropicStreamError,
    SSEDecoder,
    StreamTranslator,
    build_body,
    to_completion,
)
from keel.providers.base import ProviderRequest, render_prompt
from keel.providers.openai import label_instruction, parse_retry_after
from keel.spec import ProviderSpec
from keel.types import Completion, Delta, Embeddings

DEFAULT_BASE_URL = "https://api.anthropic.com"

_HINTS = {
    401: "check the provider's api_key (sent as x-api-key)",
    403: "check the api_key's permissions for this model",
    404: "check base_url (Anthropic's is https://api.anthropic.com, without /v1) and the model",
}


def _snippet(data: bytes, limit: int = 200) -> str:
    text = data[:limit].decode("utf-8", "replace")
    return text + ("..." if len(data) > limit else "")


def _upstream_message(data: bytes) -> str:
    """The message of an Anthropic error body ``{"type": "error", "error": {...}}``, or raw."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        return _snippet(data) or "(empty body)"
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        kind = error.get("type")
        return f"{kind}: {error['message']}" if isinstance(kind, str) else str(error["message"])
    return _snippet(data)


class AnthropicProvider:
    """Anthropic's Messages API. ``spec.base_url`` defaults to https://api.anthropic.com;
    ``spec.headers`` are sent too (e.g. ``anthropic-beta``, or another ``anthropic-version``)."""

    def __init__(self, name: str, spec: ProviderSpec) -> None:
        self.name = name
        self.spec = spec
        base = (spec.base_url or DEFAULT_BASE_URL).rstrip("/").removesuffix("/v1")
        url = httpx.URL(base + "/v1/messages")
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(
                f"providers.{name}.base_url: '{spec.base_url}' is not an http(s) URL "
                "(e.g. https://api.anthropic.com)"
            )
        self.url = url
        self._client: httpx.AsyncClient | None = None
        self._timeouts: dict[float, httpx.Timeout] = {}
        self._instructions: dict[tuple[str, str], tuple[list[str], Any, str]] = {}

    async def start(self) -> None:
        if self._client is not None:
            return
        headers = {"content-type": "application/json", "accept": "application/json",
                   "anthropic-version": ANTHROPIC_VERSION, **self.spec.headers}
        if self.spec.api_key:
            headers["x-api-key"] = self.spec.api_key
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

    async def embed(self, request: ProviderRequest, texts: list[str]) -> Embeddings:
        raise ProviderRejected(
            f"provider '{self.name}': Anthropic has no embeddings API (model "
            f"'{request.model}'); serve embedding features from a local or openai provider"
        )

    # --- one attempt ----------------------------------------------------------------

    async def complete(self, request: ProviderRequest) -> Completion:
        client = await self._ready()
        body = self._body(request, stream=False)
        try:
            # a total deadline: httpx's read timeout is per read, not per response
            async with asyncio.timeout(request.timeout_s):
                response = await client.post(self.url, content=body,
                                             timeout=self._timeout(request.timeout_s))
        except (httpx.TimeoutException, TimeoutError):
            raise self._timed_out(request) from None
        except httpx.RequestError as exc:
            raise self._unreachable(exc) from None
        if not 200 <= response.status_code < 300:
            raise self._status_error(request, response)
        try:
            data = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise ProviderBadResponse(
                f"provider '{self.name}': HTTP {response.status_code} from {self.url} but the "
                f"body is not JSON: {_snippet(response.content)!r}"
            ) from None
        try:
            return to_completion(data, request.output_kind, model=request.model)
        except ProviderBadResponse as exc:
            raise ProviderBadResponse(
                f"provider '{self.name}': HTTP {response.status_code} from {self.url} "
                f"(model '{request.model}'), but {exc.message}: {_snippet(response.content)!r}"
            ) from None

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[Delta, None]:
        """Deltas as they arrive. Until the first one the whole wait is bounded by
        ``timeout_s``; after it, each read is (a stall raises ProviderStreamInterrupted)."""
        client = await self._ready()
        body = self._body(request, stream=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + request.timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                response = await client.send(
                    client.build_request("POST", self.url, content=body,
                                         timeout=self._timeout(request.timeout_s)),
                    stream=True)
        except (httpx.TimeoutException, TimeoutError):
            raise self._timed_out(request) from None
        except httpx.RequestError as exc:
            raise self._unreachable(exc) from None
        yielded = False
        lines: AsyncIterator[str] | None = None
        try:
            if not 200 <= response.status_code < 300:
                try:
                    async with asyncio.timeout_at(deadline):
                        await response.aread()
                except (TimeoutError, httpx.HTTPError):
                    pass  # the status says enough
                raise self._status_error(request, response)
            ctype = response.headers.get("content-type", "")
            if not ctype.startswith("text/event-stream"):
                raise ProviderBadResponse(
                    f"provider '{self.name}': HTTP {response.status_code} from {self.url} with "
                    f"content-type {ctype!r}, not text/event-stream, to a stream request"
                )
            lines = response.aiter_lines()
            decoder, translator = SSEDecoder(), StreamTranslator()
            while not translator.done:
                try:
                    async with asyncio.timeout_at(
                            loop.time() + request.timeout_s if yielded else deadline):
                        line = await anext(lines)
                    event = decoder.feed(line)
                except StopAsyncIteration:
                    event = decoder.flush()
                    if event is None:
                        self._broken(request, yielded, "the stream ended without message_stop")
                except (httpx.TimeoutException, TimeoutError):
                    if not yielded:
                        raise self._timed_out(request) from None
                    self._broken(request, yielded,
                                 f"no data for {request.timeout_s:g}s (the stream stalled)")
                except httpx.RequestError as exc:
                    self._broken(request, yielded,
                                 f"{type(exc).__name__}: {str(exc) or 'connection lost'}")
                if event is None:
                    continue
                try:
                    deltas = translator.feed(*event)
                except AnthropicStreamError as exc:
                    self._stream_error(request, yielded, exc)
                except ValueError as exc:
                    if yielded:
                        self._broken(request, yielded, f"malformed event: {exc}")
                    raise ProviderBadResponse(
                        f"provider '{self.name}': malformed stream event from {self.url}: {exc}"
                    ) from None
                for delta in deltas:
                    yielded = True
                    yield delta
        finally:
            close = getattr(lines, "aclose", None)
            if close is not None:
                await close()
            await response.aclose()

    # --- building the request -----------------------------------------------------------

    async def _ready(self) -> httpx.AsyncClient:
        if self._client is None:
            await self.start()
        assert self._client is not None
        return self._client

    def _body(self, request: ProviderRequest, *, stream: bool) -> bytes:
        messages = request.messages
        if messages is None:
            messages = [{"role": "user", "content": self._user_content(request)}]
        params = {**request.params, **request.options} if request.options else request.params
        try:
            body = build_body(request.model, messages, params, system=request.system,
                              stream=stream)
        except ProviderRejected as exc:
            raise ProviderRejected(
                f"provider '{self.name}' (model '{request.model}'): {exc.message}") from None
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

    # --- failures -------------------------------------------------------------------------

    def _timed_out(self, request: ProviderRequest) -> ProviderTimeout:
        return ProviderTimeout(
            f"provider '{self.name}': no response from {self.url} within "
            f"{request.timeout_s:g}s (model '{request.model}'); Anthropic is slow or "
            "stuck: raise timeout_s or check it"
        )

    def _unreachable(self, exc: httpx.RequestError) -> ProviderUnavailable:
        return ProviderUnavailable(
            f"provider '{self.name}': cannot reach {self.url}: "
            f"{type(exc).__name__}: {str(exc) or 'connection failed'}; is the server running "
            "and base_url right?"
        )

    def _broken(self, request: ProviderRequest, yielded: bool, why: str) -> NoReturn:
        """The stream failed: interrupted once the caller has content, else retryable."""
        where = f"provider '{self.name}': the stream from {self.url} (model '{request.model}')"
        if yielded:
            raise ProviderStreamInterrupted(
                f"{where} broke after the answer started: {why}; the partial answer cannot "
                "be retried"
            ) from None
        raise ProviderUnavailable(f"{where} broke before any content: {why}") from None

    def _stream_error(self, request: ProviderRequest, yielded: bool,
                      exc: AnthropicStreamError) -> NoReturn:
        if yielded:
            self._broken(request, yielded, f"error event {exc}")
        where = f"provider '{self.name}': error event in the stream from {self.url} " \
                f"(model '{request.model}')"
        error: ProviderError
        if exc.error_type == "rate_limit_error":
            error = ProviderRateLimited(f"{where}: {exc}")
        elif exc.error_type in ("overloaded_error", "api_error"):
            error = ProviderUnavailable(f"{where}: {exc}")
        else:
            error = ProviderRejected(f"{where}: {exc}")
        raise error from None

    def _status_error(
        self, request: ProviderRequest, response: httpx.Response
    ) -> ProviderRateLimited | ProviderUnavailable | ProviderRejected | ProviderBadResponse:
        status = response.status_code
        where = f"provider '{self.name}': HTTP {status} from {self.url} (model '{request.model}')"
        try:
            message = _upstream_message(response.content)
        except httpx.ResponseNotRead:
            message = "(body not read)"
        if status == 429:
            retry_after = parse_retry_after(response.headers)
            wait = f"; retry after {retry_after:g}s" if retry_after is not None else ""
            return ProviderRateLimited(f"{where}: rate limited: {message}{wait}",
                                       retry_after=retry_after)
        if status == 529:
            return ProviderUnavailable(f"{where}: Anthropic is overloaded: {message}")
        if status >= 500:
            return ProviderUnavailable(f"{where}: server error: {message}")
        if 400 <= status < 500:
            hint = _HINTS.get(status)
            return ProviderRejected(f"{where}: {message}" + (f" ({hint})" if hint else ""))
        return ProviderBadResponse(f"{where}: unexpected status: {message}")
