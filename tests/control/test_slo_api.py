"""``GET /api/slo`` and ``GET /api/slo/{feature}``: the SLOs of live traffic, and the
error paths (unknown feature 404, bad ``at`` 400, keys)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from keel.control.slo import slo_status
from keel.errors import ProviderUnavailable
from keel.gateway import Keel
from keel.server import create_app
from keel.spec import parse_spec
from tests.conftest import basic_feature, scripted, settings_in

SLO = {"latency_p95_ms": 10_000, "error_rate": 0.1}


def two_features() -> dict[str, object]:
    return {"providers": {"p1": {"type": "scripted"}, "p2": {"type": "scripted"}},
            "features": {"f": basic_feature(slo=SLO), "plain": basic_feature()}}


@pytest.fixture
async def keel(tmp_path: Path) -> AsyncIterator[Keel]:
    async with Keel(parse_spec(two_features()), settings_in(tmp_path)) as k:
        for _ in range(3):
            await k.call("f", {"text": "ok"})
        scripted(k, "p1").script = [ProviderUnavailable("down")] * 2
        scripted(k, "p2").script = [ProviderUnavailable("down")] * 2
        await k.call("f", {"text": "fails"})
        assert k.writer.flush()
        yield k


@pytest.fixture
async def client(keel: Keel) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(keel)),
                                 base_url="http://keel") as c:
        yield c


async def test_every_features_slos(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/slo")
    assert r.status_code == 200
    body = r.json()
    assert body["at"] == pytest.approx(time.time(), abs=60)
    features = {f["feature"]: f for f in body["features"]}
    assert set(features) == {"f", "plain"}
    assert features["plain"]["objectives"] == []
    objectives = {o["objective"]: o for o in features["f"]["objectives"]}
    assert set(objectives) == {"latency_p95_ms", "error_rate"}
    errors = objectives["error_rate"]
    assert (errors["calls"], errors["bad"], errors["target"]) == (4, 1, 0.1)
    assert errors["budget_remaining"] == pytest.approx(1 - 1 / 0.4)
    assert errors["burn_rates"]["5m"] == pytest.approx(2.5)  # 25% errors against 10%
    assert errors["page"] is False and errors["met"] is False
    assert objectives["latency_p95_ms"]["observed"] > 0


async def test_one_features_slos_match_the_library(client: httpx.AsyncClient, keel: Keel) -> None:
    at = time.time()
    r = await client.get("/api/slo/f", params={"at": str(at)})
    assert r.status_code == 200
    body = r.json()
    assert body["feature"] == "f" and body["window_days"] == 30
    expected = [s.to_json() for s in slo_status(keel.store, "f", keel.features["f"].spec.slo, at)]
    assert body["objectives"] == expected


async def test_at_judges_the_past(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/slo/f", params={"at": "1000000000"})  # 2001: no calls yet
    errors = {o["objective"]: o for o in r.json()["objectives"]}["error_rate"]
    assert (errors["calls"], errors["budget_remaining"]) == (0, 1.0)


async def test_unknown_feature_is_404(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/slo/nope")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "feature_not_found"
    assert "f, plain" in r.json()["error"]["message"]


@pytest.mark.parametrize("at", ["soon", "-5", "0", "nan", "inf"])
async def test_bad_at_is_400(client: httpx.AsyncClient, at: str) -> None:
    for path in ("/api/slo", "/api/slo/f"):
        r = await client.get(path, params={"at": at})
        assert r.status_code == 400, (path, at)
        assert r.json()["error"]["code"] == "invalid_request"
        assert r.json()["error"]["param"] == "at"


async def test_slos_need_a_key_when_keys_are_set(tmp_path: Path) -> None:
    settings = replace(settings_in(tmp_path), api_keys=frozenset({"sk-good"}))
    async with Keel(parse_spec(two_features()), settings) as keel, httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(keel)), base_url="http://keel") as c:
        assert (await c.get("/api/slo")).status_code == 401
        ok = await c.get("/api/slo", headers={"authorization": "Bearer sk-good"})
        assert ok.status_code == 200


async def test_the_openapi_document_lists_the_slo_api(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert "/api/slo" in paths and "/api/slo/{feature}" in paths
