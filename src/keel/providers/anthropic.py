"""Anthropic's Messages API over HTTP (``POST {base_url}/v1/messages``).

One pooled :class:`~keel.providers.http.HTTPClient` (aiohttp) per provider, opened in
:meth:`AnthropicProvider.start`. The translation to and from Anthropic's wire format lives in
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

from collections.abc import AsyncGenerator, Mapping
from typing import NoReturn

import orjson

from keel.errors import (
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
from keel.providers.base import ProviderRequest
from keel.providers.http import HTTPClient, parse_retry_after, parse_url, snippet
from keel.providers.openai_wire import UserContent
from keel.spec import ProviderSpec
from keel.types import Completion, Delta, Embeddings

DEFAULT_BASE_URL = "https://api.anthropic.com"

_HINTS = {
    401: "check the provider's api_key (sent as x-api-key)",
    403: "check the api_key's permissions for this model",
    404: "check base_url (Anthropic's is https://api.anthropic.com, without /v1) and the model",
}


def _upstream_message(data: bytes) -> str:
    """The message of an Anthropic error body ``{"type": "error", "error": {...}}``, or raw."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        return snippet(data) or "(empty body)"
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        kind = error.get("type")
        return f"{kind}: {error['message']}" if isinstance(kind, str) else str(error["message"])
    return snippet(data)


class AnthropicProvider:
    """Anthropic's Messages API. ``spec.base_url`` defaults to https://api.anthropic.com;
    ``spec.headers`` are sent too (e.g. ``anthropic-beta``, or another ``anthropic-version``)."""

    def __init__(self, name: str, spec: ProviderSpec) -> None:
        self.name = name
        self.spec = spec
        base = (spec.base_url or DEFAULT_BASE_URL).rstrip("/").removesuffix("/v1")
        self.url = parse_url(base, "/v1/messages", name, "https://api.anthropic.com")
        headers = {"content-type": "application/json", "accept": "application/json",
                   "anthropic-version": ANTHROPIC_VERSION, **spec.headers}
        if spec.api_key:
            headers["x-api-key"] = spec.api_key
        self.http = HTTPClient(name, self.url, headers, max_connections=spec.max_connections,
                               connect_timeout_s=spec.connect_timeout_s)
        self._user_content = UserContent()

    async def start(self) -> None:
        await self.http.start()

    async def prepare(self, request: ProviderRequest) -> None:
        self._user_content.prepare(request)

    async def close(self) -> None:
        await self.http.close()

    async def embed(self, request: ProviderRequest, texts: list[str]) -> Embeddings:
        raise ProviderRejected(
            f"provider '{self.name}': Anthropic has no embeddings API (model "
            f"'{request.model}'); serve embedding features from a local or openai provider"
        )

    # --- one attempt ----------------------------------------------------------------

    async def complete(self, request: ProviderRequest) -> Completion:
        status, headers, content = await self.http.post(
            self.url, self._body(request, stream=False), timeout_s=request.timeout_s,
            first_byte_timeout_s=request.first_byte_timeout_s, model=request.model)
        if not 200 <= status < 300:
            raise self._status_error(request, status, headers, content)
        try:
            data = orjson.loads(content)
        except orjson.JSONDecodeError:
            raise ProviderBadResponse(
                f"provider '{self.name}': HTTP {status} from {self.url} but the "
                f"body is not JSON: {snippet(content)!r}"
            ) from None
        try:
            return to_completion(data, request.output_kind, model=request.model)
        except ProviderBadResponse as exc:
            raise ProviderBadResponse(
                f"provider '{self.name}': HTTP {status} from {self.url} "
                f"(model '{request.model}'), but {exc.message}: {snippet(content)!r}"
            ) from None

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[Delta, None]:
        """Deltas as they arrive. Until the first one the whole wait is bounded by
        ``first_byte_timeout_s`` (else ``timeout_s``); after it, each read by ``timeout_s``
        (a stall raises ProviderStreamInterrupted)."""
        body = self._body(request, stream=True)
        first_wait = request.first_byte_timeout_s or request.timeout_s
        yielded = False
        async with self.http.stream(
                self.url, body, timeout_s=request.timeout_s,
                first_byte_timeout_s=request.first_byte_timeout_s,
                model=request.model) as response:
            status = response.status
            if not 200 <= status < 300:
                try:
                    content = await response.read()
                except ProviderError:
                    content = None  # the status says enough
                raise self._status_error(request, status, response.headers, content)
            ctype = response.headers.get("content-type", "")
            if not ctype.startswith("text/event-stream"):
                raise ProviderBadResponse(
                    f"provider '{self.name}': HTTP {status} from {self.url} with "
                    f"content-type {ctype!r}, not text/event-stream, to a stream request"
                )
            lines = response.lines()
            decoder, translator = SSEDecoder(), StreamTranslator()
            try:
                while not translator.done:
                    try:
                        event = decoder.feed(await anext(lines))
                    except StopAsyncIteration:
                        event = decoder.flush()
                        if event is None:
                            self._broken(request, yielded,
                                         "the stream ended without message_stop")
                    except ProviderTimeout:
                        if not yielded:
                            raise self.http.no_response(self.url, first_wait,
                                                        request.model) from None
                        self._broken(request, yielded,
                                     f"no data for {request.timeout_s:g}s (the stream stalled)")
                    except ProviderUnavailable as exc:
                        self._broken(request, yielded, exc.message)
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
                            f"provider '{self.name}': malformed stream event from {self.url}: "
                            f"{exc}"
                        ) from None
                    for delta in deltas:
                        if not yielded:
                            yielded = True
                            response.mark_started()
                        yield delta
            finally:
                await lines.aclose()

    # --- building the request -----------------------------------------------------------

    def _body(self, request: ProviderRequest, *, stream: bool) -> bytes:
        messages = request.messages
        if messages is None:
            messages = [{"role": "user", "content": self._user_content(request)}]
        if request.followup:
            messages = [*messages, *request.followup]
        params = {**request.params, **request.options} if request.options else request.params
        try:
            body = build_body(request.model, messages, params, system=request.system,
                              stream=stream)
        except ProviderRejected as exc:
            raise ProviderRejected(
                f"provider '{self.name}' (model '{request.model}'): {exc.message}") from None
        return orjson.dumps(body)

    # --- failures -------------------------------------------------------------------------

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
        self, request: ProviderRequest, status: int, headers: Mapping[str, str],
        body: bytes | None,
    ) -> ProviderRateLimited | ProviderUnavailable | ProviderRejected | ProviderBadResponse:
        where = f"provider '{self.name}': HTTP {status} from {self.url} (model '{request.model}')"
        message = "(body not read)" if body is None else _upstream_message(body)
        if status == 429:
            retry_after = parse_retry_after(headers)
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
