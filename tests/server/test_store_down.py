"""Calls go on while the store is down; /healthz and /metrics say so; the events reach
the store once it is back (docs/resilience.md)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import keel.gateway
from keel.gateway import Keel
from keel.server import create_app
from keel.settings import Settings
from keel.store import open_store
from keel.store.db import Store
from tests.conftest import basic_feature, settings_in, spec_with
from tests.store.flaky import FlakyStore


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def metrics(text: str) -> dict[str, float]:
    return {s.name: s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name.startswith(("keel_store", "keel_events", "keel_journal"))}


async def test_calls_go_on_while_the_store_is_down(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    stores: list[FlakyStore] = []

    def open_flaky(settings: Settings) -> Store:
        stores.append(FlakyStore(open_store(settings)))
        return stores[-1]  # type: ignore[return-value]

    monkeypatch.setattr(keel.gateway, "open_store", open_flaky)
    app_keel = Keel(spec_with(basic_feature()), settings_in(tmp_path))
    (store,) = stores
    async with app_keel:
        transport = httpx.ASGITransport(app=create_app(app_keel))
        async with httpx.AsyncClient(transport=transport, base_url="http://keel") as client:
            health = (await client.get("/healthz")).json()
            assert health["status"] == "ok" and health["store"]["up"] is True
            # one call while the store is up: the access layer has read the API keys
            assert (await client.post("/v1/features/f", json={"input": {"text": "hi"}})).status_code == 200
            assert app_keel.writer.flush()
            store.down = True
            for i in range(20):
                r = await client.post("/v1/features/f", json={"input": {"text": f"hi {i}"}})
                assert r.status_code == 200 and r.json()["decision"] == "accepted"
            await until(lambda: app_keel.writer.buffered == 20)
            health = (await client.get("/healthz")).json()
            assert health["status"] == "degraded"
            assert health["store"]["up"] is False and health["store"]["buffered"] == 20
            seen = metrics((await client.get("/metrics")).text)
            assert seen["keel_store_up"] == 0 and seen["keel_events_buffered"] == 20
            # reads of the store fail with a 503 the caller can act on, never a 500
            for path in ("/api/events?feature=f", "/api/stats/overview", "/api/reviews"):
                r = await client.get(path)
                assert r.status_code == 503, (path, r.text)
                assert r.json()["error"]["code"] == "store_unavailable"
                assert r.headers["retry-after"] == "5"
            assert seen["keel_events_dropped_total"] == 0
            store.down = False
            await until(lambda: app_keel.writer.link.up and app_keel.writer.buffered == 0)
            assert (await client.get("/healthz")).json()["status"] == "ok"
            assert app_keel.writer.flush()
            assert store.count_events() == 21
            seen = metrics((await client.get("/metrics")).text)
            assert seen["keel_store_up"] == 1 and seen["keel_events_buffered"] == 0


async def test_a_shutdown_while_the_store_is_down_spills_and_the_next_start_drains(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stores: list[FlakyStore] = []

    def open_flaky(settings: Settings) -> Store:
        stores.append(FlakyStore(open_store(settings)))
        return stores[-1]  # type: ignore[return-value]

    monkeypatch.setattr(keel.gateway, "open_store", open_flaky)
    settings = dataclasses.replace(settings_in(tmp_path), control_interval_s=0.05)
    first = Keel(spec_with(basic_feature()), settings)
    async with first:
        await until(lambda: first.sync is not None and first.sync.leader)
        stores[0].down = True
        for i in range(5):
            assert (await first.call("f", {"text": f"hi {i}"})).output == {"label": "a"}
    # closed cleanly although the store was down (the lease could not be released)
    assert first.writer.spilled == 5 and first.writer.dropped == 0
    spill_dir = settings.spill_directory
    assert [p.name.split("-")[0] for p in spill_dir.iterdir()] == ["spill"]  # no journal
    stores[0].down = False
    async with Keel(spec_with(basic_feature()), settings) as second:
        assert second.writer.flush()
        assert second.store.count_events() == 5
    assert list(spill_dir.iterdir()) == []
