"""The dashboard's data API: ``/api/stats/*`` read the rollups and the cost ledger
(:mod:`keel.store.stats`), ``/api/events`` the events through their indexes
(:mod:`keel.store.explorer`). See docs/stats.md.

Times are epoch seconds or ISO 8601 (``2026-05-01T00:00:00Z``; no zone = UTC). Defaults:
``until`` now; ``since`` 24 h before it for the overview, 7 days for the rest (no bound
for an explorer search by trace id). Bad parameters are 400 with the parameter named;
an unknown feature is 404 ``feature_not_found``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import time

from fastapi import APIRouter, Request
from starlette.responses import Response

from keel.errors import EventNotFound, FeatureNotFound, InvalidRequest
from keel.gateway import Keel
from keel.server.features import json_response
from keel.server.reviews import _choice, _errors, _int
from keel.store import explorer, route_stats, stats
from keel.store.cache_stats import cache_stats
from keel.types import Decision

router = APIRouter()

DAY = 86400.0
MAX_EVENTS_PAGE = 500
MAX_COST_ROWS = 1000
_DECISIONS = tuple(d.value for d in Decision)
_LAST = 253_402_300_799.0  # 9999-12-31T23:59:59Z


def _time(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        try:
            parsed = dt.datetime.fromisoformat(raw)
        except ValueError:
            raise InvalidRequest(f"{name} must be epoch seconds or ISO 8601, got '{raw}'",
                                 param=name) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        value = parsed.timestamp()
    if not math.isfinite(value) or not 0 <= value <= _LAST:
        raise InvalidRequest(f"{name} must be a time between 1970 and 9999, got '{raw}'",
                             param=name)
    return value


def _range(request: Request, default_span: float | None) -> tuple[float | None, float]:
    until = _time(request, "until")
    until = time.time() if until is None else until
    since = _time(request, "since")
    if since is None and default_span is not None:
        since = until - default_span
    if since is not None and since >= until:
        raise InvalidRequest("since must be before until", param="since")
    return since, until


def _bucket(request: Request, since: float, until: float) -> stats.Bucket:
    raw = _choice(request, "bucket", tuple(stats.BUCKETS), None)
    bucket: stats.Bucket = stats.choose_bucket(since, until) if raw is None else raw  # type: ignore[assignment]
    n = stats.points(since, until, stats.BUCKETS[bucket])
    if n > stats.MAX_POINTS:
        raise InvalidRequest(f"{n} {bucket}s in this range; at most {stats.MAX_POINTS} points: "
                             "use a coarser bucket or a shorter range", param="bucket")
    return bucket


async def _check_feature(keel: Keel, name: str) -> None:
    if name in keel.features or await asyncio.to_thread(stats.known_feature, keel.store, name):
        return
    raise FeatureNotFound(f"no feature '{name}' in keel.yaml or in the recorded calls",
                          param="feature")


def _keel(request: Request) -> Keel:
    keel: Keel = request.app.state.keel
    return keel


@router.get("/api/stats/overview", summary="Calls, decisions, latency and cost over a range",
            responses=_errors(s400="bad query parameter"))
async def overview(request: Request) -> Response:
    """Query: ``since``, ``until``, ``bucket`` (minute | hour | day; default from the range).
    Totals, a series per bucket and a row per feature, all from the rollups."""
    keel = _keel(request)
    since, until = _range(request, DAY)
    assert since is not None
    bucket = _bucket(request, since, until)
    body = await asyncio.to_thread(stats.overview, keel.store, since, until, bucket)
    return json_response(body)


@router.get("/api/stats/features/{feature}", summary="One feature: totals, series, versions",
            responses=_errors(s400="bad query parameter", s404="unknown feature"))
async def feature_stats(feature: str, request: Request) -> Response:
    """Query: ``since`` (default 7 days ago), ``until``, ``bucket``. The overview's shape
    for one feature, plus a row per version (the version routed to), and ``routing``:
    what its routing policy chose and saved (:mod:`keel.store.route_stats`)."""
    keel = _keel(request)
    since, until = _range(request, 7 * DAY)
    assert since is not None
    bucket = _bucket(request, since, until)
    await _check_feature(keel, feature)
    body = await asyncio.to_thread(stats.overview, keel.store, since, until, bucket, feature)
    body["routing"] = await asyncio.to_thread(route_stats.routing, keel.store, feature, since,
                                              until)
    known = keel.features.get(feature)
    if known is not None and known.spec.cache is not None:  # hits and savings (docs/caching.md)
        body["cache"] = await asyncio.to_thread(cache_stats, keel.store, feature, since, until)
    return json_response({"feature": feature, **body})


@router.get("/api/stats/costs", summary="Calls, tokens and cost per key, user, feature, "
            "version or day, from the ledger",
            responses=_errors(s400="bad query parameter", s404="unknown feature"))
async def costs(request: Request) -> Response:
    """Query: ``group`` (key | user | feature | version | day; default feature), ``since``
    (default 7 days ago; rounded down to its UTC day), ``until``, ``feature``, ``limit``
    (1..1000, default 100). Rows biggest cost first."""
    keel = _keel(request)
    group = _choice(request, "group", stats.GROUPS, "feature")
    since, until = _range(request, 7 * DAY)
    assert since is not None and group is not None
    limit = _int(request, "limit", 100, 1, MAX_COST_ROWS)
    feature = request.query_params.get("feature") or None
    if feature is not None:
        await _check_feature(keel, feature)
    body = await asyncio.to_thread(stats.costs, keel.store, group, since, until,  # type: ignore[arg-type]
                                   feature, limit)
    return json_response(body)


@router.get("/api/events", summary="Events by filter, newest first (keyset pagination)",
            responses=_errors(s400="bad query parameter", s404="unknown feature"))
async def list_events(request: Request) -> Response:
    """Query: ``feature``, ``version`` (routed to), ``decision``, ``user``, ``key``,
    ``since`` (default 7 days ago; none with ``trace``), ``until``, ``trace`` (a trace id
    prefix), ``limit`` (1..500, default 50), ``cursor`` (the previous page's ``next``)."""
    keel = _keel(request)
    q = request.query_params
    trace = q.get("trace") or None
    since, until = _range(request, None if trace else 7 * DAY)
    until_given = q.get("until") not in (None, "")
    decision = _choice(request, "decision", _DECISIONS, None)
    limit = _int(request, "limit", 50, 1, MAX_EVENTS_PAGE)
    cursor = None
    if q.get("cursor"):
        try:
            cursor = explorer.decode_cursor(q["cursor"])
        except ValueError as exc:
            raise InvalidRequest(f"cursor: {exc}", param="cursor") from None
    feature = q.get("feature") or None
    if feature is not None:
        await _check_feature(keel, feature)
    flt = explorer.EventFilter(
        feature=feature, version=q.get("version") or None, decision=decision,
        user=q.get("user") or None, key=q.get("key") or None, since=since,
        until=until if until_given else None, trace=trace)
    page, after = await asyncio.to_thread(explorer.list_events, keel.store, flt, limit, cursor)
    return json_response({"events": page,
                          "next": None if after is None else explorer.encode_cursor(*after)})


@router.get("/api/events/{trace_id}", summary="One event in full",
            responses=_errors(s404="no event with this trace id"))
async def get_event(trace_id: str, request: Request) -> Response:
    """Timings per stage, attempts, validations, input, output and checks."""
    event = await asyncio.to_thread(explorer.get_event, _keel(request).store, trace_id)
    if event is None:
        raise EventNotFound(f"no event with trace id '{trace_id}'", param="trace_id")
    return json_response(event)
