"""The registry API in-process (ASGI): versions, model cards, alias moves and their
error paths."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from keel.control.registry import Registry
from keel.errors import ProviderRejected
from keel.gateway import Keel
from keel.providers.base import ProviderRequest
from keel.spec import VersionSpec
from tests.conftest import ScriptedProvider, basic_feature, settings_in, spec_with
from tests.control.test_registry import passing_run
from tests.server.test_reviews_api import client_for


@pytest.fixture
def keel(tmp_path: Path) -> Keel:
    return Keel(spec_with(basic_feature(gate={"dataset": "golden@1"})), settings_in(tmp_path))


@pytest.fixture
async def client(keel: Keel) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(keel) as client:
        yield client


async def test_list_and_show_versions(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/features/f/versions")
    assert r.status_code == 200
    body = r.json()
    assert body["aliases"] == {"champion": "v1"}
    assert [(v["name"], v["number"], v["aliases"], v["served"], v["source"]) for v in body["versions"]] == [
        ("v1", 1, ["champion"], True, "keel.yaml"), ("v2", 2, [], True, "keel.yaml")]
    r = await client.get("/api/features/f/versions/v1")
    card = r.json()
    assert card["spec_hash"].startswith("sha256:")
    assert card["card"]["model"]["model"] == "m1"
    assert card["eval_runs"] == [] and card["artifact_ok"] is True
    assert (await client.get("/api/features/f/versions/v9")).json()["error"]["code"] == "version_not_found"
    assert (await client.get("/api/features/nope/versions")).status_code == 404


async def test_register_serves_the_version_at_once(client: httpx.AsyncClient) -> None:
    body = {"name": "v3", "spec": {"provider": "p2", "model": "m3"}}
    r = await client.post("/api/features/f/versions", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["number"] == 3 and r.json()["registered_by"] == "api:anonymous"
    again = await client.post("/api/features/f/versions", json=body)
    assert again.status_code == 201  # the identical version: idempotent
    r = await client.post("/api/features/f/versions",
                          json={"name": "v3", "spec": {"provider": "p2", "model": "other"}})
    assert r.status_code == 409 and r.json()["error"]["code"] == "version_exists"
    r = await client.put("/api/features/f/aliases/canary", json={"version": "v3"})
    assert r.status_code == 200 and r.json()["to"] == "v3"
    listed = (await client.get("/api/features/f/versions")).json()
    assert listed["aliases"] == {"champion": "v1", "canary": "v3"}


async def test_a_version_this_process_cannot_serve_is_refused_not_registered(
        client: httpx.AsyncClient, keel: Keel, monkeypatch: pytest.MonkeyPatch) -> None:
    async def prepare(self: ScriptedProvider, request: ProviderRequest) -> None:
        if request.model == "broken":  # as the local provider refuses a head it cannot load
            raise ProviderRejected(f"{self.name}: model 'broken' cannot be loaded")

    monkeypatch.setattr(ScriptedProvider, "prepare", prepare)
    r = await client.post("/api/features/f/versions",
                          json={"name": "v3", "spec": {"provider": "p2", "model": "broken"}})
    assert r.status_code == 400, r.text  # was a 502 provider_rejected, after registering it
    error = r.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_request", "spec")
    assert "cannot be served" in error["message"] and "'broken'" in error["message"]
    listed = (await client.get("/api/features/f/versions")).json()["versions"]
    assert [v["name"] for v in listed] == ["v1", "v2"]
    assert "v3" not in keel.features["f"].targets and "v3" not in keel.features["f"].spec.versions
    r = await client.post("/api/features/f/versions",  # the name is still free
                          json={"name": "v3", "spec": {"provider": "p2", "model": "m3"}})
    assert r.status_code == 201, r.text
    # registered elsewhere (unservable here, so the sync never loads it) with other
    # settings: 409, and nothing stays loaded here
    Registry(keel.store).register("f", "v4", VersionSpec(provider="p1", model="broken"),
                                  actor="test", source="cli")
    r = await client.post("/api/features/f/versions",
                          json={"name": "v4", "spec": {"provider": "p1", "model": "here"}})
    assert r.status_code == 409 and r.json()["error"]["code"] == "version_exists"
    assert "v4" not in keel.features["f"].targets and "v4" not in keel.features["f"].spec.versions


@pytest.mark.parametrize("body, param", [
    ({"spec": {"model": "m"}}, "name"),
    ({"name": "v3"}, "spec"),
    ({"name": "v3", "spec": {"provider": "p1"}}, "spec.model"),
    ({"name": "v3", "spec": {"provider": "ghost", "model": "m"}}, "spec.provider"),
    ({"name": "bad name", "spec": {"provider": "p1", "model": "m"}}, "name"),
    ({"name": "v3", "spec": {"provider": "p1", "model": "m"}, "extra": 1}, "extra"),
])
async def test_register_refuses_bad_bodies(client: httpx.AsyncClient, body: dict[str, object],
                                           param: str) -> None:
    r = await client.post("/api/features/f/versions", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param


async def test_champion_moves_need_the_gate(client: httpx.AsyncClient, keel: Keel) -> None:
    r = await client.put("/api/features/f/aliases/champion", json={"version": "v2"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "gate_required"
    run = passing_run(keel.store, "f", "v2")
    _register_gate_dataset(keel)
    r = await client.put("/api/features/f/aliases/champion", json={"version": "v2"})
    assert r.status_code == 200, r.text
    assert r.json()["eval_run"] == run
    assert (await keel.call("f", {"text": "x"})).version == "v2"  # served here at once
    r = await client.put("/api/features/f/aliases/champion",
                         json={"version": "v1", "force": True, "reason": "incident 42"})
    assert r.status_code == 200 and r.json()["forced"] is True
    history = (await client.get("/api/features/f/aliases")).json()["history"]
    assert [(h["from"], h["to"], h["forced"], h["reason"]) for h in history[:2]] == [
        ("v2", "v1", True, "incident 42"), ("v1", "v2", False, None)]


@pytest.mark.parametrize("body, status", [
    ({}, 400), ({"version": 3}, 400), ({"version": "v2", "force": "yes"}, 400),
    ({"version": "v9"}, 404), ({"version": "v2", "other": 1}, 400),
])
async def test_alias_moves_refuse_bad_bodies(client: httpx.AsyncClient, body: dict[str, object],
                                             status: int) -> None:
    r = await client.put("/api/features/f/aliases/canary", json=body)
    assert r.status_code == status, r.text


def _register_gate_dataset(keel: Keel) -> None:
    """golden@1, the dataset version the feature's gate pins (the run above is on it)."""
    conn = keel.store.connect()
    with conn:
        conn.execute("INSERT INTO dataset_versions VALUES ('golden', 1, 'sha256:x', 0, '{}', NULL,"
                     " NULL, 'test', 0)")
    conn.close()
