"""The cache in Redis, for real (``KEEL_TEST_REDIS_URL``, default 127.0.0.1:6379): two
Keel apps on one store and one Redis, as two processes would be, share exact and semantic
answers; a promotion made by one reaches the other through the control sync; entries
expire in Redis; a Redis that is down makes misses, never failed calls. Every test has
its own key prefix and deletes its keys."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from keel.control.registry import Registry
from keel.gateway import Keel
from keel.settings import Settings
from tests.backends import REDIS_URL
from tests.conftest import scripted, settings_in
from tests.server.test_cache_api import COST, NEAR, cached_feature, client_for, spec_of

redis = pytest.importorskip("redis")


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"keel-test:{uuid.uuid4().hex[:12]}:"
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:  # pragma: no cover - CI starts Redis
        pytest.fail(f"Redis is not reachable at {REDIS_URL}: {exc}")
    yield name
    for key in client.scan_iter(match=f"{name}*"):
        client.delete(key)
    client.close()


def shared(tmp_path: Path, prefix: str, url: str = REDIS_URL) -> Settings:
    return dataclasses.replace(settings_in(tmp_path), redis_url=url, cache_prefix=prefix)


@pytest.fixture
async def pair(tmp_path: Path, prefix: str) -> AsyncIterator[tuple[Keel, Keel]]:
    spec = spec_of(f=cached_feature({"exact": {"ttl_s": 60}}))
    settings = shared(tmp_path, prefix)
    async with Keel(spec, settings) as a, Keel(spec, settings) as b:
        yield a, b


async def status(keel: Keel, text: str, **kwargs: Any) -> str:
    outcome = await keel.call("f", {"text": text}, **kwargs)
    return str(outcome.cache)


async def test_two_processes_share_exact_answers(pair: tuple[Keel, Keel], prefix: str) -> None:
    a, b = pair
    assert await status(a, "my card is lost") == "miss"
    hit = await b.call("f", {"text": "  my card is   lost"})
    assert (hit.cache, hit.version, hit.saved_usd) == ("hit-exact", "v1", pytest.approx(COST))
    assert len(scripted(b, "p1").requests) == 0  # b never asked its model
    assert await status(b, "my card is lost", key="other-key") == "miss"  # another tenant
    client = redis.Redis.from_url(REDIS_URL)
    keys = {k.decode() for k in client.scan_iter(match=f"{prefix}*")}
    client.close()
    assert len(keys) == 2 and all(k.startswith(f"{prefix}x:f:") for k in keys)


async def test_a_promotion_reaches_every_process(pair: tuple[Keel, Keel]) -> None:
    a, b = pair
    await status(a, "hello")
    assert await status(b, "hello") == "hit-exact"
    # promoted from a third process (the CLI); each app sees it at its next sync
    await asyncio.to_thread(Registry(a.store).move_alias, "f", "champion", "v2", actor="cli:t",
                            force=True)
    assert a.sync is not None and b.sync is not None
    await a.sync.refresh()
    after = await a.call("f", {"text": "hello"})
    assert (after.cache, after.version) == ("miss", "v2")
    await b.sync.refresh()
    again = await b.call("f", {"text": "hello"})
    assert (again.cache, again.version) == ("hit-exact", "v2")  # a's answer, new generation
    await asyncio.to_thread(Registry(a.store).move_alias, "f", "champion", "v1", actor="cli:t",
                            force=True)
    await b.sync.refresh()
    assert await status(b, "hello") == "miss"  # v1's answer of before is not served again


async def test_entries_expire_in_redis(tmp_path: Path, prefix: str) -> None:
    spec = spec_of(f=cached_feature({"exact": {"ttl_s": 0.3}}))
    async with Keel(spec, shared(tmp_path, prefix)) as keel:
        await status(keel, "brief")
        assert await status(keel, "brief") == "hit-exact"
        await asyncio.sleep(0.4)
        assert await status(keel, "brief") == "miss"


async def test_a_redis_that_is_down_makes_misses(tmp_path: Path, prefix: str) -> None:
    spec = spec_of(f=cached_feature({"exact": {"ttl_s": 60}}))
    async with Keel(spec, shared(tmp_path, prefix, "redis://127.0.0.1:1/0")) as keel:
        for _ in range(2):
            outcome = await keel.call("f", {"text": "hi"})
            assert (outcome.decision, outcome.cache) == ("accepted", "miss")
        assert keel.cache is not None
        assert keel.cache.features["f"].counts["errors"] == 4  # two lookups, two saves


@pytest.mark.slow
async def test_two_processes_share_semantic_answers(tmp_path: Path, prefix: str) -> None:
    spec = spec_of(f=cached_feature({"semantic": {"threshold": 0.85, "ttl_s": 60}}))
    settings = shared(tmp_path, prefix)
    async with Keel(spec, settings) as a:
        assert await status(a, NEAR[0]) == "miss"
        async with Keel(spec, settings) as b:  # starts after: reads the log at start
            assert b.cache is not None
            await b.cache.ready()  # its index is built in the background
            assert await status(b, NEAR[1]) == "hit-semantic"
            assert await status(b, "What is the exchange rate for euros?") == "miss"
        # a sees what b saved, through the log, at its next lookup
        assert await status(a, "What is the exchange rate for euros??") == "hit-semantic"
        assert len(scripted(a, "p1").requests) == 1


@pytest.mark.slow
async def test_semantic_over_http_with_redis(tmp_path: Path, prefix: str) -> None:
    spec = spec_of(f=cached_feature({"semantic": {"threshold": 0.85}}))
    async with client_for(Keel(spec, shared(tmp_path, prefix))) as client:
        for text, expected in ((NEAR[0], "miss"), (NEAR[1], "hit-semantic")):
            r = await client.post("/v1/features/f", json={"input": {"text": text}})
            assert r.headers["x-keel-cache"] == expected
            if expected == "hit-semantic":
                assert r.json()["saved_usd"] == pytest.approx(COST)
