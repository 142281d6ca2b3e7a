"""The feedback API: ``POST /api/feedback``, ``GET /api/feedback`` and
``GET /api/feedback/stats``. The logic is :mod:`keel.control.feedback`.

Feedback is often sent the moment an answer is shown, while the call's event may still
be in the event writer's queue (events reach the store in batches, off the hot path).
So a trace id is looked up in the store, then among the calls this process answered
lately (:class:`RecentCalls`, fed by the gateway's observers as each event is handed to
the writer): one found there exists, and its feedback is recorded at once (feedback that
makes a weak label first waits, up to ``wait_s``, for the event to be stored, since weak
labels are written from the stored event only). A trace id known to neither may belong to another process whose
writer has not caught up: the store is asked again for ``grace_s`` before the answer is
404 ``event_not_found``.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from keel.control.feedback import (
    KINDS,
    CallRef,
    FeedbackIn,
    FeedbackStore,
    Kind,
    Recorded,
    check_correction,
    parse,
    sanitized,
    weak_label_dataset,
)
from keel.control.feedback_stats import feedback_stats
from keel.errors import EventNotFound, InvalidRequest
from keel.gateway import Keel
from keel.server.access import check_feature
from keel.server.auth import request_key_id
from keel.server.body import read_json_object
from keel.server.features import json_response
from keel.server.reviews import _choice, _errors, _int
from keel.server.stats import DAY, _check_feature, _range
from keel.types import Event

router = APIRouter()

MAX_PAGE = 500


class RecentCalls:
    """The last ``capacity`` calls this process answered, by trace id, from the moment
    their event is handed to the writer (an observer of :class:`~keel.gateway.Keel`).
    Touched only on the event loop."""

    def __init__(self, capacity: int = 16384) -> None:
        self.capacity = capacity
        self._calls: OrderedDict[str, CallRef] = OrderedDict()

    def observe(self, event: Event) -> None:
        self._calls[event.trace_id] = CallRef(event.trace_id, event.feature, event.version,
                                              event.routed, event.ts, event.user, stored=False)
        if len(self._calls) > self.capacity:
            self._calls.popitem(last=False)

    def get(self, trace_id: str) -> CallRef | None:
        return self._calls.get(trace_id)


class FeedbackService:
    """What the routes share: the store, the recent calls, and how long to wait."""

    def __init__(self, keel: Keel, *, grace_s: float = 1.0, wait_s: float = 5.0,
                 poll_s: float = 0.02) -> None:
        self.keel = keel
        self.store = FeedbackStore(keel.store)
        self.recent = RecentCalls()
        self.grace_s, self.wait_s, self.poll_s = grace_s, wait_s, poll_s
        keel.observers.append(self.recent.observe)

    async def resolve(self, trace_id: str) -> CallRef:
        """The call with this trace id, stored or on its way (see the module's doc)."""
        call = await asyncio.to_thread(self.store.call, trace_id)
        if call is not None:
            return call
        recent = self.recent.get(trace_id)
        if recent is not None:
            return recent
        deadline = time.monotonic() + self.grace_s
        while time.monotonic() < deadline:
            await asyncio.sleep(self.poll_s)
            call = await asyncio.to_thread(self.store.call, trace_id)
            if call is not None:
                return call
            recent = self.recent.get(trace_id)
            if recent is not None:
                return recent
        raise EventNotFound(f"no call with trace id '{trace_id}' (the trace_id of a call's "
                            "answer, or its x-keel-trace-id header)", param="trace_id")

    async def stored(self, call: CallRef) -> CallRef:
        """``call`` once its event is in the store, waiting up to ``wait_s``; as it is
        when the writer has not caught up by then."""
        deadline = time.monotonic() + self.wait_s
        while not call.stored and time.monotonic() < deadline:
            await asyncio.sleep(self.poll_s)
            found = await asyncio.to_thread(self.store.call, call.trace_id)
            call = found or call
        return call

    async def submit(self, feedback: FeedbackIn, *, key: str | None = None,
                     request: Request | None = None) -> Recorded:
        call = await self.resolve(feedback.trace_id)
        if request is not None:
            check_feature(request.scope, call.feature)  # 403 for a key limited to others
        found = self.keel.features.get(call.feature)
        spec = None if found is None else found.spec
        feedback = sanitized(check_correction(feedback, spec), self.keel.writer.scrubber, spec)
        output_kind = None if spec is None else spec.output.kind
        labels = feedback.kind == "correction" or (feedback.kind == "thumbs"
                                                   and output_kind == "label")
        if labels and not call.stored:
            call = await self.stored(call)  # weak labels are written from the stored event

        def record() -> Recorded:
            dataset = weak_label_dataset(self.keel.store, call.feature, spec) if labels else None
            return self.store.record(feedback, call, key=key, dataset=dataset,
                                     output_kind=output_kind)

        return await asyncio.to_thread(record)


def install(app: FastAPI, keel: Keel) -> FeedbackService:
    """Serve the feedback API on ``app`` and start watching ``keel``'s calls."""
    service = FeedbackService(keel)
    app.state.feedback = service
    app.include_router(router)
    return service


def _service(request: Request) -> FeedbackService:
    service: FeedbackService = request.app.state.feedback
    return service


class FeedbackRequest(BaseModel):
    trace_id: str = Field(description="the call's trace id")
    kind: Kind = Field(description="thumbs | rating | comment | correction | outcome")
    value: Any = Field(default=None, description='thumbs: "up" or "down"; rating: 1..5; '
                       "outcome: an optional number (0: it did not happen)")
    name: str | None = Field(default=None, description="outcome: its name, e.g. ticket_resolved")
    comment: str | None = Field(default=None, description="comment: the text; others: a note")
    output: Any = Field(default=None, description="correction: the corrected output")
    source: str = Field(default="user", description="who gives it; feedback is kept once per "
                        "(trace id, kind, outcome name, source)")
    metadata: dict[str, Any] = Field(default_factory=dict)


@router.post(
    "/api/feedback", summary="Attach feedback or a business outcome to a call",
    responses={201: {"description": "created"},
               200: {"description": 'the same again ("result": "unchanged"), or a changed '
                     'payload for the same key ("result": "updated")'},
               **_errors(s400="empty body, invalid JSON", s404="no call with this trace id",
                         s413="body too large", s422="unusable feedback payload")},
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": FeedbackRequest.model_json_schema()}}}})
async def post_feedback(request: Request) -> Response:
    keel: Keel = request.app.state.keel
    data, _ = await read_json_object(request, keel.settings.max_body_bytes)
    recorded = await _service(request).submit(parse(data), key=request_key_id(request.scope),
                                              request=request)
    return json_response(recorded.to_json(), 201 if recorded.result == "created" else 200)


@router.get("/api/feedback", summary="Feedback by trace id, or per feature, newest first",
            responses=_errors(s400="bad query parameter", s404="unknown feature"))
async def list_feedback(request: Request) -> Response:
    """Query: ``trace_id``, ``feature``, ``kind``, ``version`` (routed to), ``source``,
    ``since`` / ``until`` (when it was last sent), ``limit`` (1..500, default 50),
    ``offset``."""
    service = _service(request)
    q = request.query_params
    kind = _choice(request, "kind", KINDS, None)
    since, until = _range(request, None)
    limit = _int(request, "limit", 50, 1, MAX_PAGE)
    offset = _int(request, "offset", 0, 0)
    feature = q.get("feature") or None
    if feature is not None:
        await _check_feature(service.keel, feature)
    until_given = q.get("until") not in (None, "")
    items, total = await asyncio.to_thread(
        service.store.list, trace_id=q.get("trace_id") or None, feature=feature, kind=kind,
        version=q.get("version") or None, source=q.get("source") or None, since=since,
        until=until if until_given else None, limit=limit, offset=offset)
    return json_response({"feedback": [f.to_json() for f in items], "total": total,
                          "limit": limit, "offset": offset})


@router.get("/api/feedback/stats", summary="Feedback and outcome rates per version",
            responses=_errors(s400="bad query parameter", s404="unknown feature"))
async def stats(request: Request) -> Response:
    """Query: ``feature`` (required), ``since`` (default 7 days ago), ``until``: on the
    calls' time. Thumbs, ratings, comments, corrections and outcomes per version routed
    to, with the calls they are rates of."""
    service = _service(request)
    feature = request.query_params.get("feature") or None
    if feature is None:
        raise InvalidRequest("feature is required: /api/feedback/stats?feature=NAME",
                             param="feature")
    since, until = _range(request, 7 * DAY)
    assert since is not None
    await _check_feature(service.keel, feature)
    body = await asyncio.to_thread(feedback_stats, service.keel.store, feature, since, until)
    return json_response(body)
