"""Access control: every route has a rule; feature-limited keys; keys created, listed and
revoked through the API and seen by other processes within seconds; open mode only on
loopback; events and the audit trail name the key."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from keel.control import audit, keys
from keel.control.keys import Principal
from keel.server import create_app
from keel.server.access import RULES, Rules, is_loopback
from keel.server.auth import KeyCache
from keel.types import ReviewRequest
from tests.server.access_kit import bearer, create_keys, make_keel, served, walk


def test_every_route_of_the_app_has_exactly_one_rule(tmp_path: Path) -> None:
    app = create_app(make_keel(tmp_path))
    routes = set(walk(app.routes))
    pairs = [(m, r.path) for r in RULES for m in r.methods]
    ruled = set(pairs)
    assert len(pairs) == len(ruled), "a route has two rules"
    assert routes, "no routes found: the walk no longer understands the app"
    missing = sorted(routes - ruled)
    assert not missing, f"routes without an access rule in keel.server.access.RULES: {missing}"
    stale = sorted(ruled - routes)
    assert not stale, f"rules for routes the app does not have: {stale}"
    rules = Rules()
    for method, template in routes:  # and the matcher finds that very rule
        example = template.replace("{rest:path}", "a/b")
        while "{" in example:
            start, end = example.index("{"), example.index("}")
            example = example[:start] + "x1" + example[end + 1:]
        assert rules.match(method, example)[0].path == template, (method, template)


def test_unknown_routes_are_for_admins_only() -> None:
    rule, _ = Rules().match("GET", "/api/something-new")
    assert rule.kind == "global" and not rule.roles


def test_loopback_addresses() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.5", "example.com", ""]))


async def test_a_key_limited_to_a_feature_is_refused_the_others(tmp_path: Path) -> None:
    keel = make_keel(tmp_path)
    async with served(keel) as client:
        k = create_keys(keel.store)
        app_f, viewer_f, reviewer_f = bearer(k["app_f"]), bearer(k["viewer_f"]), bearer(k["reviewer_f"])
        body = {"input": {"text": "hi"}}
        assert (await client.post("/v1/features/f", json=body, headers=app_f)).status_code == 200
        r = await client.post("/v1/features/g", json=body, headers=app_f)
        assert r.status_code == 403 and "only feature(s) f, not 'g'" in r.json()["error"]["message"]
        chat = {"messages": [{"role": "user", "content": "hi"}]}
        r = await client.post("/v1/chat/completions", json={**chat, "model": "g"}, headers=app_f)
        assert r.status_code == 403 and r.json()["error"]["param"] == "feature"
        r = await client.post("/v1/chat/completions", json={**chat, "model": "f"}, headers=app_f)
        assert r.status_code == 200
        models = (await client.get("/v1/models", headers=app_f)).json()["data"]
        assert [m["id"] for m in models] == ["f"]
        assert (await client.get("/v1/models/g", headers=app_f)).status_code == 403
        listed = (await client.get("/v1/features", headers=viewer_f)).json()["features"]
        assert [f["name"] for f in listed] == ["f"]
        full = (await client.get("/v1/features", headers=bearer(k["viewer"]))).json()["features"]
        assert [f["name"] for f in full] == ["f", "g"]

        # reads: by path, by ?feature=, across every feature, by an id looked up
        assert (await client.get("/api/features/f/versions", headers=viewer_f)).status_code == 200
        assert (await client.get("/api/features/g/versions", headers=viewer_f)).status_code == 403
        r = await client.get("/api/events", headers=viewer_f)
        assert r.status_code == 403 and "?feature=NAME" in r.json()["error"]["message"]
        assert (await client.get("/api/events?feature=g", headers=viewer_f)).status_code == 403
        assert (await client.get("/api/events?feature=f", headers=viewer_f)).status_code == 200
        r = await client.get("/api/stats/overview", headers=viewer_f)
        assert r.status_code == 403 and "spans every feature" in r.json()["error"]["message"]
        assert (await client.get("/metrics", headers=viewer_f)).status_code == 403
        g_call = await client.post("/v1/features/g", json=body, headers=bearer(k["app"]))
        f_call = await client.post("/v1/features/f", json=body, headers=bearer(k["app"]))
        assert keel.writer.flush()
        g_trace, f_trace = g_call.json()["trace_id"], f_call.json()["trace_id"]
        assert (await client.get(f"/api/events/{g_trace}", headers=viewer_f)).status_code == 403
        assert (await client.get(f"/api/events/{f_trace}", headers=viewer_f)).status_code == 200
        assert (await client.get(f"/api/events/{'0' * 32}", headers=viewer_f)).status_code == 404

        # an admin limited to a feature keeps its role on that feature only
        admin_f = bearer(k["admin_f"])
        assert (await client.get("/api/keys", headers=admin_f)).status_code == 403
        r = await client.put("/api/features/g/aliases/canary", json={"version": "v2"},
                             headers=admin_f)
        assert r.status_code == 403

        # the review queue: items of other features, and `next` without a feature
        for trace, feature in (("a" * 32, "f"), ("b" * 32, "g")):
            keel.writer.submit(ReviewRequest(trace, 1.0, feature, "v1", "deferred", 0.4,
                                             "low", {"text": "x"}, {"label": "a"}, []))
        assert keel.writer.flush()
        assert (await client.get(f"/api/reviews/{'b' * 32}", headers=reviewer_f)).status_code == 403
        assert (await client.get(f"/api/reviews/{'a' * 32}", headers=reviewer_f)).status_code == 200
        r = await client.post("/api/reviews/next", json={"reviewer": "ann"}, headers=reviewer_f)
        assert r.status_code == 200 and r.json()["feature"] == "f"
        r = await client.post("/api/reviews/next", json={"reviewer": "bob", "feature": "g"},
                              headers=reviewer_f)
        assert r.status_code == 403
        r = await client.post(f"/api/reviews/{'b' * 32}/verdict", headers=reviewer_f,
                              json={"reviewer": "ann", "verdict": "approve"})
        assert r.status_code == 403


async def test_keys_through_the_api_shown_once_and_revoked(tmp_path: Path) -> None:
    keel = make_keel(tmp_path)
    async with served(keel) as client:
        admin = bearer(keys.create(keel.store, "root", "admin", actor="test")[1])
        r = await client.post("/api/keys", json={"name": "ci", "role": "app", "features": ["f"]},
                              headers=admin)
        assert r.status_code == 201, r.text
        created = r.json()
        secret = created.pop("key")
        assert secret.startswith("keel_") and len(secret) >= 40
        assert created["prefix"] == secret[:9] and created["features"] == ["f"]
        assert created["created_by"] == "key:root"
        listed = (await client.get("/api/keys", headers=admin)).json()["keys"]
        assert {k["name"] for k in listed} == {"root", "ci"}
        assert secret not in str(listed) and "digest" not in listed[0]
        # the new key works at once (a miss re-reads the store), and is what events record
        await asyncio.sleep(0.55)
        r = await client.post("/v1/features/f", json={"input": {"text": "hi"}},
                              headers=bearer(secret))
        assert r.status_code == 200
        assert keel.writer.flush()
        assert keel.store.recent_events(1)[0]["key_id"] == created["id"]

        r = await client.post("/api/keys", json={"name": "ci", "role": "app"}, headers=admin)
        assert r.status_code == 409 and r.json()["error"]["code"] == "key_exists"
        r = await client.post("/api/keys", json={"name": "x", "role": "god"}, headers=admin)
        assert r.status_code == 400 and "admin, app, reviewer, viewer" in r.json()["error"]["message"]
        r = await client.post("/api/keys", json={"name": "x", "role": "app", "features": ["h"]},
                              headers=admin)
        assert r.status_code == 404 and r.json()["error"]["code"] == "feature_not_found"
        assert (await client.delete("/api/keys/nope", headers=admin)).status_code == 404

        r = await client.delete(f"/api/keys/{created['id']}", headers=admin)
        assert r.status_code == 200 and r.json()["revoked_by"] == "key:root"
        # this process drops it when its cache is ttl_s (2 s) old
        await asyncio.sleep(2.05)
        r = await client.post("/v1/features/f", json={"input": {"text": "hi"}},
                              headers=bearer(secret))
        assert r.status_code == 401
        actions = [(e.action, e.actor) for e in audit.entries(keel.store, target="key:")]
        assert ("key.create", "key:root") in actions and ("key.revoke", "key:root") in actions


async def test_control_changes_through_the_api_are_audited_with_the_key_name(tmp_path: Path) -> None:
    keel = make_keel(tmp_path)
    async with served(keel) as client:
        admin = bearer(keys.create(keel.store, "alice", "admin", actor="test")[1])
        r = await client.put("/api/features/f/aliases/canary", json={"version": "v2"},
                             headers=admin)
        assert r.status_code == 200
        latest = (await client.get("/api/audit?limit=1", headers=admin)).json()["entries"][0]
        assert (latest["actor"], latest["action"], latest["target"]) == (
            "key:alice", "alias.move", "f/canary")
        assert latest["details"]["to"] == "v2"
        r = await client.get("/api/audit/verify", headers=admin)
        assert r.json()["ok"] is True and r.json()["rows"] >= 5


async def test_env_keys_stay_admins_beside_stored_keys(tmp_path: Path) -> None:
    keel = make_keel(tmp_path, api_keys=frozenset({"sk-env"}))
    async with served(keel) as client:
        viewer = keys.create(keel.store, "v", "viewer", actor="test")[1]
        assert (await client.get("/api/keys", headers=bearer("sk-env"))).status_code == 200
        await asyncio.sleep(0.55)
        assert (await client.get("/api/events", headers=bearer(viewer))).status_code == 200
        assert (await client.get("/api/keys", headers=bearer(viewer))).status_code == 403


async def test_open_only_without_keys_and_on_loopback(tmp_path: Path) -> None:
    keel = make_keel(tmp_path)  # 127.0.0.1, no keys: anyone on this machine is admin
    async with served(keel) as client:
        assert (await client.get("/api/keys")).status_code == 200
        r = await client.put("/api/features/f/aliases/canary", json={"version": "v2"})
        assert r.status_code == 200 and r.json()["actor"] == "api:anonymous"
    exposed = make_keel(tmp_path / "b", host="0.0.0.0")
    async with served(exposed) as client:
        r = await client.get("/api/events")
        assert r.status_code == 401 and "keel keys create" in r.json()["error"]["message"]
        assert (await client.get("/healthz")).status_code == 200
    insecure = make_keel(tmp_path / "c", host="0.0.0.0", insecure_no_auth=True)
    async with served(insecure) as client:
        assert (await client.get("/api/events")).status_code == 200


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_the_key_cache_reads_the_store_only_when_stale_or_missing() -> None:
    stored: dict[str, Principal] = {"d1": Principal("d1", "one", "app")}
    reads = 0

    def load() -> dict[str, Principal]:
        nonlocal reads
        reads += 1
        return dict(stored)

    clock = Clock()
    cache = KeyCache(load, ["sk-env"], ttl_s=2.0, miss_s=0.5, clock=clock)
    assert (await cache.lookup("d1")) == stored["d1"] and reads == 1
    for _ in range(100):  # the hot path: no store read while fresh
        assert await cache.lookup("d1") is not None
    assert reads == 1
    stored["d2"] = Principal("d2", "two", "viewer")
    assert await cache.lookup("d2") is None and reads == 1  # a miss within miss_s
    clock.now += 0.6
    assert await cache.lookup("d2") is not None and reads == 2  # a miss re-reads
    assert await cache.lookup("nope") is None and reads == 2
    del stored["d1"]  # revoked elsewhere
    clock.now += 1.0
    assert await cache.lookup("d1") is not None  # still cached...
    clock.now += 1.0
    assert await cache.lookup("d1") is None and reads == 3  # ...until ttl_s has passed
    assert len(await cache.keys()) == 2  # d2 and the env key


async def test_the_key_cache_reads_once_for_many_waiting_requests() -> None:
    reads = 0

    def load() -> dict[str, Principal]:
        nonlocal reads
        reads += 1
        return {}

    cache = KeyCache(load, ttl_s=2.0)
    await asyncio.gather(*(cache.keys() for _ in range(50)))
    assert reads == 1


async def test_a_store_that_cannot_be_read_is_503_not_open(tmp_path: Path) -> None:
    def broken() -> dict[str, Principal]:
        raise OSError("database gone")

    cache = KeyCache(broken)
    with pytest.raises(Exception, match="cannot be read") as info:
        await cache.keys()
    assert getattr(info.value, "status", None) == 503
    env_only = KeyCache(broken, ["sk-env"])  # env keys still let their holders in
    assert len(await env_only.keys()) == 1


async def test_the_openai_sdk_sees_403_as_permission_denied(tmp_path: Path) -> None:
    import openai

    keel = make_keel(tmp_path)
    async with served(keel) as client:
        viewer = keys.create(keel.store, "v", "viewer", actor="test")[1]
        sdk = openai.AsyncOpenAI(base_url="http://keel/v1", api_key=viewer, max_retries=0,
                                 http_client=httpx.AsyncClient(transport=client._transport))
        with pytest.raises(openai.PermissionDeniedError, match="role app"):
            await sdk.chat.completions.create(model="f", messages=[{"role": "user", "content": "x"}])
