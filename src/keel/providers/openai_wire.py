"""Pure translation for the Chat Completions wire protocol: request bodies out, completions,
stream chunks, embeddings and error statuses in. No I/O: :mod:`keel.providers.openai`
sends what these build and hands back what arrives.

Kinds ``label``/``text``/``json`` send one user message built from the input and prompt
(:class:`UserContent`, which Anthropic's provider shares); ``chat`` sends the caller's
``messages`` as they are and returns the assistant message (``content`` null when it
holds ``tool_calls``). Params: the version's, then the call's ``options``, both through
the :data:`CHAT_PARAMS` allow-list.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from keel.errors import (
    ProviderBadResponse,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnavailable,
)
from keel.providers.base import ProviderRequest, render_prompt, shape_output
from keel.providers.http import parse_retry_after, snippet
from keel.types import Completion, Delta, Embeddings, Usage

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


def _upstream_message(data: bytes) -> str:
    """The error message of an error body: OpenAI's, Ollama's or FastAPI's shape, or raw."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        return snippet(data) or "(empty body)"
    if isinstance(body, dict):
        err = body.get("error", body.get("detail"))
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
        if isinstance(err, str):
            return err
    return snippet(data)


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


class UserContent:
    """The one user message of a ``label``/``text``/``json`` call: the rendered prompt, or
    the input's text (after the label instruction, cached per feature and version)."""

    def __init__(self) -> None:
        # (feature, version) -> (labels, descriptions, instruction); identity-checked
        self._instructions: dict[tuple[str, str], tuple[list[str], Any, str]] = {}

    def prepare(self, request: ProviderRequest) -> None:
        if request.output_kind == "label" and request.prompt is None and request.labels:
            self._instruction(request, request.labels)

    def __call__(self, request: ProviderRequest) -> str:
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


# --- requests ----------------------------------------------------------------------------


def chat_body(request: ProviderRequest, user_content: UserContent, stream: bool = False) -> bytes:
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    if request.output_kind == "chat" and request.messages is not None:
        messages += request.messages
    else:
        messages.append({"role": "user", "content": user_content(request)})
    messages += request.followup
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


def embeddings_body(request: ProviderRequest, texts: list[str]) -> bytes:
    body: dict[str, Any] = {"model": request.model, "input": texts}
    for source in (request.params, request.options):
        for key in EMBED_PARAMS & source.keys():
            body[key] = source[key]
    body["encoding_format"] = "float"
    return orjson.dumps(body)


# --- answers ---------------------------------------------------------------------------------


def status_error(
    name: str, url: object, request: ProviderRequest, status: int, headers: Mapping[str, str],
    body: bytes,
) -> ProviderRateLimited | ProviderUnavailable | ProviderRejected | ProviderBadResponse:
    where = f"provider '{name}': HTTP {status} from {url} (model '{request.model}')"
    message = _upstream_message(body)
    if status == 429:
        retry_after = parse_retry_after(headers)
        wait = f"; retry after {retry_after:g}s" if retry_after is not None else ""
        return ProviderRateLimited(f"{where}: rate limited: {message}{wait}",
                                   retry_after=retry_after)
    if status >= 500:
        return ProviderUnavailable(f"{where}: server error: {message}")
    if 400 <= status < 500:
        hint = _HINTS.get(status)
        return ProviderRejected(f"{where}: {message}" + (f" ({hint})" if hint else ""))
    return ProviderBadResponse(f"{where}: unexpected status: {message}")


def to_completion(request: ProviderRequest, content: bytes, name: str, url: object) -> Completion:
    """A 2xx ``chat.completion`` body as a Completion; ProviderBadResponse if it is not one."""
    kind = request.output_kind
    try:
        data = orjson.loads(content)
        choice = data["choices"][0]
        message = choice["message"]
        text = message.get("content") if kind == "chat" else message["content"]
    except orjson.JSONDecodeError:
        raise ProviderBadResponse(
            f"provider '{name}': HTTP 200 from {url} but the body is not JSON: "
            f"{snippet(content)!r}"
        ) from None
    except (KeyError, IndexError, TypeError, AttributeError):
        raise ProviderBadResponse(
            f"provider '{name}': HTTP 200 from {url} without "
            f"choices[0].message.content: {snippet(content)!r}"
        ) from None
    finish_reason = choice.get("finish_reason")
    # a null content is an answer for chat (a tool call's), never for the other kinds
    if not isinstance(text, str) and (kind != "chat" or text is not None):
        refusal = message.get("refusal")
        why = f"the model refused: {refusal}" if refusal else "content is not a string"
        raise ProviderBadResponse(
            f"provider '{name}': HTTP 200 from {url} but {why} "
            f"(finish_reason {finish_reason!r})"
        )
    usage = to_usage(data.get("usage"))
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


def to_embeddings(request: ProviderRequest, texts: list[str], content: bytes, name: str,
                  url: object) -> Embeddings:
    """A 2xx ``/embeddings`` body: one vector per text, in order."""
    try:
        data = orjson.loads(content)
        items = sorted(data["data"], key=lambda item: item["index"])
        vectors = [[float(x) for x in item["embedding"]] for item in items]
        usage = Usage(input_tokens=(data.get("usage") or {}).get("prompt_tokens") or 0)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        raise ProviderBadResponse(
            f"provider '{name}': HTTP 200 from {url} without data[].embedding "
            f"lists of numbers: {snippet(content)!r}"
        ) from None
    if len(vectors) != len(texts):
        raise ProviderBadResponse(
            f"provider '{name}': {url} returned {len(vectors)} vectors for "
            f"{len(texts)} texts")
    return Embeddings(vectors=vectors, usage=usage, model=data.get("model") or request.model)


def to_usage(usage: Any) -> Usage:
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


# --- streams -----------------------------------------------------------------------------------


def error_event(error: Any) -> tuple[type[ProviderError], str]:
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


def chunk_delta(chunk: dict[str, Any]) -> Delta | None:
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
    usage = to_usage(raw_usage) if isinstance(raw_usage, dict) else None
    if text or tool_calls or finish_reason or usage:
        return Delta(text, tool_calls, finish_reason, usage)
    return None


async def next_event(lines: AsyncIterator[str]) -> str | None:
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
