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
"""

from __future__ import annotations

import asyncio
import math
import time
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import orjson

from keel.errors import (
    ConfigError,
    ProviderBadResponse,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
)
from keel.providers.base import ProviderRequest, render_prompt, shape_output
from keel.spec import ProviderSpec
from keel.types import Completion, Usage

DEFAULT_BASE_URL = "https://api.openai.com/v1"

# Request params forwarded as-is; anything else in a version's params (e.g. "text_field")
# is Keel's own. Server-specific extras (vLLM's top_k, guided_json, ...) go in "extra_body".
CHAT_PARAMS: frozenset[str] = frozenset({
    "temperature", "top_p", "max_tokens", "max_completion_tokens", "n", "stop", "seed",
    "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs",
    "response_format", "tools", "tool_choice", "parallel_tool_calls", "user",
    "reasoning_effort", "service_tier", "metadata", "store", "prediction", "verbosity",
})

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
        client = self._client
        if client is None:
            await self.start()
            client = self._client
            assert client is not None
        body = self._body(request)
        try:
            # a total deadline: httpx's read timeout is per read, not per response
            async with asyncio.timeout(request.timeout_s):
                response = await client.post(self.url, content=body,
                                             timeout=self._timeout(request.timeout_s))
        except (httpx.TimeoutException, TimeoutError):
            raise ProviderTimeout(
                f"provider '{self.name}': no response from {self.url} within "
                f"{request.timeout_s:g}s (model '{request.model}'); the server is slow or "
                "stuck: raise timeout_s or check it"
            ) from None
        except httpx.TransportError as exc:
            raise ProviderUnavailable(
                f"provider '{self.name}': cannot reach {self.url}: "
                f"{type(exc).__name__}: {str(exc) or 'connection failed'}; is the server running "
                "and base_url right?"
            ) from None
        status = response.status_code
        if not 200 <= status < 300:
            raise self._status_error(request, response)
        return self._completion(request, response.content)

    def _body(self, request: ProviderRequest) -> bytes:
        messages: list[dict[str, str]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
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
        where = f"provider '{self.name}': HTTP {status} from {self.url} (model '{request.model}')"
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
        try:
            data = orjson.loads(content)
            choice = data["choices"][0]
            text = choice["message"]["content"]
        except orjson.JSONDecodeError:
            raise ProviderBadResponse(
                f"provider '{self.name}': HTTP 200 from {self.url} but the body is not JSON: "
                f"{_snippet(content)!r}"
            ) from None
        except (KeyError, IndexError, TypeError):
            raise ProviderBadResponse(
                f"provider '{self.name}': HTTP 200 from {self.url} without "
                f"choices[0].message.content: {_snippet(content)!r}"
            ) from None
        if not isinstance(text, str):
            refusal = choice["message"].get("refusal")
            why = f"the model refused: {refusal}" if refusal else "content is not a string"
            raise ProviderBadResponse(
                f"provider '{self.name}': HTTP 200 from {self.url} but {why} "
                f"(finish_reason {choice.get('finish_reason')!r})"
            )
        usage = data.get("usage")
        if isinstance(usage, dict):
            tokens = Usage(usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0)
        else:
            tokens = Usage()
        confidence = None
        if request.output_kind == "label" and request.params.get("logprobs"):
            confidence = _confidence(choice.get("logprobs"))
        return Completion(
            output=shape_output(request.output_kind, text),
            confidence=confidence,
            usage=tokens,
            text=text,
            model=data.get("model") or request.model,
        )


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
