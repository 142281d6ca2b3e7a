"""The dashboard's stats API in-process (ASGI): shapes, defaults, filters and errors."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from keel.gateway import Keel
from keel.server import create_app
from keel.types import Decision, Event
from tests.conftest import basic_feature, settings_in, spec_with
from tests.store.fakes import event

DECISIONS = {d.value for d in Decision}
TOTAL_KEYS = {"calls", "errors", "client_errors", "validation_failures", "cost_usd",
              "cost_unknown", "input_tokens", "output_tokens", "decisions", "latency_ms"}
POINT_KEYS = {"t", "calls", "errors", "cost_usd", "input_tokens", "output_tokens", "decisions",
              "p50", "p95"}


def write(keel: Keel, events: list[Event]) -> None:
    conn = keel.store.connect()
    keel.store.write_events(conn, events)
    conn.close()


@pytest.fixture
async def keel(tmp_path: Path) -> AsyncIterator[Keel]:
    keel = Keel(spec_with(basic_feature()), settings_in(tmp_path))
    async with keel:
        yield keel


@pytest.fixture
async def client(keel: Keel) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(keel))
    async with httpx.AsyncClient(transport=transport, base_url="http://keel") as client:
        yield client


@pytest.fixture
def now() -> float:
    return time.time()


@pytest.fixture
def recent(keel: Keel, now: float) -> list[Event]:
    """Calls in the last 2 days: feature f (v1, v2), feature g (only in the data)."""
    events = [
        event("a", now - 60, latency_ms=100.0, cost_usd=0.5, user="u1", key="k1"),
        event("b", now - 120, latency_ms=200.0, cost_usd=0.25, user="u2", key="k1",
              version="v2", decision=Decision.REVIEW),
        event("c", now - 3 * 3600, latency_ms=300.0, cost_usd=None, user="u1", key="k2",
              decision=Decision.ERROR, error_code="all_targets_failed", version=None,
              routed="v1"),
        event("d", now - 30 * 3600, latency_ms=50.0, cost_usd=2.0, feature="g", user="u3"),
        event("e", now - 10 * 86400, cost_usd=100.0, user="u1"),  # outside 7 days
    ]
    write(keel, events)
    return events


async def test_overview_defaults_to_the_last_24_hours(client: httpx.AsyncClient,
                                                      recent: list[Event]) -> None:
    r = await client.get("/api/stats/overview")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"range", "totals", "series", "features"}
    assert body["range"]["bucket"] == "hour"
    assert body["range"]["until"] - body["range"]["since"] == pytest.approx(86400, abs=120)
    totals = body["totals"]
    assert set(totals) == TOTAL_KEYS
    assert totals["calls"] == 3 and totals["errors"] == 1 and totals["cost_unknown"] == 1
    assert totals["cost_usd"] == pytest.approx(0.75)
    assert set(totals["decisions"]) == DECISIONS
    assert totals["decisions"]["review"] == 1 and totals["decisions"]["accepted"] == 1
    assert set(totals["latency_ms"]) == {"p50", "p95", "p99", "mean"}
    assert 100 <= totals["latency_ms"]["p50"] <= 300 and totals["latency_ms"]["mean"] == 200.0
    assert len(body["series"]) in (24, 25)
    assert all(set(p) == POINT_KEYS for p in body["series"])
    assert sum(p["calls"] for p in body["series"]) == 3
    assert [f["name"] for f in body["features"]] == ["f"]
    assert set(body["features"][0]) == {"name", "calls", "errors", "cost_usd", "decisions",
                                        "p50", "p95"}


async def test_overview_range_and_bucket(client: httpx.AsyncClient, recent: list[Event],
                                         now: float) -> None:
    r = await client.get("/api/stats/overview",
                         params={"since": now - 2 * 86400, "until": now, "bucket": "day"})
    body = r.json()
    assert body["totals"]["calls"] == 4 and len(body["series"]) in (2, 3)
    assert all(p["t"] % 86400 == 0 for p in body["series"])
    assert [f["name"] for f in body["features"]] == ["f", "g"]
    r = await client.get("/api/stats/overview", params={"since": now - 600})
    assert r.json()["range"]["bucket"] == "minute" and r.json()["totals"]["calls"] == 2
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 2 * 86400))
    r = await client.get("/api/stats/overview", params={"since": iso})
    assert r.json()["totals"]["calls"] == 4


async def test_feature_page(client: httpx.AsyncClient, recent: list[Event]) -> None:
    r = await client.get("/api/stats/features/f")
    assert r.status_code == 200
    body = r.json()
    assert body["feature"] == "f" and body["range"]["bucket"] == "hour"  # 7 days
    assert body["totals"]["calls"] == 3 and [f["name"] for f in body["features"]] == ["f"]
    versions = {v["version"]: v for v in body["versions"]}
    assert set(versions) == {"v1", "v2"}
    v1 = versions["v1"]  # a and the error c (routed to v1, answered by none)
    assert set(v1) >= {"version", "calls", "decisions", "p50", "p95", "error_rate",
                       "validation_failure_rate", "review_rate", "cost_per_call"}
    assert v1["calls"] == 2 and v1["error_rate"] == 0.5 and v1["review_rate"] == 0
    assert v1["cost_per_call"] == 0.5  # the error's cost is unknown: one priced call
    assert versions["v2"]["review_rate"] == 1.0
    # a feature that is not in keel.yaml but has recorded calls is still known
    r = await client.get("/api/stats/features/g", params={"since": time.time() - 3 * 86400})
    assert r.status_code == 200 and r.json()["totals"]["calls"] == 1


async def test_unknown_feature_is_404(client: httpx.AsyncClient) -> None:
    for path, params in (("/api/stats/features/nope", {}),
                         ("/api/stats/costs", {"feature": "nope"})):
        r = await client.get(path, params=params)
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "feature_not_found"


async def test_costs_by_group(client: httpx.AsyncClient, recent: list[Event]) -> None:
    r = await client.get("/api/stats/costs", params={"group": "user"})
    assert r.status_code == 200
    body = r.json()
    assert body["group"] == "user"
    assert [(row["value"], row["cost_usd"]) for row in body["rows"]] == [
        ("u3", 2.0), ("u1", 0.5), ("u2", 0.25)]
    assert set(body["rows"][0]) == {"value", "calls", "input_tokens", "output_tokens",
                                    "cost_usd", "cost_unknown"}
    assert body["totals"]["calls"] == 4 and body["totals"]["cost_usd"] == 2.75
    keys = (await client.get("/api/stats/costs", params={"group": "key", "feature": "f"})).json()
    assert [(row["value"], row["calls"]) for row in keys["rows"]] == [("k1", 2), ("k2", 1)]
    versions = (await client.get("/api/stats/costs", params={"group": "version"})).json()
    assert {(row["feature"], row["value"]) for row in versions["rows"]} == {
        ("f", "v1"), ("f", "v2"), ("g", "v1")}
    days = (await client.get("/api/stats/costs", params={"group": "day", "limit": 1})).json()
    assert len(days["rows"]) == 1 and len(days["rows"][0]["value"]) == 10  # YYYY-MM-DD
    default = (await client.get("/api/stats/costs")).json()
    assert default["group"] == "feature" and default["rows"][0]["value"] == "g"
    month = (await client.get("/api/stats/costs",
                              params={"group": "user", "since": time.time() - 30 * 86400})).json()
    assert month["rows"][0] == {"value": "u1", "calls": 3, "input_tokens": 30,
                                "output_tokens": 6, "cost_usd": 100.5, "cost_unknown": 1}


@pytest.mark.parametrize(("path", "params", "param"), [
    ("/api/stats/overview", {"since": "yesterday"}, "since"),
    ("/api/stats/overview", {"until": "-5"}, "until"),
    ("/api/stats/overview", {"until": "1e19"}, "until"),
    ("/api/stats/overview", {"since": "2026-13-01"}, "since"),
    ("/api/stats/overview", {"since": "200", "until": "100"}, "since"),
    ("/api/stats/overview", {"bucket": "week"}, "bucket"),
    ("/api/stats/overview", {"bucket": "minute", "since": "0"}, "bucket"),
    ("/api/stats/features/f", {"until": "nan"}, "until"),
    ("/api/stats/costs", {"group": "team"}, "group"),
    ("/api/stats/costs", {"limit": "0"}, "limit"),
    ("/api/stats/costs", {"limit": "many"}, "limit"),
])
async def test_bad_parameters_are_400_with_the_parameter(client: httpx.AsyncClient, path: str,
                                                         params: dict[str, str], param: str) -> None:
    r = await client.get(path, params=params)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_request"
    assert r.json()["error"]["param"] == param


async def test_the_dashboard_reads_calls_made_through_keel(client: httpx.AsyncClient,
                                                           keel: Keel) -> None:
    for i in range(3):
        await keel.call("f", {"text": f"m{i}"}, user="ann")
    keel.writer.flush()
    body = (await client.get("/api/stats/overview", params={"since": time.time() - 600})).json()
    assert body["totals"]["calls"] == 3 and body["totals"]["input_tokens"] == 30
    users = (await client.get("/api/stats/costs", params={"group": "user"})).json()
    assert users["rows"][0]["value"] == "ann" and users["rows"][0]["calls"] == 3
