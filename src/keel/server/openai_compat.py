"""The OpenAI-compatible front: ``/v1/chat/completions`` and ``/v1/models``.

``model`` names a feature. The last user message becomes the feature's input: its
text field for text features, or the message parsed as a JSON object otherwise. The
answer comes back as a ``chat.completion`` whose message content is the output; the
``keel`` field and the ``x-keel-*`` headers carry the decision, confidence, version,
trace id and cost, which the official SDK passes through untouched.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from keel.errors import InvalidRequest, NotFound
from keel.feature import Feature
from keel.gateway import Keel
from keel.server.body import read_json_object
from keel.server.features import ERRORS, _kind, failed_response, json_response
from keel.server.schema import keel_headers, outcome_body
from keel.types import JSON, Decision, Outcome

router = APIRouter()


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
                return "\n".join(parts)  # type: ignore[arg-type]
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


def _content(outcome: Outcome) -> str:
    output = outcome.output
    if isinstance(output, str):
        return output
    if isinstance(output, dict) and set(output) <= {"label"} and isinstance(output.get("label"), str):
        return str(output["label"])
    if isinstance(output, dict) and set(output) <= {"text"} and isinstance(output.get("text"), str):
        return str(output["text"])
    return orjson.dumps(output).decode()


@router.post("/v1/chat/completions", summary="OpenAI-compatible: call a feature as a model",
             responses=ERRORS)
async def chat_completions(request: Request) -> Response:
    keel: Keel = request.app.state.keel
    data, size = await read_json_object(request, keel.settings.max_body_bytes)
    feature = _feature(keel, data.get("model"))
    if data.get("stream"):
        raise InvalidRequest("stream=true is not supported yet; call without streaming",
                             param="stream")
    input = _input_for(feature, _message_text(data.get("messages")))
    user = data.get("user")
    if user is not None and not isinstance(user, str):
        raise InvalidRequest('"user" must be a string', param="user")
    outcome = await keel.call(feature.name, input, user=user, body_bytes=size)
    if outcome.decision is Decision.ERROR:
        return failed_response(outcome)
    finish = "content_filter" if outcome.decision is Decision.REFUSED else "stop"
    body = {
        "id": f"chatcmpl-{outcome.trace_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": feature.name,
        "system_fingerprint": outcome.version,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": _content(outcome)},
            "logprobs": None,
            "finish_reason": finish,
        }],
        "usage": {
            "prompt_tokens": outcome.usage.input_tokens,
            "completion_tokens": outcome.usage.output_tokens,
            "total_tokens": outcome.usage.input_tokens + outcome.usage.output_tokens,
        },
        "keel": outcome_body(outcome),
    }
    return json_response(body, headers=keel_headers(outcome))


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "keel"}


@router.get("/v1/models", summary="OpenAI-compatible: the features, as models")
async def list_models(request: Request) -> Response:
    keel: Keel = request.app.state.keel
    return json_response({"object": "list", "data": [_model(n) for n in keel.features]})


@router.get("/v1/models/{model}", summary="OpenAI-compatible: one feature, as a model",
            responses=ERRORS)
async def get_model(model: str, request: Request) -> Response:
    keel: Keel = request.app.state.keel
    return json_response(_model(_feature(keel, model).name))
