"""The OpenAPI document (``GET /openapi.json``): what FastAPI derives from the routes,
completed with what it cannot see.

Keel's handlers read raw query strings and bodies (no per-request validation machinery),
so FastAPI knows neither their query parameters nor most bodies: they are declared here,
next to each other, in :data:`QUERY` and :data:`BODIES`. The document also says how a
request authenticates (every route but the public ones of :mod:`keel.server.access` takes
a key and may answer 401 or 403), drops FastAPI's stock 422 answers (Keel answers a bad
request with 400 in its own error shape) and moves the ``$defs`` of request-body schemas
into ``components`` so that every ``$ref`` resolves. ``tests/e2e/test_fuzz_api.py`` fuzzes
the server against this document.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI

from keel.control.drift import MAX_WINDOWS
from keel.control.feedback import KINDS
from keel.control.registry import ALIAS
from keel.control.registry import NAME as VERSION_NAME
from keel.control.reviews import ORDERS, STATUSES
from keel.server.access import RULES
from keel.server.reviews import MAX_INT
from keel.server.rollouts import ACTIONS
from keel.spec import VersionSpec
from keel.store.stats import BUCKETS, GROUPS
from keel.types import Decision

JSONObj = dict[str, Any]


def _q(name: str, schema: JSONObj, description: str, required: bool = False) -> JSONObj:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": schema}


def _int(name: str, lo: int, hi: int | None, default: int | None, what: str = "") -> JSONObj:
    schema: JSONObj = {"type": "integer", "minimum": lo, "maximum": MAX_INT if hi is None else hi}
    if default is not None:
        schema["default"] = default
    return _q(name, schema, what or name)


def _str(name: str, what: str, required: bool = False) -> JSONObj:
    return _q(name, {"type": "string"}, what, required)


def _enum(name: str, values: tuple[str, ...] | list[str], what: str) -> JSONObj:
    return _q(name, {"type": "string", "enum": list(values)}, what)


_TIME = "epoch seconds or ISO 8601 (2026-05-01T00:00:00Z; no zone: UTC)"
_SINCE, _UNTIL = _str("since", f"from: {_TIME}"), _str("until", f"until: {_TIME}; default now")
_BUCKET = _enum("bucket", tuple(BUCKETS), "series bucket; default from the range")
_OFFSET = _int("offset", 0, None, 0, "rows to skip")
_FEATURE = _str("feature", "a feature's name")
_DRIFT_TIME = f"{_TIME}, now, or an age such as 7d"

QUERY: dict[tuple[str, str], list[JSONObj]] = {
    ("GET", "/api/reviews"): [
        _FEATURE, _enum("status", STATUSES, "default pending"),
        _enum("order", ORDERS, "default the feature's review.order"),
        _int("limit", 1, 500, 50), _OFFSET],
    ("GET", "/api/reviews/stats"): [_FEATURE],
    ("GET", "/api/datasets/{name}/{number}"): [
        _str("split", "only this split"), _int("limit", 1, 1000, 100), _OFFSET],
    ("GET", "/api/eval-runs"): [
        _str("feature", "a feature's name", required=True), _str("version", "only this version"),
        _int("limit", 1, 500, 100)],
    ("GET", "/api/drift/{feature}"): [
        _str("window", "window length: seconds, or 30m, 1h, 1d, 1w"),
        _int("windows", 1, MAX_WINDOWS, None, "how many windows"),
        _str("since", f"from: {_DRIFT_TIME}"), _str("until", f"until: {_DRIFT_TIME}"),
        _str("reference", "window (default), champion, or dataset:NAME[@N]"),
        _str("reference_start", f"with reference=window: {_DRIFT_TIME}"),
        _str("reference_end", f"with reference=window: {_DRIFT_TIME}"),
        _str("columns", "comma-separated columns"),
        _enum("embeddings", ("true", "false", "1", "0"), "drift of the input embeddings too")],
    ("GET", "/api/stats/overview"): [_SINCE, _UNTIL, _BUCKET],
    ("GET", "/api/stats/features/{feature}"): [_SINCE, _UNTIL, _BUCKET],
    ("GET", "/api/stats/costs"): [
        _enum("group", GROUPS, "default feature"), _SINCE, _UNTIL, _FEATURE,
        _int("limit", 1, 1000, 100)],
    ("GET", "/api/events"): [
        _FEATURE, _str("version", "the version routed to"),
        _enum("decision", tuple(d.value for d in Decision), "only this decision"),
        _str("user", "end-user id"), _str("key", "the API key's id"), _SINCE, _UNTIL,
        _str("trace", "a trace id prefix"), _int("limit", 1, 500, 50),
        _str("cursor", "the previous page's next")],
    ("GET", "/api/budgets"): [_int("alerts", 0, 500, 50, "how many recent alerts")],
    ("GET", "/api/slo"): [_q("at", {"type": "number", "exclusiveMinimum": 0},
                             "judge the SLOs at this unix time; default now")],
    ("GET", "/api/slo/{feature}"): [_q("at", {"type": "number", "exclusiveMinimum": 0},
                                       "judge the SLOs at this unix time; default now")],
    ("GET", "/api/keys"): [_enum("revoked", ("true", "false", "1", "0", "yes", "no"),
                                 "list revoked keys too")],
    ("GET", "/api/audit"): [
        _int("limit", 1, 500, 50), _int("before", 1, None, None, "older rows than this seq"),
        _str("target", "a feature's rows, or key:<id>")],
    ("GET", "/api/feedback"): [
        _str("trace_id", "one call's feedback"), _FEATURE, _enum("kind", KINDS, "only this kind"),
        _str("version", "the version routed to"), _str("source", "who gave it"), _SINCE, _UNTIL,
        _int("limit", 1, 500, 50), _OFFSET],
    ("GET", "/api/feedback/stats"): [
        _str("feature", "a feature's name", required=True), _SINCE, _UNTIL],
}


def _object(properties: JSONObj, required: tuple[str, ...] = (), *,
            closed: bool = True) -> JSONObj:
    schema: JSONObj = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    return schema


_STRING, _BOOL = {"type": "string"}, {"type": "boolean"}
_TEXT = {"type": "string", "minLength": 1}
_MESSAGE = _object({
    "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
    "content": {"anyOf": [_STRING, {"type": "array", "items": {"type": "object"}},
                          {"type": "null"}]},
}, ("role",), closed=False)

BODIES: dict[tuple[str, str], JSONObj] = {
    ("POST", "/v1/chat/completions"): _object({
        "model": {"type": "string", "description": "a feature's name"},
        "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
        "stream": _BOOL, "stream_options": _object({"include_usage": _BOOL}, closed=False),
        "n": {"type": "integer", "enum": [1]}, "user": _STRING,
    }, ("model", "messages"), closed=False),  # chat features pass more options on
    ("POST", "/v1/embeddings"): _object({
        "model": {"type": "string", "description": "an embedding feature's name"},
        "input": {"anyOf": [_TEXT, {"type": "array", "minItems": 1, "items": _TEXT}]},
        "encoding_format": {"enum": ["float", "base64"]}, "user": _STRING,
    }, ("model", "input"), closed=False),
    ("POST", "/api/features/{feature}/versions"): _object({
        "name": {"type": "string", "pattern": VERSION_NAME.pattern,
                 "description": "the version's name"},
        "spec": VersionSpec.model_json_schema()}, ("name", "spec")),
    ("PUT", "/api/features/{feature}/aliases/{alias}"): _object({
        "version": {"type": "string", "description": "the version to point the alias at"},
        "force": _BOOL, "reason": _STRING}, ("version",)),
    ("POST", "/api/features/{feature}/train"): _object({
        "dataset": {"type": "string", "description": "name@N"},
        "trainer": {"type": "string", "description": "default local-head"},
        "name": _STRING, "split": {"type": "string", "description": "default train"}},
        ("dataset",)),
    ("POST", "/api/features/{feature}/rollout"): _object({
        "version": {"type": "string", "description": "the candidate"}, "force": _BOOL,
        "steps": {"type": "array", "items": {"type": "number"},
                  "description": "traffic shares, e.g. [0.05, 0.5, 1.0]"}}, ("version",)),
    ("POST", "/api/features/{feature}/rollout/{action}"): _object({
        "reason": _STRING, "force": _BOOL}),
}
EXAMPLES: dict[tuple[str, str], JSONObj] = {  # shown by /docs, sent by fuzzers first
    ("POST", "/v1/features/{name}"): {"input": {"text": "where is my parcel?"}, "user": "u-42"},
    ("POST", "/v1/chat/completions"): {
        "model": "intent", "messages": [{"role": "user", "content": "my card has not arrived"}]},
    ("POST", "/v1/embeddings"): {"model": "embed", "input": ["my card has not arrived"]},
}
OPTIONAL_BODIES = frozenset({("POST", "/api/features/{feature}/rollout/{action}")})
PATH_SCHEMAS: dict[tuple[str, str, str], JSONObj] = {
    ("POST", "/api/features/{feature}/rollout/{action}", "action"): {
        "type": "string", "enum": list(ACTIONS)},
    ("PUT", "/api/features/{feature}/aliases/{alias}", "alias"): {
        "type": "string", "pattern": ALIAS.pattern},
}
STREAMING = frozenset({("POST", "/v1/chat/completions")})

_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
AUTH_RESPONSES = {
    "401": {"description": "no API key, or an unknown one (invalid_api_key)", "content": _ERROR},
    "403": {"description": "the key's role or features do not cover this request "
                           "(permission_denied)", "content": _ERROR},
}
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer",
               "description": "a Keel API key: Authorization: Bearer <key>"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key",
               "description": "a Keel API key, as x-api-key"},
}


def _public(method: str, path: str) -> bool:
    return any(r.kind == "public" and r.path == path and method in r.methods for r in RULES)


def _hoist_defs(node: Any, defs: JSONObj) -> Any:
    """``node`` with every ``$defs`` taken out into ``defs`` and its ``$ref``s pointed at
    ``#/components/schemas``, where the document keeps them."""
    if isinstance(node, list):
        return [_hoist_defs(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    out: JSONObj = {}
    for key, value in node.items():
        if key == "$defs" and isinstance(value, dict):
            for name, schema in value.items():
                defs[name] = _hoist_defs(schema, defs)
        elif key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
            out[key] = "#/components/schemas/" + value.removeprefix("#/$defs/")
        else:
            out[key] = _hoist_defs(value, defs)
    return out


def _is_stock_422(response: Any) -> bool:
    schema = (((response or {}).get("content") or {}).get("application/json") or {}).get("schema")
    return isinstance(schema, dict) and schema.get("$ref", "").endswith("/HTTPValidationError")


def complete(doc: JSONObj) -> JSONObj:
    """Complete FastAPI's document in place (see the module's doc); returns it."""
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    defs: JSONObj = {}
    for path, item in doc.get("paths", {}).items():
        for method_lower, op in item.items():
            method = method_lower.upper()
            key = (method, path)
            params = op.setdefault("parameters", [])
            for param in params:
                schema = PATH_SCHEMAS.get((method, path, param.get("name")))
                if schema is not None:
                    param["schema"] = schema
            params.extend(QUERY.get(key, []))
            if key in QUERY:  # a handler that parses its query answers a bad value with 400
                op.setdefault("responses", {}).setdefault("400", {
                    "description": "bad query parameter", "content": _ERROR})
            if not params:
                del op["parameters"]
            if key in BODIES:
                op["requestBody"] = {"required": key not in OPTIONAL_BODIES, "content": {
                    "application/json": {"schema": BODIES[key]}}}
            if "requestBody" in op:
                op["requestBody"] = _hoist_defs(op["requestBody"], defs)
                if key in EXAMPLES:
                    op["requestBody"]["content"]["application/json"]["example"] = EXAMPLES[key]
            responses = op.setdefault("responses", {})
            if _is_stock_422(responses.get("422")):
                del responses["422"]
            if key in STREAMING and "200" in responses:
                responses["200"].setdefault("content", {})["text/event-stream"] = {
                    "schema": {"type": "string"}}
            if not _public(method, path):
                op["security"] = [{"bearer": []}, {"apiKey": []}]
                for status, response in AUTH_RESPONSES.items():
                    responses.setdefault(status, response)
    for name, schema in defs.items():
        schemas.setdefault(name, schema)
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    components["securitySchemes"] = SECURITY_SCHEMES
    return doc


def install(app: FastAPI) -> None:
    """Serve the completed document at ``/openapi.json`` (built once, on first request)."""
    derive = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:  # a copy: it shares no dict with this module's tables
            app.openapi_schema = copy.deepcopy(complete(derive()))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
