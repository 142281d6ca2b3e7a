"""The OpenAI-compatible front: ``/v1/chat/completions`` (streaming too),
``/v1/embeddings`` and ``/v1/models``.

``model`` names a feature. For ``chat`` features the caller's messages and Chat
Completions options (tools, response_format, temperature, ...) go to the provider as
they are; for label, text and json features the last user message becomes the
feature's input (its text field, or the message parsed as a JSON object). Every
answer carries Keel's facts in the ``x-keel-*`` headers and in a ``keel`` field
(non-streamed: on the completion; streamed: on the last chunk before ``[DONE]``),
which the official SDK passes through untouched.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from keel.errors import InvalidRequest, NotFound
from keel.feature import Feature
from keel.gateway import Keel
from keel.server.access import check_feature, visible
from keel.server.auth import request_key_id
from keel.server.body import read_json_object
from keel.server.features import ERRORS, _kind, failed_response, json_response
from keel.server.schema import keel_headers, outcome_body
from keel.stages.cache import directive
from keel.streaming import STREAMABLE, StreamFailed, StreamStart
from keel.types import JSON, Decision, Delta, Outcome

router = APIRouter()

# per-call options a chat feature passes on to its provider
CHAT_OPTIONS = frozenset({
    "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed",
    "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs",
    "response_format", "tools", "tool_choice", "parallel_tool_calls", "reasoning_effort",
})


class ModelNotFound(NotFound):
    code = "model_not_found"


def _feature(keel: Keel, model: Any) -> Feature:
    if not isinstance(model, str) or not model:
        raise InvalidRequest('"model" must be the name of a Keel feature', param="model")
    feature = keel.features.get(model)
    if feature is None:
        raise ModelNotFound(
            f"The model '{model}' does not exist: a model is a Keel feature "
            f"(features: {', '.join(sorted(keel.features)) or 'none'})", param="model")
    return feature


def _message_text(messages: Any) -> str:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest('"messages" must be a non-empty array', param="messages")
    for i in range(len(messages) - 1, -1, -1):
        message = messages[i]
        if not isinstance(message, dict) or "role" not in message:
            raise InvalidRequest(f"messages[{i}] must be an object with a role",
                                 param=f"messages[{i}]")
        if message["role"] != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            if parts and all(isinstance(p, str) for p in parts):
                return "\n".join(str(p) for p in parts)
        raise InvalidRequest(f"messages[{i}].content must be text, got {_kind(content)}",
                             param=f"messages[{i}].content")
    raise InvalidRequest("messages has no user message to answer", param="messages")


def _input_for(feature: Feature, text: str) -> dict[str, JSON]:
    field = feature.spec.input.text_field
    required = set(feature.spec.input.json_schema.get("required", []))
    if field and required <= {field}:
        return {field: text}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise InvalidRequest(
            f"feature '{feature.name}' takes a JSON object with {', '.join(sorted(required))}; "
            "send it as the user message's content", param="messages")
    return value


def _content(outcome: Outcome) -> str | None:
    output = outcome.output
    if isinstance(output, str):
        return output
    if isinstance(output, dict):
        if set(output) <= {"label"} and isinstance(output.get("label"), str):
            return str(output["label"])
        if set(output) <= {"text"} and isinstance(output.get("text"), str):
            return str(output["text"])
        if output.get("role") == "assistant":
            content = output.get("content")
            return content if isinstance(content, str) else None
    return orjson.dumps(output).decode()


def _message(outcome: Outcome) -> dict[str, JSON]:
    output = outcome.output
    if isinstance(output, dict) and output.get("role") == "assistant":
        return {"role": "assistant", "content": output.get("content"),
                **({"tool_calls": output["tool_calls"]} if output.get("tool_calls") else {})}
    return {"role": "assistant", "content": _content(outcome)}


def _usage(outcome: Outcome) -> dict[str, JSON]:
    u = outcome.usage
    return {
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.input_tokens + u.output_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    }


def _finish(outcome: Outcome) -> str:
    if outcome.decision is Decision.REFUSED:
        return "content_filter"
    return outcome.finish_reason or "stop"


def _parse(data: dict[str, Any], feature: Feature) -> tuple[dict[str, JSON], dict[str, JSON]]:
    """The feature input and the per-call options of a chat completion request."""
    if data.get("n") not in (None, 1):
        raise InvalidRequest("n > 1 is not supported; ask for one choice", param="n")
    kind = feature.spec.output.kind
    if kind == "embedding":
        raise InvalidRequest(f"'{feature.name}' is an embedding feature: call /v1/embeddings",
                             param="model")
    messages = data.get("messages")
    if kind == "chat":
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest('"messages" must be a non-empty array', param="messages")
        return {"messages": messages}, {k: v for k, v in data.items() if k in CHAT_OPTIONS}
    return _input_for(feature, _message_text(messages)), {}


@router.post("/v1/chat/completions", summary="OpenAI-compatible: call a feature as a model",
             responses=ERRORS)
async def chat_completions(request: Request) -> Response:
    keel: Keel = request.app.state.keel
    data, size = await read_json_object(request, keel.settings.max_body_bytes)
    feature = _feature(keel, data.get("model"))
    check_feature(request.scope, feature.name)
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequest('"stream" must be true or false', param="stream")
    input, options = _parse(data, feature)
    user = data.get("user")
    if user is not None and not isinstance(user, str):
        raise InvalidRequest('"user" must be a string', param="user")
    stream_options = data.get("stream_options") or {}
    include_usage = isinstance(stream_options, dict) and bool(stream_options.get("include_usage"))
    if stream and feature.spec.output.kind in STREAMABLE:
        return await _stream(keel, feature, input, options, user, request_key_id(request.scope),
                             size, include_usage, directive(request.headers))
    key = request_key_id(request.scope)
    outcome = await keel.call(feature.name, input, user=user, key=key, body_bytes=size,
                              options=options, cache=directive(request.headers))
    if outcome.decision is Decision.ERROR:
        return failed_response(outcome)
    if stream:  # a classifier's answer is one piece: send it as a one-chunk stream
        return _sse(_whole_as_chunks(feature.name, outcome, include_usage), keel_headers(outcome))
    body = {
        "id": f"chatcmpl-{outcome.trace_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": feature.name,
        "system_fingerprint": outcome.version,
        "choices": [{"index": 0, "message": _message(outcome), "logprobs": None,
                     "finish_reason": _finish(outcome)}],
        "usage": _usage(outcome),
        "keel": outcome_body(outcome),
    }
    return json_response(body, headers=keel_headers(outcome))


# --- streaming ------------------------------------------------------------------------


def _sse(chunks: AsyncIterator[bytes], headers: dict[str, str]) -> StreamingResponse:
    return StreamingResponse(chunks, media_type="text/event-stream",
                             headers={**headers, "cache-control": "no-cache"})


def _data(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


class _Chunks:
    def __init__(self, trace_id: str, model: str, version: str | None) -> None:
        self.base = {"id": f"chatcmpl-{trace_id}", "object": "chat.completion.chunk",
                     "created": int(time.time()), "model": model, "system_fingerprint": version}

    def delta(self, delta: dict[str, JSON], finish_reason: str | None = None) -> bytes:
        return _data({**self.base, "choices": [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]})

    def tail(self, outcome: Outcome, include_usage: bool) -> list[bytes]:
        out = []
        if include_usage:
            out.append(_data({**self.base, "choices": [], "usage": _usage(outcome)}))
        out.append(_data({**self.base, "choices": [], "keel": outcome_body(outcome)}))
        out.append(b"data: [DONE]\n\n")
        return out


async def _whole_as_chunks(model: str, outcome: Outcome, include_usage: bool) -> AsyncIterator[bytes]:
    chunks = _Chunks(outcome.trace_id, model, outcome.version)
    yield chunks.delta({"role": "assistant", "content": ""})
    yield chunks.delta({"content": _content(outcome) or ""})
    yield chunks.delta({}, _finish(outcome))
    for chunk in chunks.tail(outcome, include_usage):
        yield chunk


async def _stream(keel: Keel, feature: Feature, input: dict[str, JSON], options: dict[str, JSON],
                  user: str | None, key: str | None, size: int, include_usage: bool,
                  cache: str = "use") -> Response:
    events = keel.stream(feature.name, input, user=user, key=key, body_bytes=size, options=options,
                         cache=cache)
    try:
        start = await anext(events)  # failures before the first token are plain HTTP errors
    except StreamFailed as exc:
        return failed_response(exc.outcome)
    if isinstance(start, Outcome):  # an input guard refused it: the safe default, whole
        return _sse(_whole_as_chunks(feature.name, start, include_usage), keel_headers(start))
    assert isinstance(start, StreamStart)
    chunks = _Chunks(start.trace_id, feature.name, start.version)
    headers = {"x-keel-trace-id": start.trace_id, "x-keel-version": start.version}
    if feature.spec.cache is not None:  # a hit came whole, above: this stream is a miss
        headers["x-keel-cache"] = "miss" if cache == "use" else "bypass"

    async def body() -> AsyncIterator[bytes]:
        yield chunks.delta({"role": "assistant", "content": ""})
        try:
            async for item in events:
                if isinstance(item, Delta):
                    delta: dict[str, JSON] = {}
                    if item.text:
                        delta["content"] = item.text
                    if item.tool_calls:
                        delta["tool_calls"] = item.tool_calls
                    if delta or item.finish_reason:
                        yield chunks.delta(delta, item.finish_reason)
                elif isinstance(item, Outcome):
                    for chunk in chunks.tail(item, include_usage):
                        yield chunk
        except Exception as exc:
            code = getattr(exc, "code", "internal_error")
            message = getattr(exc, "message", "the stream failed")
            # an explicit error event, and no [DONE]: never a clean-looking end
            yield _data({"error": {"code": code, "message": message, "type": "api_error",
                                   "param": None}})
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    return _sse(body(), headers)


# --- embeddings and models ------------------------------------------------------------


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise InvalidRequest('"input" must be a string or a non-empty array of strings '
                             "(token arrays are not supported)", param="input")
    return value


@router.post("/v1/embeddings", summary="OpenAI-compatible: embed texts with a feature",
             responses=ERRORS)
async def embeddings(request: Request) -> Response:
    keel: Keel = request.app.state.keel
    data, size = await read_json_object(request, keel.settings.max_body_bytes)
    feature = _feature(keel, data.get("model"))
    check_feature(request.scope, feature.name)
    if feature.spec.output.kind != "embedding":
        raise InvalidRequest(f"'{feature.name}' is not an embedding feature (output kind "
                             f"'{feature.spec.output.kind}')", param="model")
    encoding = data.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise InvalidRequest('"encoding_format" must be "float" or "base64"',
                             param="encoding_format")
    user = data.get("user")
    if user is not None and not isinstance(user, str):
        raise InvalidRequest('"user" must be a string', param="user")
    outcome = await keel.call(feature.name, {"input": _texts(data.get("input"))}, user=user,
                              key=request_key_id(request.scope), body_bytes=size,
                              cache=directive(request.headers))
    if outcome.decision is Decision.ERROR:
        return failed_response(outcome)
    vectors = outcome.output if isinstance(outcome.output, list) else []

    def encode(vector: list[float]) -> JSON:
        if encoding == "float":
            return vector
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()

    meta = outcome_body(outcome)
    meta.pop("output")
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encode(v)}
                 for i, v in enumerate(vectors)],
        "model": feature.name,
        "usage": {"prompt_tokens": outcome.usage.input_tokens,
                  "total_tokens": outcome.usage.input_tokens},
        "keel": meta,
    }
    return json_response(body, headers=keel_headers(outcome))


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "keel"}


@router.get("/v1/models", summary="OpenAI-compatible: the features, as models")
async def list_models(request: Request) -> Response:
    keel: Keel = request.app.state.keel
    return json_response({"object": "list",
                          "data": [_model(n) for n in visible(request.scope, keel.features)]})


@router.get("/v1/models/{model}", summary="OpenAI-compatible: one feature, as a model",
            responses=ERRORS)
async def get_model(model: str, request: Request) -> Response:
    keel: Keel = request.app.state.keel
    return json_response(_model(_feature(keel, model).name))
