"""The drift API: ``GET /api/drift/{feature}``, the report the dashboard plots.

Query parameters mirror ``keel drift``: ``window`` (3600, 30m, 1h, 1d, 1w) or
``windows`` (a count), ``since`` / ``until`` (epoch seconds, ISO 8601, or an age such as
``7d``), ``reference`` (``window``, ``champion``, ``dataset:NAME[@N]``),
``reference_start`` / ``reference_end``, ``columns`` (comma-separated) and
``embeddings`` (true/false). The body is :meth:`DriftReport.to_json`: per window and
column the method, statistic, p-values, threshold, drifted flag and a summary (mean,
p50, p95, or label shares and rates) a chart can be drawn from. Unknown feature: 404
``feature_not_found``; a bad parameter: 400 ``invalid_request`` naming it.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from starlette.responses import Response

from keel.control.drift import MAX_WINDOWS, Reference, drift_report, parse_duration, parse_time
from keel.errors import InvalidRequest
from keel.server.features import json_response
from keel.server.reviews import _errors, _int
from keel.server.versions import _feature

router = APIRouter()

PARAMS = frozenset({"window", "windows", "since", "until", "reference", "reference_start",
                    "reference_end", "columns", "embeddings"})


def _time(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name)
    return None if raw is None or raw == "" else parse_time(raw, name)


def _bool(request: Request, name: str) -> bool:
    raw = (request.query_params.get(name) or "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise InvalidRequest(f"{name} must be true or false, got '{raw}'", param=name)
    return raw in ("true", "1")


@router.get("/api/drift/{feature}", summary="Drift of a feature's traffic, window by window",
            responses=_errors(s400="bad query parameter", s404="unknown feature or dataset"))
async def feature_drift(feature: str, request: Request) -> Response:
    keel, spec = _feature(request, feature)
    unknown = sorted(set(request.query_params) - PARAMS)
    if unknown:
        raise InvalidRequest(f"unknown query parameter(s) {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(PARAMS))}", param=unknown[0])
    raw_window = request.query_params.get("window")
    windows = _int(request, "windows", 0, 1, MAX_WINDOWS) or None
    raw_columns = request.query_params.get("columns")
    reference = Reference.parse(request.query_params.get("reference") or "window",
                                _time(request, "reference_start"), _time(request, "reference_end"))
    report = await asyncio.to_thread(
        drift_report, keel.store, feature,
        window=parse_duration(raw_window, "window") if raw_window else None,
        windows=windows, since=_time(request, "since"), until=_time(request, "until"),
        reference=reference,
        columns=None if not raw_columns else [c.strip() for c in raw_columns.split(",") if c.strip()],
        embeddings=_bool(request, "embeddings"),
        text_field=spec.input.text_field if spec.output.kind != "chat" else None,
        champion=spec.aliases.get("champion"))
    return json_response(report.to_json())
