"""The datasets API (read-only): datasets, their immutable versions, and items.

Datasets are written by review verdicts (the draft), ``keel data import|commit`` and
the trainer's callers; here people and dashboards read them.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from keel.control.datasets import DatasetStore, DatasetVersion, Item
from keel.gateway import Keel
from keel.server.features import json_response
from keel.server.reviews import _errors, _int

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
            responses=_errors(s400="bad query parameter", s404="no such dataset, version or split"))
async def dataset_items(name: str, number: int, request: Request) -> Response:
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
