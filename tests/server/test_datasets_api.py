"""Datasets and eval runs through the API: shapes, paging and error paths."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from keel.control.datasets import DatasetStore, Item
from keel.gateway import Keel
from tests.conftest import basic_feature, settings_in, spec_with
from tests.control.test_registry import passing_run
from tests.server.test_reviews_api import client_for


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    keel = Keel(spec_with(basic_feature()), settings_in(tmp_path))
    keel.store.migrate()
    items = [Item.of({"text": f"m{i}"}, {"label": "a" if i % 2 else "b"},
                     split="train" if i < 8 else "eval") for i in range(10)]
    DatasetStore(keel.store).commit("golden", items, actor="test")
    passing_run(keel.store, "f", "v2")
    async with client_for(keel) as client:
        yield client


async def test_datasets_versions_and_items(client: httpx.AsyncClient) -> None:
    listed = (await client.get("/api/datasets")).json()["datasets"]
    assert [(d["name"], d["latest"], d["items"]) for d in listed] == [("golden", 1, 10)]
    versions = (await client.get("/api/datasets/golden")).json()["versions"]
    assert versions[0]["ref"] == "golden@1" and versions[0]["splits"] == {"train": 8, "eval": 2}
    page = (await client.get("/api/datasets/golden/1?split=train&limit=3&offset=6")).json()
    assert page["total"] == 8 and len(page["items"]) == 2
    assert {i["split"] for i in page["items"]} == {"train"}
    assert page["items"][0]["item_hash"].startswith("sha256:")


@pytest.mark.parametrize("path, status, code", [
    ("/api/datasets/nope", 404, "dataset_not_found"),
    ("/api/datasets/golden/7", 404, "dataset_not_found"),
    ("/api/datasets/golden/1?split=golden", 404, "dataset_not_found"),
    ("/api/datasets/golden/1?limit=0", 400, "invalid_request"),
    ("/api/datasets/golden/0", 400, "invalid_request"),
    (f"/api/datasets/golden/{2**63}", 400, "invalid_request"),  # past 64 bits: was a 500
    ("/api/eval-runs", 400, "invalid_request"),
    ("/api/eval-runs?feature=nope", 404, "feature_not_found"),
    ("/api/eval-runs/nope", 404, "eval_run_not_found"),
])
async def test_errors(client: httpx.AsyncClient, path: str, status: int, code: str) -> None:
    r = await client.get(path)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


async def test_eval_runs(client: httpx.AsyncClient) -> None:
    runs = (await client.get("/api/eval-runs?feature=f")).json()["runs"]
    assert [(r["id"], r["version"], r["passed"]) for r in runs] == [("run-v2-1", "v2", True)]
    assert (await client.get("/api/eval-runs?feature=f&version=v1")).json()["runs"] == []
    run = (await client.get("/api/eval-runs/run-v2-1")).json()
    assert run["metrics"] == {"accuracy": 0.9} and run["dataset_number"] == 1
