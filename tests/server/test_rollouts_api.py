"""Rollouts through the API of a running Keel whose leader ticks the controller: a good
canary is promoted step by step, a failing one is rolled back, and every manual action
has its error paths."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from keel.errors import ProviderUnavailable
from keel.gateway import Keel
from tests.conftest import basic_feature, scripted, settings_in, spec_with
from tests.server.test_reviews_api import client_for

ROLLOUT = {"steps": [0.5, 1.0], "min_calls": 20, "min_step_s": 0, "require_gate": False,
           "progress_deadline_s": 60}


def make_keel(tmp_path: Path, **rollout: Any) -> Keel:
    settings = dataclasses.replace(settings_in(tmp_path), control_interval_s=0.05)
    feature = basic_feature(rollout={**ROLLOUT, **rollout}, fallbacks=[])
    return Keel(spec_with(feature), settings)


@pytest.fixture
def keel(tmp_path: Path) -> Keel:
    return make_keel(tmp_path)


@pytest.fixture
async def client(keel: Keel) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(keel) as client:
        yield client


async def traffic_until(client: httpx.AsyncClient, keel: Keel, state: str, limit: int = 3000) -> dict[str, Any]:
    """Call with many users until the rollout reaches ``state``; its status then."""
    for i in range(limit):
        await keel.call("f", {"text": "hello"}, user=f"user-{i % 400}")
        if i % 25 == 24:
            keel.writer.flush()
            await asyncio.sleep(0.12)  # a few leader rounds
            status = (await client.get("/api/features/f/rollout")).json()
            if status["rollout"]["state"] == state:
                return status  # type: ignore[no-any-return]
    raise AssertionError(f"rollout never reached {state}: {status['rollout']}")


async def test_a_good_canary_is_promoted_step_by_step(client: httpx.AsyncClient, keel: Keel) -> None:
    assert (await client.get("/api/features/f/rollout")).status_code == 404
    r = await client.post("/api/features/f/rollout", json={"version": "v2"})
    assert r.status_code == 201, r.text
    assert r.json()["rollout"]["weight"] == 0.5
    router = keel.features["f"].router
    assert router.split is not None and router.split.weight == 0.5
    assert router.aliases["canary"] == "v2"
    status = await traffic_until(client, keel, "promoted")
    states = [(t["to_state"], t["weight"]) for t in status["transitions"]]
    assert ("running", 1.0) in states and states[-1][0] == "promoted"
    assert status["transitions"][-1]["actor"] == "controller"
    await asyncio.sleep(0.15)
    assert router.aliases == {"champion": "v2"} and router.split is None
    assert (await keel.call("f", {"text": "x"}, user="anyone")).version == "v2"
    versions = (await client.get("/api/features/f/aliases")).json()["history"]
    assert versions[0]["alias"] == "canary" and versions[0]["to"] is None  # the canary is gone
    assert any(h["alias"] == "champion" and h["to"] == "v2" and h["actor"] == "controller"
               for h in versions)


async def test_a_failing_canary_is_rolled_back(client: httpx.AsyncClient, keel: Keel) -> None:
    p2 = scripted(keel, "p2")
    p2.script = [ProviderUnavailable("upstream down")] * 10_000
    r = await client.post("/api/features/f/rollout", json={"version": "v2"})
    assert r.status_code == 201
    status = await traffic_until(client, keel, "rolled_back")
    assert "error" in status["transitions"][-1]["reason"]
    await asyncio.sleep(0.15)
    router = keel.features["f"].router
    assert router.split is None and "canary" not in router.aliases
    assert (await keel.call("f", {"text": "x"}, user="user-1")).version == "v1"


async def test_manual_actions_and_their_errors(client: httpx.AsyncClient, keel: Keel) -> None:
    assert (await client.post("/api/features/f/rollout/pause")).status_code == 404
    bad = await client.post("/api/features/f/rollout", json={"version": "v1"})
    assert bad.status_code == 409  # already the champion
    assert (await client.post("/api/features/f/rollout", json={"version": "v9"})).status_code == 404
    assert (await client.post("/api/features/f/rollout", json={})).status_code == 400
    assert (await client.post("/api/features/f/rollout",
                              json={"version": "v2", "steps": "all"})).status_code == 400
    r = await client.post("/api/features/f/rollout", json={"version": "v2", "steps": [0.5, 0.2]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "steps"
    assert (await client.post("/api/features/f/rollout", json={"version": "v2"})).status_code == 201
    again = await client.post("/api/features/f/rollout", json={"version": "v2"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "rollout_conflict"
    assert (await client.post("/api/features/f/rollout/explode")).status_code == 400
    r = await client.post("/api/features/f/rollout/pause", json={"reason": "looking"})
    assert r.status_code == 200 and r.json()["transition"]["to_state"] == "paused"
    assert r.json()["transition"]["actor"] == "api:anonymous"
    assert (await client.post("/api/features/f/rollout/pause")).status_code == 409
    assert (await client.post("/api/features/f/rollout/resume")).status_code == 200
    r = await client.post("/api/features/f/rollout/rollback", json={"reason": "not today"})
    assert r.status_code == 200 and r.json()["transition"]["to_state"] == "rolled_back"
    await asyncio.sleep(0.15)
    assert keel.features["f"].router.split is None


async def test_a_gated_feature_needs_a_passing_eval_to_start(tmp_path: Path) -> None:
    keel = make_keel(tmp_path, require_gate=True)
    async with client_for(keel) as client:
        r = await client.post("/api/features/f/rollout", json={"version": "v2"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "gate_required"
        r = await client.post("/api/features/f/rollout", json={"version": "v2", "force": True})
        assert r.status_code == 201 and r.json()["rollout"]["forced"] is True
