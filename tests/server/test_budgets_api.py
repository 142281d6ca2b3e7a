"""Budgets and throttles through the HTTP API: 429s with a code and Retry-After before
any model is called, the refusal recorded, alerts stored and sent to a webhook, and
``GET /api/budgets``."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from keel.gateway import Keel
from keel.spec import parse_spec
from tests.conftest import basic_feature, scripted, settings_in
from tests.server.test_reviews_api import client_for

# $1000 per million input tokens: the scripted default answer (10 in, 2 out) costs $0.01
PRICED = {"price": {"input": 1000.0, "output": 0.0}}


def make_keel(tmp_path: Path, webhook: str | None = None, **extra: Any) -> Keel:
    feature = basic_feature()
    for version in feature["versions"].values():
        version.update(PRICED)
    spec = parse_spec({
        "providers": {"p1": {"type": "scripted"}, "p2": {"type": "scripted"}},
        "features": {"f": feature},
        "budgets": [{"name": "per-user", "scope": "user", "period": "day", "limit_usd": 0.025}],
        "alerts": {"webhook": webhook} if webhook else {},
        **extra,
    })
    return Keel(spec, dataclasses.replace(settings_in(tmp_path), control_interval_s=0))


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    got: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        got.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/hook", got
    await runner.cleanup()


async def call(client: httpx.AsyncClient, user: str) -> httpx.Response:
    return await client.post("/v1/features/f", json={"input": {"text": "hello"}, "user": user})


async def test_a_spent_budget_is_refused_before_the_model(
        tmp_path: Path, receiver: tuple[str, list[dict[str, Any]]]) -> None:
    url, got = receiver
    keel = make_keel(tmp_path, webhook=url)
    async with client_for(keel) as client:
        for _ in range(3):  # $0.01 each against $0.025: the third goes over by < one call
            assert (await call(client, "ann")).status_code == 200
        asked = len(scripted(keel, "p1").requests)
        refused = await call(client, "ann")
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert error["code"] == "budget_exceeded" and error["type"] == "insufficient_quota"
        assert "budget 'per-user' for user 'ann'" in error["message"]
        assert 1 <= int(refused.headers["retry-after"]) <= 86400
        assert len(scripted(keel, "p1").requests) == asked  # no model was called
        assert (await call(client, "bob")).status_code == 200  # bob has his own budget

        keel.writer.flush()
        refusals = [e for e in keel.store.recent_events(10) if e["error_code"] == "budget_exceeded"]
        assert len(refusals) == 1 and refusals[0]["decision"] == "refused"

        for _ in range(50):  # the alert task delivers in the background
            if len(got) >= 3:
                break
            await asyncio.sleep(0.05)
        assert [a["threshold"] for a in got] == [0.5, 0.8, 1.0]
        assert got[0]["budget"] == "per-user" and got[0]["value"] == "ann"

        body = (await client.get("/api/budgets")).json()
        rows = {r["match"]: r for r in body["budgets"]}
        assert rows["ann"]["state"] == "exceeded" and rows["ann"]["spent_usd"] == pytest.approx(0.03)
        assert rows["bob"]["state"] == "ok" and rows["bob"]["limit_usd"] == 0.025
        await asyncio.sleep(0.1)
        alerts = (await client.get("/api/budgets")).json()["alerts"]
        assert sorted(a["threshold"] for a in alerts) == [0.5, 0.8, 1.0]
        assert all(a["delivered"] is True for a in alerts)


async def test_spend_survives_a_restart(tmp_path: Path) -> None:
    async with client_for(make_keel(tmp_path)) as client:
        for _ in range(3):
            assert (await call(client, "ann")).status_code == 200
    async with client_for(make_keel(tmp_path)) as client:  # a new process, the same store
        assert (await call(client, "ann")).status_code == 429


async def test_throttles_answer_rate_limited(tmp_path: Path) -> None:
    keel = make_keel(tmp_path, throttles=[{"name": "rpm", "scope": "user",
                                           "requests_per_minute": 2}])
    async with client_for(keel) as client:
        assert (await call(client, "zed")).status_code == 200
        assert (await call(client, "zed")).status_code == 200
        r = await call(client, "zed")
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
        assert r.json()["error"]["type"] == "rate_limit_error"
        assert int(r.headers["retry-after"]) == 30


async def test_a_failing_webhook_never_fails_calls(tmp_path: Path) -> None:
    keel = make_keel(tmp_path, webhook="http://127.0.0.1:9/nothing-listens")
    async with client_for(keel) as client:
        for _ in range(3):
            assert (await call(client, "ann")).status_code == 200
        await asyncio.sleep(2.0)  # three tries with backoff
        alerts = (await client.get("/api/budgets")).json()["alerts"]
        assert alerts and all(a["delivered"] is False for a in alerts)


def test_budget_specs_are_checked() -> None:
    from keel.errors import ConfigError

    base = {"features": {"f": basic_feature()}, "providers": {"p1": {"type": "scripted"},
                                                              "p2": {"type": "scripted"}}}
    with pytest.raises(ConfigError, match="limit_usd"):
        parse_spec({**base, "budgets": [{"name": "b", "scope": "user", "limit_usd": 0}]})
    with pytest.raises(ConfigError, match="requests_per_minute and/or tokens_per_minute"):
        parse_spec({**base, "throttles": [{"name": "t", "scope": "user"}]})
    with pytest.raises(ConfigError, match="unique"):
        parse_spec({**base, "budgets": [{"name": "b", "scope": "user", "limit_usd": 1},
                                        {"name": "b", "scope": "key", "limit_usd": 1}]})
