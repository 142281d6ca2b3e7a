"""The rollout API: a feature's canary state, and the manual actions.

``GET /api/features/{feature}/rollout`` shows the active (else latest) rollout, both
versions' live metrics in the current step and its transitions; ``POST .../rollout``
starts one (``{"version", "force", "steps"}``); ``POST .../rollout/{action}`` pauses,
resumes, promotes or rolls back. The controller itself runs in the server's leader
(:mod:`keel.control.sync`); these handlers only record what a person asked for.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from keel.control.live_metrics import live_metrics
from keel.control.rollout import RolloutController, RolloutStore, controller_for
from keel.errors import InvalidRequest, RolloutNotFound
from keel.gateway import Keel
from keel.server.body import read_json_object
from keel.server.features import json_response
from keel.server.reviews import _errors, _fields, _optional_str
from keel.server.versions import _feature, actor_of

router = APIRouter()

ACTIONS = ("pause", "resume", "promote", "rollback")


def _controller(keel: Keel) -> RolloutController:
    return controller_for(keel.store, keel.spec)


async def _after_change(keel: Keel) -> None:
    if keel.sync is not None:
        await keel.sync.refresh(force=True)  # this process serves the new split at once


@router.get("/api/features/{feature}/rollout",
            summary="The active (else the latest) rollout, live metrics and transitions",
            responses=_errors(s404="unknown feature, or it never had a rollout"))
async def rollout_status(feature: str, request: Request) -> Response:
    keel, _ = _feature(request, feature)
    store = RolloutStore(keel.store)
    rollout = await asyncio.to_thread(store.latest, feature)
    if rollout is None:
        raise RolloutNotFound(f"'{feature}' has had no rollout; start one with POST "
                              f"/api/features/{feature}/rollout")
    transitions = await asyncio.to_thread(store.transitions, rollout.id, 50)
    since = rollout.step_started_at
    until = None if rollout.active else rollout.updated_at
    cand, base = await asyncio.gather(
        asyncio.to_thread(live_metrics, keel.store, feature, rollout.candidate, since, until),
        asyncio.to_thread(live_metrics, keel.store, feature, rollout.baseline, since, until))
    return json_response({"rollout": rollout.to_json(),
                          "metrics": {"candidate": cand.to_json(), "baseline": base.to_json()},
                          "transitions": [t.to_json() for t in transitions],
                          "now": time.time()})


@router.post("/api/features/{feature}/rollout", summary="Start a canary rollout",
             status_code=201,
             responses=_errors(s400="bad body", s404="unknown feature or version",
                               s409="a rollout is active, or no passing eval (gate_required)"))
async def start_rollout(feature: str, request: Request) -> Response:
    keel, _ = _feature(request, feature)
    data, _ = await read_json_object(request, keel.settings.max_body_bytes)
    _fields(data, {"version", "force", "steps"},
            '{"version": "v2", "force": false, "steps": [0.05, 0.5, 1.0]}')
    version = data.get("version")
    if not isinstance(version, str):
        raise InvalidRequest('body needs "version": the candidate', param="version")
    force = data.get("force", False)
    if not isinstance(force, bool):
        raise InvalidRequest("force must be true or false", param="force")
    steps = data.get("steps")
    if steps is not None and (not isinstance(steps, list) or not all(
            isinstance(w, int | float) and not isinstance(w, bool) for w in steps)):
        raise InvalidRequest("steps must be a list of shares, e.g. [0.05, 0.5, 1.0]",
                             param="steps")
    if version not in keel.features[feature].targets:
        from keel.control.registry import Registry

        record = await asyncio.to_thread(Registry(keel.store).get, feature, version)  # 404
        await keel.load_version(feature, version, record.version_spec())
    controller = _controller(keel)
    rollout = await asyncio.to_thread(
        lambda: controller.start(feature, version, actor=actor_of(request), force=force,
                                 steps=steps))
    await _after_change(keel)
    return json_response({"rollout": rollout.to_json()}, status=201)


@router.post("/api/features/{feature}/rollout/{action}",
             summary="Pause, resume, promote or roll back the active rollout",
             responses=_errors(s400="unknown action or bad body", s404="no active rollout",
                               s409="the rollout is not in a state for it, or no passing eval"))
async def rollout_action(feature: str, action: str, request: Request) -> Response:
    keel, _ = _feature(request, feature)
    if action not in ACTIONS:
        raise InvalidRequest(f"action must be one of {', '.join(ACTIONS)}, got '{action}'",
                             param="action")
    data: dict[str, Any] = {}
    if int(request.headers.get("content-length") or 0) > 0:
        data, _ = await read_json_object(request, keel.settings.max_body_bytes)
    _fields(data, {"reason", "force"}, '{"reason": "optional", "force": false}')
    reason = _optional_str(data, "reason")
    force = data.get("force", False)
    if not isinstance(force, bool):
        raise InvalidRequest("force must be true or false", param="force")
    controller, actor = _controller(keel), actor_of(request)

    def act() -> Any:
        if action == "pause":
            return controller.pause(feature, actor=actor, reason=reason)
        if action == "resume":
            return controller.resume(feature, actor=actor)
        if action == "promote":
            return controller.promote(feature, actor=actor, force=force, reason=reason)
        return controller.rollback(feature, actor=actor, reason=reason)

    transition = await asyncio.to_thread(act)
    await _after_change(keel)
    return json_response({"transition": transition.to_json()})
