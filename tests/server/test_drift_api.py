"""``GET /api/drift/{feature}`` in-process (ASGI): the report JSON and every error path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from keel.gateway import Keel
from keel.server import create_app
from tests.conftest import basic_feature, settings_in, spec_with
from tests.control.drift_kit import Shape, traffic

BASE = Shape(labels=("a", "b"), weights=(0.6, 0.4))
DRIFT = Shape(words=16, labels=("a", "b"), weights=(0.2, 0.8))


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    keel = Keel(spec_with(basic_feature()), settings_in(tmp_path))
    transport = httpx.ASGITransport(app=create_app(keel))
    async with keel, httpx.AsyncClient(transport=transport, base_url="http://keel") as client:
        traffic(keel.store, [BASE, BASE, DRIFT, DRIFT])
        yield client


async def test_the_report(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/drift/f", params={"window": "1h"})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["feature"] == "f" and data["window_s"] == 3600
    assert data["alert"] and data["alert_active"] and data["drifted_windows"] == 2
    assert {"text_length", "label"} <= set(data["drifted_columns"])
    assert [w["role"] for w in data["windows"]] == ["reference", "tested", "tested", "tested"]
    label = data["windows"][3]["columns"]["label"]
    assert label["drifted"] and label["method"] == "chi2" and label["threshold"] == 0.01
    assert label["summary"]["shares"]["b"] > 0.7
    assert data["reference_summary"]["label"]["shares"]["a"] > 0.5


async def test_parameters(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/drift/f", params={
        "windows": "2", "columns": "text_length, label", "embeddings": "false",
        "since": "2023-11-14T22:00Z", "until": "2023-11-15T02:00Z"})
    assert r.status_code == 200, r.text
    data = r.json()
    assert [c["name"] for c in data["columns"]] == ["text_length", "label"]
    assert len(data["windows"]) == 2 and data["windows"][1]["drifted"]
    r = await client.get("/api/drift/f", params={
        "window": "1h", "reference": "window", "reference_start": "2023-11-15T00:00Z",
        "reference_end": "2023-11-15T02:00Z"})
    assert r.status_code == 200, r.text
    assert [w["drifted"] for w in r.json()["windows"]] == [True, True, False, False]


async def test_unknown_feature(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/drift/nope")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "feature_not_found"


BAD: list[tuple[dict[str, Any], str]] = [
    ({"window": "soon"}, "window"),
    ({"windows": "0"}, "windows"),
    ({"windows": "many"}, "windows"),
    ({"window": "1h", "windows": "2"}, "windows"),
    ({"since": "last tuesday"}, "since"),
    ({"since": "2023-11-15", "until": "2023-11-14"}, "until"),
    ({"reference": "yesterday"}, "reference"),
    ({"reference": "champion"}, "reference"),
    ({"reference_start": "0"}, "reference_end"),
    ({"reference": "champion", "reference_end": "5"}, "reference_end"),
    ({"columns": "colour"}, "columns"),
    ({"embeddings": "maybe"}, "embeddings"),
    ({"window": "1s", "since": "0"}, "window"),
    ({"windw": "1h"}, "windw"),
    ({"since": "nan"}, "since"),  # not a time: was a 200 with "since": null
    ({"until": "inf"}, "until"),
    ({"reference": f"dataset:golden@{2**63}"}, "reference"),  # past 64 bits: was a 500
]


async def test_bad_parameters(client: httpx.AsyncClient) -> None:
    for params, param in BAD:  # one server for every case: starting one is the slow part
        r = await client.get("/api/drift/f", params=params)
        assert r.status_code == 400, (params, r.text)
        error = r.json()["error"]
        assert (error["code"], error["param"]) == ("invalid_request", param), params


async def test_unknown_dataset(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/drift/f", params={"reference": "dataset:golden@1"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "dataset_not_found"
