"""``GET /metrics`` (Prometheus) and the SLO API: ``GET /api/slo`` and
``GET /api/slo/{feature}``. See docs/observability.md.

``/metrics`` is a plain Starlette route (no FastAPI dependency machinery); it renders in
a worker thread because its scrape-time gauges read the store. With gateway keys set it
needs one, like ``/api``.
"""

from __future__ import annotations

import math
import time
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from keel.control.slo import SLOStatus, slo_status
from keel.errors import FeatureNotFound, InvalidRequest, RouteNotFound
from keel.gateway import Keel
from keel.server.features import json_response
from keel.server.schema import ErrorBody

router = APIRouter()


async def metrics(request: Request) -> Response:
    keel: Keel = request.app.state.keel
    collected = keel.observability.metrics
    if collected is None:
        raise RouteNotFound("metrics are switched off (KEEL_METRICS=0)")
    collected.drain()  # here, on the loop's thread, where the counting happens
    body, content_type = await anyio.to_thread.run_sync(
        collected.encode, request.headers.get("accept"))
    return Response(body, media_type=content_type)


class ObjectiveBody(BaseModel):
    feature: str
    objective: str = Field(description="latency_p95_ms | error_rate | validation_failure_rate "
                           "| review_rate | cost_per_call_usd")
    target: float = Field(description="as set in keel.yaml")
    window_days: float
    calls: int = Field(description="calls in the window (cost: calls of known cost)")
    bad: float = Field(description="bad calls in the window (cost: USD spent)")
    allowed: float = Field(description="the error budget: bad calls allowed (cost: USD)")
    observed: float | None = Field(description="rate, p95 ms or mean cost over the window")
    budget_remaining: float = Field(description="1 - bad/allowed; negative once overspent")
    burn_rates: dict[str, float | None] = Field(description="window (5m, 30m, 1h, 6h) -> burn "
                                                "rate; null without calls there")
    page: bool = Field(description="burn rate above page_burn_rate over 1h and 5m")
    ticket: bool = Field(description="burn rate above ticket_burn_rate over 6h and 30m")
    met: bool = Field(description="the budget is not overspent")


class FeatureSLOBody(BaseModel):
    feature: str
    window_days: float
    objectives: list[ObjectiveBody]


class SLOListBody(BaseModel):
    at: float
    features: list[FeatureSLOBody]


def _errors(**codes: str) -> dict[int | str, dict[str, Any]]:
    return {int(status[1:]): {"model": ErrorBody, "description": text}
            for status, text in codes.items()}


def _at(request: Request) -> float:
    raw = request.query_params.get("at")
    if raw is None or raw == "":
        return time.time()
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequest(f"at must be a unix time in seconds, got '{raw}'", param="at") from None
    if not math.isfinite(value) or value <= 0:
        raise InvalidRequest(f"at must be a positive unix time in seconds, got '{raw}'", param="at")
    return value


def _feature(keel: Keel, name: str, statuses: list[SLOStatus]) -> dict[str, Any]:
    return {"feature": name, "window_days": keel.features[name].spec.slo.window_days,
            "objectives": [s.to_json() for s in statuses]}


def _status(keel: Keel, name: str, at: float) -> list[SLOStatus]:
    return slo_status(keel.store, name, keel.features[name].spec.slo, at)


@router.get("/api/slo", summary="SLOs of every feature: error budgets and burn rates",
            responses={200: {"model": SLOListBody}, **_errors(s400="bad query parameter")})
async def list_slos(request: Request) -> Response:
    """Query: ``at`` (unix seconds; default now) judges the SLOs at that time."""
    keel: Keel = request.app.state.keel
    at = _at(request)

    def read() -> list[dict[str, Any]]:
        return [_feature(keel, name, _status(keel, name, at)) for name in sorted(keel.features)]

    return json_response({"at": at, "features": await anyio.to_thread.run_sync(read)})


@router.get("/api/slo/{feature}", summary="One feature's SLOs",
            responses={200: {"model": FeatureSLOBody},
                       **_errors(s400="bad query parameter", s404="unknown feature")})
async def feature_slos(feature: str, request: Request) -> Response:
    keel: Keel = request.app.state.keel
    if feature not in keel.features:
        known = ", ".join(sorted(keel.features)) or "none"
        raise FeatureNotFound(f"no feature named '{feature}' (features: {known})")
    at = _at(request)
    statuses = await anyio.to_thread.run_sync(_status, keel, feature, at)
    return json_response(_feature(keel, feature, statuses))
