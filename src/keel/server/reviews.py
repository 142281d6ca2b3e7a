"""The review API: ``/api/reviews``. People list the queue, claim the next item, and
give verdicts; the logic is :class:`keel.control.reviews.ReviewQueue`.

Handlers read raw requests (bodies through :func:`read_json_object`, so size,
encoding and syntax errors have their usual codes) and answer with orjson; every
error is a :class:`~keel.errors.KeelError` with a code, never a 500.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from keel.control.reviews import ORDERS, STATUSES, ReviewQueue, check_reviewer
from keel.errors import InvalidRequest
from keel.gateway import Keel
from keel.server.access import queue_feature
from keel.server.body import read_json_object
from keel.server.features import json_response
from keel.server.schema import ErrorBody, ValidationBody
from keel.store.reviews import Order, Status

router = APIRouter()

MAX_LIMIT = 500
MAX_INT = 2**63 - 1  # what the store's integer columns hold (SQLite INTEGER, BIGINT)


class VoteBody(BaseModel):
    reviewer: str
    verdict: str = Field(description="approve | edit | reject")
    output: Any = Field(description="the correction of an edit; null otherwise")
    reason: str | None
    at: float


class FinalBody(BaseModel):
    verdict: str = Field(description="approve | edit | reject (a tie between reviewers rejects)")
    output: Any = Field(description="approve: the original output; edit: the correction; "
                        "reject: null")
    decided_at: float


class ReviewItemBody(BaseModel):
    trace_id: str
    feature: str
    version: str | None
    created_at: float
    mode: str = Field(description="deferred | held")
    status: str = Field(description="pending | done")
    confidence: float | None
    reason: str | None = Field(description="why the call was sent to review")
    input: Any
    output: Any = Field(description="the output under review")
    validations: list[ValidationBody]
    overlap: int = Field(description="verdicts needed to close the item")
    votes: list[VoteBody]
    assigned_to: str | None = Field(description="the reviewer holding it now, if any")
    final: FinalBody | None


class ReviewListBody(BaseModel):
    items: list[ReviewItemBody]
    total: int
    limit: int
    offset: int


class NextRequest(BaseModel):
    reviewer: str = Field(min_length=1, max_length=100)
    feature: str | None = None
    order: Literal["confidence", "oldest"] | None = Field(
        default=None, description="default: the feature's review.order")


class VerdictRequest(BaseModel):
    reviewer: str = Field(min_length=1, max_length=100)
    verdict: Literal["approve", "edit", "reject"]
    output: Any = Field(default=None, description="edit: the corrected output (label features: "
                        "one of the labels)")
    reason: str | None = Field(default=None, description="required for reject")


def _errors(**codes: str) -> dict[int | str, dict[str, Any]]:
    return {int(status[1:]): {"model": ErrorBody, "description": text}
            for status, text in codes.items()}


def _body(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": model.model_json_schema()}}}}


def _queue(request: Request) -> ReviewQueue:
    keel: Keel = request.app.state.keel
    return ReviewQueue(keel)


def _choice(request: Request, name: str, allowed: tuple[str, ...], default: str | None) -> str | None:
    value = request.query_params.get(name)
    if value is None or value == "":
        return default
    if value not in allowed:
        raise InvalidRequest(f"{name} must be one of {', '.join(allowed)}, got '{value}'",
                             param=name)
    return value


def _int(request: Request, name: str, default: int, lo: int, hi: int | None = None) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer, got '{raw}'", param=name) from None
    if value < lo or value > (MAX_INT if hi is None else hi):
        # unbounded ones still fit the store's 64-bit integers (an offset of 10**30 is a 400)
        where = f"between {lo} and {hi}" if hi is not None else f"between {lo} and 2^63-1"
        raise InvalidRequest(f"{name} must be {where}, got {raw[:40]}", param=name)
    return value


def _fields(data: dict[str, Any], allowed: set[str], shape: str) -> None:
    unknown = set(data) - allowed
    if unknown:
        raise InvalidRequest(f"unknown field(s) {', '.join(sorted(unknown))}; the body is {shape}",
                             param=sorted(unknown)[0])


def _optional_str(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"{name} must be a string", param=name)
    return value


@router.get("/api/reviews", summary="List review items",
            responses={200: {"model": ReviewListBody},
                       **_errors(s400="bad query parameter", s404="unknown feature")})
async def list_reviews(request: Request) -> Response:
    """Query: ``feature``, ``status`` (pending | done | all; default pending), ``order``
    (confidence | oldest; default the feature's), ``limit`` (1..500, default 50),
    ``offset``."""
    status = _choice(request, "status", STATUSES, "pending")
    order = _choice(request, "order", ORDERS, None)
    limit = _int(request, "limit", 50, 1, MAX_LIMIT)
    offset = _int(request, "offset", 0, 0)
    feature = request.query_params.get("feature") or None
    page = await _queue(request).list(feature, _status(status), _order(order), limit, offset)
    return json_response({"items": [item.to_json() for item in page.items], "total": page.total,
                          "limit": page.limit, "offset": page.offset})


@router.get("/api/reviews/stats", summary="Queue sizes, verdicts and agreement per feature",
            responses=_errors(s404="unknown feature"))
async def review_stats(request: Request) -> Response:
    feature = request.query_params.get("feature") or None
    stats = await _queue(request).stats(feature)
    return json_response({"features": [s.to_json() for s in stats]})


@router.post("/api/reviews/next", summary="Claim the next item to review",
             responses={200: {"model": ReviewItemBody},
                        204: {"description": "nothing left to review for this reviewer"},
                        **_errors(s400="bad body", s404="unknown feature", s413="body too large")},
             openapi_extra=_body(NextRequest))
async def next_review(request: Request) -> Response:
    keel: Keel = request.app.state.keel
    data, _ = await read_json_object(request, keel.settings.max_body_bytes)
    _fields(data, {"reviewer", "feature", "order"},
            '{"reviewer": "name", "feature": "optional", "order": "optional"}')
    order = data.get("order")
    if order is not None and order not in ORDERS:
        raise InvalidRequest(f"order must be one of {', '.join(ORDERS)}", param="order")
    feature = queue_feature(request.scope, _optional_str(data, "feature"))
    item = await _queue(request).next(check_reviewer(data.get("reviewer")), feature, order)
    if item is None:
        return Response(status_code=204)
    return json_response(item.to_json())


@router.get("/api/reviews/{trace_id}", summary="One review item with its verdicts",
            responses={200: {"model": ReviewItemBody}, **_errors(s404="no such item")})
async def get_review(trace_id: str, request: Request) -> Response:
    item = await _queue(request).get(trace_id)
    return json_response(item.to_json())


@router.post("/api/reviews/{trace_id}/verdict", summary="Give a verdict on an item",
             responses={200: {"model": ReviewItemBody},
                        **_errors(s400="bad body: verdict, output or reason",
                                  s404="no such item", s409="item closed, or this reviewer "
                                  "already voted", s413="body too large")},
             openapi_extra=_body(VerdictRequest))
async def give_verdict(trace_id: str, request: Request) -> Response:
    keel: Keel = request.app.state.keel
    data, _ = await read_json_object(request, keel.settings.max_body_bytes)
    _fields(data, {"reviewer", "verdict", "output", "reason"},
            '{"reviewer": "name", "verdict": "approve|edit|reject", "output": ..., "reason": "..."}')
    verdict = data.get("verdict")
    if not isinstance(verdict, str):
        raise InvalidRequest('body needs "verdict": approve, edit or reject', param="verdict")
    item = await _queue(request).submit(
        trace_id, check_reviewer(data.get("reviewer")), verdict, data.get("output"), _optional_str(data, "reason"))
    return json_response(item.to_json())


def _status(value: str | None) -> Status:
    return "done" if value == "done" else "all" if value == "all" else "pending"


def _order(value: str | None) -> Order | None:
    return "oldest" if value == "oldest" else "confidence" if value == "confidence" else None
