"""The events explorer in-process (ASGI): filters, keyset pages, one event, errors."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from keel.gateway import Keel
from keel.server import create_app
from keel.store import explorer
from keel.types import Decision, Event
from tests.conftest import basic_feature, settings_in, spec_with
from tests.store.fakes import event

SUMMARY_KEYS = {"trace_id", "ts", "feature", "version", "routed", "decision", "confidence",
                "latency_ms", "input_tokens", "output_tokens", "cost_usd", "user", "key",
                "error_code"}


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
def stored(keel: Keel) -> list[Event]:
    now = time.time()
    events = [
        event("aa01", now - 10, user="u1", key="k1"),
        event("aa02", now - 20, user="u2", key="k1", decision=Decision.REVIEW, version="v2"),
        event("bb03", now - 30, user="u1", key="k2", decision=Decision.ERROR, version=None,
              routed="v2", error_code="all_targets_failed", cost_usd=None),
        event("bb04", now - 40, feature="g", user=None, key=None),
        event("cc05", now - 8 * 86400, user="u1"),  # older than the default week
    ]
    write(keel, events)
    return events


async def ids(client: httpx.AsyncClient, **params: Any) -> list[str]:
    r = await client.get("/api/events", params=params)
    assert r.status_code == 200, r.text
    return [e["trace_id"] for e in r.json()["events"]]


async def test_newest_first_with_summary_fields(client: httpx.AsyncClient,
                                                stored: list[Event]) -> None:
    r = await client.get("/api/events")
    body = r.json()
    assert set(body) == {"events", "next"} and body["next"] is None
    assert [e["trace_id"] for e in body["events"]] == ["aa01", "aa02", "bb03", "bb04"]
    first = body["events"][0]
    assert set(first) == SUMMARY_KEYS
    assert first["user"] == "u1" and first["key"] == "k1" and first["latency_ms"] == 10.0
    assert body["events"][2]["error_code"] == "all_targets_failed"
    assert body["events"][2]["cost_usd"] is None


async def test_filters(client: httpx.AsyncClient, stored: list[Event]) -> None:
    assert await ids(client, feature="g") == ["bb04"]
    assert await ids(client, decision="review") == ["aa02"]
    assert await ids(client, user="u1") == ["aa01", "bb03"]
    assert await ids(client, key="k1") == ["aa01", "aa02"]
    assert await ids(client, version="v2") == ["aa02", "bb03"]  # routed to v2
    assert await ids(client, feature="f", decision="error", user="u1") == ["bb03"]
    assert await ids(client, trace="aa") == ["aa01", "aa02"]
    assert await ids(client, trace="cc") == ["cc05"]  # a trace search has no time bound
    assert await ids(client, user="u1", since=0) == ["aa01", "bb03", "cc05"]
    assert await ids(client, until=time.time() - 25) == ["bb03", "bb04"]
    assert await ids(client, user="nobody") == []


async def test_pages_neither_skip_nor_repeat_among_equal_timestamps(
        client: httpx.AsyncClient, keel: Keel) -> None:
    now = time.time()
    same = [event(f"s{i:02d}", now - 5) for i in range(23)]  # one timestamp for 23 events
    others = [event(f"o{i:02d}", now - 5 + (i - 5) * 0.5) for i in range(10)]
    write(keel, same + others)
    want = [e.trace_id for e in sorted(same + others, key=lambda e: (e.ts, e.trace_id),
                                       reverse=True)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 4}
        if cursor:
            params["cursor"] = cursor
        if pages == 2:  # a new event arriving mid-way does not shift later pages
            write(keel, [event("new", time.time())])
        body = (await client.get("/api/events", params=params)).json()
        seen += [e["trace_id"] for e in body["events"]]
        pages += 1
        cursor = body["next"]
        if cursor is None:
            break
    assert seen == want
    assert pages == 9  # 33 events, 4 a page


async def test_one_event_in_full(client: httpx.AsyncClient, stored: list[Event]) -> None:
    r = await client.get("/api/events/aa02")
    assert r.status_code == 200
    body = r.json()
    assert body["trace_id"] == "aa02" and body["decision"] == "review"
    assert body["timings"] == {"invoke": 10.0, "total": 10.0}
    assert body["validations"][0]["validator"] == "allowed_labels"
    assert body["input"] == {"text": "aa02"} and body["output"] == {"label": "a"}
    assert body["attempts"] == [] and body["checks"] == []
    assert body["user"] == "u2" and body["key"] == "k1"
    r = await client.get("/api/events/nope")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "event_not_found"


@pytest.mark.parametrize(("params", "param"), [
    ({"cursor": "not-a-cursor"}, "cursor"),
    ({"cursor": explorer.encode_cursor(1.0, "x")[:-3] + "!!!"}, "cursor"),
    ({"decision": "maybe"}, "decision"),
    ({"limit": "0"}, "limit"),
    ({"limit": "501"}, "limit"),
    ({"since": "soon"}, "since"),
])
async def test_bad_parameters_are_400(client: httpx.AsyncClient, params: dict[str, str],
                                      param: str) -> None:
    r = await client.get("/api/events", params=params)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


async def test_unknown_feature_is_404(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/events", params={"feature": "nope"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "feature_not_found"


def test_cursor_round_trip() -> None:
    cursor = explorer.encode_cursor(1234.5678901234, "abc")
    assert explorer.decode_cursor(cursor) == (1234.5678901234, "abc")
    for bad in ("", "e30", explorer.encode_cursor(1.0, "x").replace("W", "V")):
        with pytest.raises(ValueError):
            explorer.decode_cursor(bad)
