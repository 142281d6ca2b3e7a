"""The registry API: versions, their model cards, aliases and training.

``GET /api/features/{feature}/versions`` lists versions with the aliases on them;
``POST`` registers one (and this process serves it at once); ``PUT .../aliases/{alias}``
moves an alias (``champion`` needs a passing eval run unless ``force``); ``POST
.../train`` fits a version on a dataset version. Every change records the caller's key
as its actor (``key:<name>``; ``api:anonymous`` without gateway keys).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from keel.control.registry import Registry, VersionRecord, promote
from keel.errors import ConfigError, FeatureNotFound, InvalidRequest, KeelError, ProviderError
from keel.gateway import Keel
from keel.server.auth import request_actor
from keel.server.body import read_json_object
from keel.server.features import json_response
from keel.server.reviews import _body, _errors, _fields, _optional_str
from keel.spec import FeatureSpec, VersionSpec

router = APIRouter()


def actor_of(request: Request) -> str:
    return request_actor(request.scope)


def _feature(request: Request, name: str) -> tuple[Keel, FeatureSpec]:
    keel: Keel = request.app.state.keel
    feature = keel.features.get(name)
    if feature is None:
        raise FeatureNotFound(f"no feature named '{name}' (features: {', '.join(sorted(keel.features))})")
    return keel, feature.spec


def version_json(record: VersionRecord, aliases: dict[str, str], served: bool) -> dict[str, Any]:
    out = record.to_dict()
    out["aliases"] = sorted(a for a, v in aliases.items() if v == record.name)
    out["served"] = served  # compiled and prepared in this process
    return out


@router.get("/api/features/{feature}/versions", summary="A feature's versions and aliases",
            responses=_errors(s404="unknown feature"))
async def list_versions(feature: str, request: Request) -> Response:
    keel, _ = _feature(request, feature)
    registry = Registry(keel.store)
    records, aliases = await asyncio.gather(asyncio.to_thread(registry.list, feature),
                                            asyncio.to_thread(registry.aliases, feature))
    targets = keel.features[feature].targets
    return json_response({"feature": feature, "aliases": aliases,
                          "versions": [version_json(r, aliases, r.name in targets) for r in records]})


@router.get("/api/features/{feature}/versions/{version}",
            summary="One version with its model card and eval runs",
            responses=_errors(s404="unknown feature or version"))
async def get_version(feature: str, version: str, request: Request) -> Response:
    keel, _ = _feature(request, feature)
    registry = Registry(keel.store)
    record = await asyncio.to_thread(registry.get, feature, version)
    aliases = await asyncio.to_thread(registry.aliases, feature)
    out = version_json(record, aliases, version in keel.features[feature].targets)
    out["eval_runs"] = await asyncio.to_thread(registry.eval_metrics, feature, version)
    out["artifact_ok"] = await asyncio.to_thread(registry.verify_artifact, record)
    return json_response(out)


_REGISTER_SHAPE = '{"name": "v2", "spec": {"provider": "...", "model": "...", ...}}'


@router.post("/api/features/{feature}/versions", summary="Register a version",
             status_code=201,
             responses=_errors(s400="bad body or version spec", s404="unknown feature",
                               s409="the name is taken by a different version"),
             openapi_extra=_body(VersionSpec))
async def register_version(feature: str, request: Request) -> Response:
    keel, fspec = _feature(request, feature)
    data, _ = await read_json_object(request, keel.settings.max_body_bytes)
    _fields(data, {"name", "spec"}, _REGISTER_SHAPE)
    name = data.get("name")
    if not isinstance(name, str):
        raise InvalidRequest(f"body needs a version name: {_REGISTER_SHAPE}", param="name")
    raw = data.get("spec")
    if not isinstance(raw, dict):
        raise InvalidRequest(f"body needs a version spec object: {_REGISTER_SHAPE}", param="spec")
    try:
        spec = VersionSpec.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidRequest(f"spec.{where}: {first['msg']}", param=f"spec.{where}") from None
    known = {"local", *keel.spec.providers}
    if spec.provider not in known:
        raise InvalidRequest(f"spec.provider: unknown provider '{spec.provider}' "
                             f"(known: {', '.join(sorted(known))})", param="spec.provider")
    registry = Registry(keel.store)
    loaded = name not in keel.features[feature].targets
    if loaded:  # prepared first: a version this process cannot serve is refused, not registered
        try:
            await keel.load_version(feature, name, spec)
        except (ProviderError, ConfigError, ValueError) as exc:
            message = exc.message if isinstance(exc, KeelError) else str(exc)
            raise InvalidRequest(f"spec: this version cannot be served: {message}",
                                 param="spec") from None
    try:
        record = await asyncio.to_thread(registry.register, feature, name, spec,
                                         actor=actor_of(request), source="api", fspec=fspec)
    except BaseException:
        if loaded:
            keel.unload_version(feature, name)
        raise
    aliases = await asyncio.to_thread(registry.aliases, feature)
    return json_response(version_json(record, aliases, True), status=201)


@router.get("/api/features/{feature}/aliases", summary="Aliases and their history",
            responses=_errors(s404="unknown feature"))
async def alias_history(feature: str, request: Request) -> Response:
    keel, _ = _feature(request, feature)
    registry = Registry(keel.store)
    aliases = await asyncio.to_thread(registry.aliases, feature)
    moves = await asyncio.to_thread(registry.history, feature)
    return json_response({"aliases": aliases, "history": [
        {"id": m.id, "alias": m.alias, "from": m.old_version, "to": m.new_version,
         "actor": m.actor, "forced": m.forced, "reason": m.reason, "eval_run": m.eval_run,
         "ts": m.ts} for m in moves]})


@router.put("/api/features/{feature}/aliases/{alias}", summary="Move an alias",
            responses=_errors(s400="bad body", s404="unknown feature or version",
                              s409="champion without a passing eval run (gate_required)"))
async def move_alias(feature: str, alias: str, request: Request) -> Response:
    keel, fspec = _feature(request, feature)
    data, _ = await read_json_object(request, keel.settings.max_body_bytes)
    _fields(data, {"version", "force", "reason"},
            '{"version": "v2", "force": false, "reason": "optional"}')
    version = data.get("version")
    if not isinstance(version, str):
        raise InvalidRequest('body needs "version": the version to point the alias at',
                             param="version")
    force = data.get("force", False)
    if not isinstance(force, bool):
        raise InvalidRequest("force must be true or false", param="force")
    reason = _optional_str(data, "reason")
    actor = actor_of(request)
    if alias == "champion":
        move = await asyncio.to_thread(promote, keel.store, feature, fspec, version, actor=actor,
                                       force=force, reason=reason)
    else:
        move = await asyncio.to_thread(Registry(keel.store).move_alias, feature, alias, version,
                                       actor=actor, force=force, reason=reason)
    if keel.sync is not None:
        await keel.sync.refresh(force=True)  # serve the move here at once
    return json_response({"alias": move.alias, "from": move.old_version, "to": move.new_version,
                          "actor": move.actor, "forced": move.forced, "eval_run": move.eval_run})


@router.post("/api/features/{feature}/train", summary="Train a version on a dataset version",
             status_code=201,
             responses=_errors(s400="bad body, or too little data to train",
                               s404="unknown feature or dataset"))
async def train(feature: str, request: Request) -> Response:
    from keel.control.train import train_version, trainer_named

    keel, fspec = _feature(request, feature)
    data, _ = await read_json_object(request, keel.settings.max_body_bytes)
    _fields(data, {"dataset", "trainer", "name", "split"},
            '{"dataset": "name@N", "trainer": "local-head", "name": "optional", "split": "train"}')
    dataset = data.get("dataset")
    if not isinstance(dataset, str):
        raise InvalidRequest('body needs "dataset": "name@N"', param="dataset")
    trainer = trainer_named(_optional_str(data, "trainer") or "local-head")
    record, trained = await asyncio.to_thread(
        train_version, keel.store, feature, fspec, dataset, keel.settings.artifacts_dir,
        actor=actor_of(request), trainer=trainer, name=_optional_str(data, "name"),
        split=_optional_str(data, "split") or "train")
    await keel.load_version(feature, record.name, record.version_spec())
    aliases = await asyncio.to_thread(Registry(keel.store).aliases, feature)
    return json_response({**version_json(record, aliases, True), "training": trained.metrics},
                         status=201)
