"""The feature API: ``POST /v1/features/{name}`` and the feature listing."""

from __future__ import annotations

import math
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from keel.errors import AllTargetsFailed, InvalidRequest, UpstreamRateLimited
from keel.gateway import Keel
from keel.server.access import visible
from keel.server.auth import request_key_id
from keel.server.body import read_json_object
from keel.server.schema import (
    ErrorBody,
    FeatureRequest,
    FeatureResponse,
    keel_headers,
    outcome_body,
)
from keel.stages.cache import directive
from keel.types import Decision, Outcome

router = APIRouter()

_ENVELOPE_KEYS = frozenset({"input", "user", "session"})

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "bad input: empty body, invalid JSON or UTF-8, wrong envelope, the input fails "
             "its schema or checks",
        404: "unknown feature",
        413: "body too large",
        502: "every target of the route failed",
    }.items()
}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                    headers=headers)


def parse_envelope(data: dict[str, Any]) -> tuple[dict[str, Any], str | None, str | None]:
    """``{"input": {...}, "user": ..., "session": ...}`` -> (input, user, session)."""
    unknown = set(data) - _ENVELOPE_KEYS
    if unknown:
        raise InvalidRequest(
            f"unknown field(s) {', '.join(sorted(unknown))}; the body is "
            '{"input": {...}, "user": "optional id", "session": "optional id"}',
            param=sorted(unknown)[0])
    if "input" not in data:
        raise InvalidRequest('body needs "input": the feature\'s input object', param="input")
    input = data["input"]
    if not isinstance(input, dict):
        raise InvalidRequest(f'"input" must be a JSON object, got {_kind(input)}', param="input")
    user = data.get("user")
    if user is not None and not isinstance(user, str):
        raise InvalidRequest(f'"user" must be a string, got {_kind(user)}', param="user")
    session = data.get("session")
    if session is not None and not isinstance(session, str):
        raise InvalidRequest(f'"session" must be a string, got {_kind(session)}', param="session")
    return input, user, session


def _kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null",
            int: "number", float: "number"}.get(type(value), type(value).__name__)


def failed_response(outcome: Outcome) -> Response:
    """Every target failed: 502, or 429 with Retry-After when the last one was rate-limited."""
    headers = keel_headers(outcome)
    if outcome.error_code == UpstreamRateLimited.code:
        status, type_ = UpstreamRateLimited.status, UpstreamRateLimited.type
        headers["retry-after"] = str(max(1, math.ceil(outcome.retry_after or 1)))
    else:
        status, type_ = 502, "api_error"
    body: dict[str, Any] = {"error": {"code": outcome.error_code or AllTargetsFailed.code,
                                      "message": outcome.error or "", "type": type_,
                                      "param": None}}
    body["trace_id"] = outcome.trace_id
    body["attempts"] = outcome_body(outcome)["attempts"]
    return json_response(body, status, headers)


@router.post(
    "/v1/features/{name}",
    summary="Call a feature",
    responses={200: {"model": FeatureResponse}, **ERRORS},
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": FeatureRequest.model_json_schema()}}}},
)
async def call_feature(name: str, request: Request) -> Response:
    keel: Keel = request.app.state.keel
    keel.pipeline.feature(name)  # 404 before the body is read
    data, size = await read_json_object(request, keel.settings.max_body_bytes)
    input, user, session = parse_envelope(data)
    outcome = await keel.call(name, input, user=user, key=request_key_id(request.scope),
                              body_bytes=size, session=session, cache=directive(request.headers))
    if outcome.decision is Decision.ERROR:
        return failed_response(outcome)
    return json_response(outcome_body(outcome), headers=keel_headers(outcome))


@router.get("/v1/features", summary="List features, their versions and aliases")
async def list_features(request: Request) -> Response:
    keel: Keel = request.app.state.keel
    body = [
        {
            "name": name,
            "description": f.spec.description,
            "input_schema": f.spec.input.json_schema,
            "output_kind": f.spec.output.kind,
            "labels": f.spec.output.labels,
            "versions": {
                v: {"provider": s.provider, "model": s.model} for v, s in f.spec.versions.items()
                if v in f.targets
            },
            "aliases": f.router.aliases,
            "fallbacks": f.spec.fallbacks,
        }
        for name in visible(request.scope, keel.features) for f in [keel.features[name]]
    ]
    return json_response({"features": body})
