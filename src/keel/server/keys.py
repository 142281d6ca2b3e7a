"""The access API (admin keys only, see :mod:`keel.server.access`): ``POST /api/keys``
creates a key and shows it once, ``GET /api/keys`` lists them (ids and prefixes, never
the keys), ``DELETE /api/keys/{key_id}`` revokes one; ``GET /api/audit`` pages through
the audit trail, newest first, and ``GET /api/audit/verify`` checks its hash chain."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from keel.control import audit, keys
from keel.errors import FeatureNotFound, InvalidRequest
from keel.gateway import Keel
from keel.server.auth import request_actor
from keel.server.body import read_json_object
from keel.server.features import json_response
from keel.server.reviews import _errors, _fields, _int, _optional_str

router = APIRouter()

_CREATE_SHAPE = '{"name": "...", "role": "admin|app|reviewer|viewer", "features": [optional]}'
_CREATE_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["name", "role"], "additionalProperties": False,
    "properties": {"name": {"type": "string", "pattern": keys.NAME.pattern},
                   "role": {"enum": list(keys.ROLES)},
                   "features": {"type": "array", "minItems": 1, "items": {"type": "string"}}}}}}}}


def _features(keel: Keel, data: dict[str, Any]) -> list[str] | None:
    value = data.get("features")
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(f, str) for f in value):
        raise InvalidRequest("features must be a list of feature names", param="features")
    unknown = sorted(set(value) - set(keel.features))
    if unknown:
        raise FeatureNotFound(f"no feature {', '.join(map(repr, unknown))} (features: "
                              f"{', '.join(sorted(keel.features))})", param="features")
    return value


@router.post("/api/keys", summary="Create an API key (the key is in this answer only)",
             status_code=201, openapi_extra=_CREATE_BODY,
             responses=_errors(s400="bad body", s404="unknown feature", s409="name taken"))
async def create_key(request: Request) -> Response:
    keel: Keel = request.app.state.keel
    data, _ = await read_json_object(request, keel.settings.max_body_bytes)
    _fields(data, {"name", "role", "features"}, _CREATE_SHAPE)
    name, role = _optional_str(data, "name"), _optional_str(data, "role")
    if not name or not role:
        raise InvalidRequest(f"name and role are required; the body is {_CREATE_SHAPE}",
                             param="role" if name else "name")
    record, secret = await asyncio.to_thread(keys.create, keel.store, name, role,
                                             _features(keel, data),
                                             actor=request_actor(request.scope))
    return json_response({**record.to_json(), "key": secret}, status=201)


@router.get("/api/keys", summary="API keys: ids, prefixes, names, roles, features")
async def list_keys(request: Request) -> Response:
    keel: Keel = request.app.state.keel
    revoked = request.query_params.get("revoked", "").lower() in {"1", "true", "yes"}
    found = await asyncio.to_thread(keys.list_keys, keel.store, include_revoked=revoked)
    return json_response({"keys": [k.to_json() for k in found]})


@router.delete("/api/keys/{key_id}", summary="Revoke an API key (by id or name)",
               responses=_errors(s404="no such key"))
async def revoke_key(key_id: str, request: Request) -> Response:
    keel: Keel = request.app.state.keel
    record = await asyncio.to_thread(keys.revoke, keel.store, key_id,
                                     actor=request_actor(request.scope))
    return json_response(record.to_json())


@router.get("/api/audit", summary="The audit trail, newest first",
            responses=_errors(s400="bad query parameter"))
async def audit_list(request: Request) -> Response:
    """Query: ``limit`` (1..500, default 50), ``before`` (a seq: older rows only, for
    paging), ``target`` (a feature's rows: ``intent``; or ``key:<id>``)."""
    keel: Keel = request.app.state.keel
    limit = _int(request, "limit", 50, 1, 500)
    before = _int(request, "before", 0, 1) if request.query_params.get("before") else None
    rows = await asyncio.to_thread(audit.entries, keel.store, limit=limit, before=before,
                                   target=request.query_params.get("target") or None)
    return json_response({"entries": [e.to_json() for e in rows],
                          "next": rows[-1].seq if len(rows) == limit else None})


@router.get("/api/audit/verify", summary="Check the audit trail's hash chain")
async def audit_verify(request: Request) -> Response:
    keel: Keel = request.app.state.keel
    result = await asyncio.to_thread(audit.verify, keel.store)
    return json_response(result.to_json())

