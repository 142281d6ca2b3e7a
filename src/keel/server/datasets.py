"""The read-only API of what versions are judged on: datasets, their immutable
versions and items, and eval runs with their metrics and gate results.

Datasets are written by review verdicts (the draft) and ``keel data import|commit``;
eval runs by ``keel eval``. Here people and dashboards read them.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from starlette.responses import Response

from keel.control.datasets import DatasetStore, DatasetVersion, Item
from keel.errors import InvalidRequest
from keel.gateway import Keel
from keel.server.features import json_response
from keel.server.reviews import MAX_INT, _errors, _int

router = APIRouter()


def _store(request: Request) -> DatasetStore:
    keel: Keel = request.app.state.keel
    return DatasetStore(keel.store)


def version_json(v: DatasetVersion) -> dict[str, Any]:
    return {**dataclasses.asdict(v), "ref": v.ref}


def item_json(item: Item) -> dict[str, Any]:
    return dataclasses.asdict(item)


@router.get("/api/datasets", summary="Every dataset: versions, latest digest, draft size")
async def list_datasets(request: Request) -> Response:
    return json_response({"datasets": await asyncio.to_thread(_store(request).datasets)})


@router.get("/api/datasets/{name}", summary="A dataset's versions, newest last",
            responses=_errors(s404="no such dataset"))
async def dataset_versions(name: str, request: Request) -> Response:
    store = _store(request)
    await asyncio.to_thread(store.version, name)  # 404 dataset_not_found when unknown
    versions = await asyncio.to_thread(store.versions, name)
    return json_response({"name": name, "versions": [version_json(v) for v in versions]})


@router.get("/api/datasets/{name}/{number}", summary="One dataset version's items",
            responses=_errors(s400="bad version number or query parameter",
                              s404="no such dataset, version or split"))
async def dataset_items(name: str, number: Annotated[int, Path(ge=1, le=MAX_INT)],
                        request: Request) -> Response:
    """Query: ``split``, ``limit`` (1..1000, default 100), ``offset``."""
    store = _store(request)
    limit = _int(request, "limit", 100, 1, 1000)
    offset = _int(request, "offset", 0, 0)
    split = request.query_params.get("split") or None
    version = await asyncio.to_thread(store.version, name, number)
    items = await asyncio.to_thread(store.items, name, number, split)
    return json_response({"version": version_json(version), "total": len(items), "limit": limit,
                          "offset": offset,
                          "items": [item_json(i) for i in items[offset:offset + limit]]})


@router.get("/api/eval-runs", summary="Eval runs of a feature (newest first)",
            responses=_errors(s400="missing feature", s404="unknown feature"))
async def eval_runs(request: Request) -> Response:
    """Query: ``feature`` (required), ``version``, ``limit`` (1..500, default 100)."""
    from keel.control.evaluation import list_runs

    keel: Keel = request.app.state.keel
    feature = request.query_params.get("feature")
    if not feature:
        raise InvalidRequest("the query needs feature=NAME", param="feature")
    keel.pipeline.feature(feature)  # 404 feature_not_found
    limit = _int(request, "limit", 100, 1, 500)
    runs = await asyncio.to_thread(list_runs, keel.store, feature,
                                   request.query_params.get("version") or None, limit)
    return json_response({"runs": [r.to_dict() for r in runs]})


@router.get("/api/eval-runs/{run_id}", summary="One eval run: metrics and gate",
            responses=_errors(s404="no such run"))
async def eval_run(run_id: str, request: Request) -> Response:
    from keel.control.evaluation import get_run

    keel: Keel = request.app.state.keel
    run = await asyncio.to_thread(get_run, keel.store, run_id)
    return json_response(run.to_dict())
