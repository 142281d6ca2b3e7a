"""Every role against representative endpoints of every kind: what it may do passes the
gate (whatever the handler then answers), the rest is 403 ``permission_denied`` naming
the role needed. One Keel for the module (its own event loop)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from keel.control.keys import Role
from tests.server.access_kit import ROLES, bearer, create_keys, make_keel, served

pytestmark = pytest.mark.asyncio(loop_scope="module")

A, R, V = "app", "reviewer", "viewer"
CHAT = {"model": "f", "messages": [{"role": "user", "content": "hi"}]}
# (method, path, body, the roles besides admin that may)
ENDPOINTS: list[tuple[str, str, Any, set[str]]] = [
    ("POST", "/v1/features/f", {"input": {"text": "hi"}}, {A}),
    ("POST", "/v1/chat/completions", CHAT, {A}),
    ("POST", "/api/feedback", {"trace_id": "0" * 32, "kind": "thumbs", "value": "up"}, {A}),
    ("GET", "/v1/models", None, {A, R, V}),
    ("GET", "/v1/features", None, {A, R, V}),
    ("GET", "/api/reviews", None, {R}),
    ("GET", "/api/reviews/stats", None, {R, V}),
    ("POST", "/api/reviews/next", {"reviewer": "ann"}, {R}),
    ("POST", f"/api/reviews/{'0' * 32}/verdict", {"reviewer": "ann", "verdict": "approve"},
     {R}),
    ("GET", "/api/stats/overview", None, {V}),
    ("GET", "/api/stats/features/f", None, {V}),
    ("GET", "/api/events", None, {V}),
    ("GET", "/api/features/f/versions", None, {V}),
    ("GET", "/api/features/f/rollout", None, {V}),
    ("GET", "/api/datasets", None, {V}),
    ("GET", "/api/drift/f", None, {V}),
    ("GET", "/api/slo", None, {V}),
    ("GET", "/api/budgets", None, {V}),
    ("GET", "/metrics", None, {V}),
    ("PUT", "/api/features/f/aliases/canary", {"version": "v2"}, set()),
    ("POST", "/api/features/f/rollout/pause", {}, set()),
    ("POST", "/api/features/f/versions", {"name": "v9", "spec": {"provider": "p2", "model": "m"}},
     set()),
    ("GET", "/api/keys", None, set()),
    ("DELETE", "/api/keys/nope", None, set()),
    ("GET", "/api/audit", None, set()),
    ("GET", "/api/audit/verify", None, set()),
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory
                ) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    keel = make_keel(tmp_path_factory.mktemp("access"))
    async with served(keel) as client:
        yield client, create_keys(keel.store)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("method", "path", "body", "allowed"), ENDPOINTS,
                         ids=[f"{m} {p}" for m, p, _, _ in ENDPOINTS])
async def test_each_role_gets_only_what_it_may(world: tuple[httpx.AsyncClient, dict[str, str]],
                                               role: Role, method: str, path: str, body: Any,
                                               allowed: set[str]) -> None:
    client, keys = world
    r = await client.request(method, path, json=body, headers=bearer(keys[role]))
    if role == "admin" or role in allowed:
        assert r.status_code not in (401, 403), (r.status_code, r.text)
        return
    assert r.status_code == 403, r.text
    error = r.json()["error"]
    assert error["code"] == "permission_denied" and error["type"] == "permission_error"
    needed = "an admin key" if not allowed else f"a key with role {' or '.join(sorted(allowed))}"
    if len(allowed) == 3:
        needed = "a key with role app, reviewer or viewer"
    assert needed in error["message"] and f"has role {role}" in error["message"], error


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_no_key_and_a_wrong_key_are_401_everywhere_but_public_pages(
        world: tuple[httpx.AsyncClient, dict[str, str]], method: str) -> None:
    client, _ = world
    for m, path, body, _ in ENDPOINTS:
        if m != method:
            continue
        for headers in ({}, bearer("keel_not-a-key")):
            r = await client.request(m, path, json=body, headers=headers)
            assert r.status_code == 401, (path, r.text)
            assert r.json()["error"]["code"] == "invalid_api_key"
    if method == "GET":
        for public in ("/healthz", "/review", "/dashboard", "/static/api.js", "/openapi.json"):
            assert (await client.get(public)).status_code == 200, public
