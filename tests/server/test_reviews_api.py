"""The review API in-process (ASGI): every endpoint, its shapes and its error paths."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from keel.gateway import Keel
from keel.server import create_app
from keel.types import Completion
from tests.conftest import basic_feature, scripted, settings_in, spec_with

ITEM_KEYS = {"trace_id", "feature", "version", "created_at", "mode", "status", "confidence",
             "reason", "input", "output", "validations", "overlap", "votes", "assigned_to", "final"}


def make_keel(tmp_path: Path, **review: Any) -> Keel:
    return Keel(spec_with(basic_feature(review=review)), settings_in(tmp_path))


@asynccontextmanager
async def client_for(keel: Keel) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(keel)
    transport = httpx.ASGITransport(app=app)
    async with keel, httpx.AsyncClient(transport=transport, base_url="http://keel") as client:
        yield client


@pytest.fixture
def keel(tmp_path: Path) -> Keel:
    return make_keel(tmp_path)


@pytest.fixture
async def client(keel: Keel) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(keel) as client:
        yield client


async def queue_items(keel: Keel, *confidences: float) -> list[str]:
    """Calls that low confidence sends to review (deferred: answered at once)."""
    p1 = scripted(keel, "p1")
    p1.script = [Completion(output={"label": "b"}, confidence=c) for c in confidences]
    ids = []
    for i, _ in enumerate(confidences):
        ids.append((await keel.call("f", {"text": f"m{i}"})).trace_id)
    keel.writer.flush()
    return ids


async def test_list_get_and_stats(client: httpx.AsyncClient, keel: Keel) -> None:
    low, high = await queue_items(keel, 0.2, 0.4)
    r = await client.get("/api/reviews")
    assert r.status_code == 200
    body = r.json()
    assert body["total"] == 2 and body["limit"] == 50 and body["offset"] == 0
    assert [i["trace_id"] for i in body["items"]] == [low, high]
    item = body["items"][0]
    assert set(item) == ITEM_KEYS
    assert item["status"] == "pending" and item["final"] is None and item["votes"] == []
    assert item["input"] == {"text": "m0"} and item["output"] == {"label": "b"}
    assert item["validations"][0]["validator"] == "allowed_labels"
    r = await client.get("/api/reviews", params={"order": "oldest", "limit": 1, "offset": 1,
                                                 "feature": "f", "status": "all"})
    assert [i["trace_id"] for i in r.json()["items"]] == [high]
    assert (await client.get(f"/api/reviews/{low}")).json()["trace_id"] == low
    stats = (await client.get("/api/reviews/stats")).json()["features"]
    assert stats[0]["feature"] == "f" and stats[0]["pending"] == 2
    assert (await client.get("/api/reviews/stats", params={"feature": "f"})).json() == {"features": stats}


async def test_next_then_verdict_closes_and_lists_as_done(client: httpx.AsyncClient,
                                                          keel: Keel) -> None:
    (trace_id,) = await queue_items(keel, 0.3)
    r = await client.post("/api/reviews/next", json={"reviewer": "ann", "feature": "f"})
    assert r.status_code == 200 and r.json()["trace_id"] == trace_id
    assert r.json()["assigned_to"] == "ann"
    assert (await client.post("/api/reviews/next", json={"reviewer": "bob"})).status_code == 204
    r = await client.post(f"/api/reviews/{trace_id}/verdict",
                          json={"reviewer": "ann", "verdict": "edit", "output": {"label": "a"},
                                "reason": "it is about a"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "done" and body["final"]["verdict"] == "edit"
    assert body["final"]["output"] == {"label": "a"} and body["final"]["decided_at"] > 0
    assert body["votes"][0] | {"at": 0} == {"reviewer": "ann", "verdict": "edit",
                                            "output": {"label": "a"}, "reason": "it is about a",
                                            "at": 0}
    done = (await client.get("/api/reviews", params={"status": "done"})).json()
    assert done["total"] == 1
    r = await client.post("/api/reviews/next", json={"reviewer": "ann", "order": "oldest"})
    assert r.status_code == 204 and r.content == b""


async def test_a_held_call_returns_the_verdict_given_over_http(tmp_path: Path) -> None:
    keel = make_keel(tmp_path, mode="held", hold_timeout_s=20)
    async with client_for(keel) as client:
        await held_call(keel, client)


async def held_call(keel: Keel, client: httpx.AsyncClient) -> None:
    scripted(keel, "p1").script = [Completion(output={"label": "b"}, confidence=0.3)]
    call = asyncio.create_task(client.post("/v1/features/f", json={"input": {"text": "held"}}))
    r = None
    for _ in range(300):
        await asyncio.sleep(0.01)
        r = await client.post("/api/reviews/next", json={"reviewer": "ann"})
        if r.status_code == 200:
            break
    assert r is not None and r.status_code == 200 and not call.done()
    trace_id = r.json()["trace_id"]
    v = await client.post(f"/api/reviews/{trace_id}/verdict",
                          json={"reviewer": "ann", "verdict": "approve"})
    assert v.status_code == 200
    answer = (await asyncio.wait_for(call, 5)).json()
    assert answer["review"] == "approved" and answer["reviewed"] is True
    assert answer["output"] == {"label": "b"} and answer["trace_id"] == trace_id


@pytest.mark.parametrize(("params", "param"), [
    ({"status": "open"}, "status"),
    ({"order": "random"}, "order"),
    ({"limit": "0"}, "limit"),
    ({"limit": "501"}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"offset": "-1"}, "offset"),
    ({"offset": str(10**24)}, "offset"),  # beyond the store's 64-bit integers: was a 500
])
async def test_list_rejects_bad_query_parameters(client: httpx.AsyncClient,
                                                 params: dict[str, str], param: str) -> None:
    r = await client.get("/api/reviews", params=params)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "invalid_request" and error["param"] == param and error["message"]


async def test_unknown_feature_and_item_are_404(client: httpx.AsyncClient) -> None:
    for r in (await client.get("/api/reviews", params={"feature": "nope"}),
              await client.get("/api/reviews/stats", params={"feature": "nope"}),
              await client.post("/api/reviews/next", json={"reviewer": "a", "feature": "nope"})):
        assert r.status_code == 404 and r.json()["error"]["code"] == "feature_not_found"
    for r in (await client.get("/api/reviews/0123abcd"),
              await client.post("/api/reviews/0123abcd/verdict",
                                json={"reviewer": "a", "verdict": "approve"})):
        assert r.status_code == 404
        assert r.json()["error"] == {"code": "review_not_found", "type": "not_found_error",
                                     "param": "trace_id",
                                     "message": "no review item with trace id '0123abcd'"}


@pytest.mark.parametrize(("content", "status", "code", "param"), [
    (b"", 400, "empty_body", None),
    (b"{oops", 400, "invalid_json", None),
    (b'{"reviewer": "\xff"}', 400, "invalid_encoding", None),
    (b"[]", 400, "invalid_request", None),
    (b"{}", 400, "invalid_request", "reviewer"),
    (b'{"reviewer": 7}', 400, "invalid_request", "reviewer"),
    (b'{"reviewer": ""}', 400, "invalid_request", "reviewer"),
    (b'{"reviewer": "a", "feature": 3}', 400, "invalid_request", "feature"),
    (b'{"reviewer": "a", "order": "random"}', 400, "invalid_request", "order"),
    (b'{"reviewer": "a", "colour": "red"}', 400, "invalid_request", "colour"),
    (b'{"reviewer": "' + b"x" * (2 << 20) + b'"}', 413, "body_too_large", None),
])
async def test_next_rejects_bad_bodies(client: httpx.AsyncClient, content: bytes, status: int,
                                       code: str, param: str | None) -> None:
    r = await client.post("/api/reviews/next", content=content)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["message"] and error["param"] == param


@pytest.mark.parametrize(("body", "param"), [
    ({"verdict": "approve"}, "reviewer"),
    ({"reviewer": "a" * 101, "verdict": "approve"}, "reviewer"),
    ({"reviewer": "a"}, "verdict"),
    ({"reviewer": "a", "verdict": 1}, "verdict"),
    ({"reviewer": "a", "verdict": "meh"}, "verdict"),
    ({"reviewer": "a", "verdict": "edit"}, "output"),
    ({"reviewer": "a", "verdict": "edit", "output": {"label": "zzz"}}, "output"),
    ({"reviewer": "a", "verdict": "edit", "output": 5}, "output"),
    ({"reviewer": "a", "verdict": "approve", "output": {"label": "a"}}, "output"),
    ({"reviewer": "a", "verdict": "reject"}, "reason"),
    ({"reviewer": "a", "verdict": "reject", "reason": 5}, "reason"),
    ({"reviewer": "a", "verdict": "approve", "extra": 1}, "extra"),
])
async def test_verdict_rejects_bad_payloads(client: httpx.AsyncClient, keel: Keel,
                                            body: dict[str, Any], param: str) -> None:
    (trace_id,) = await queue_items(keel, 0.3)
    r = await client.post(f"/api/reviews/{trace_id}/verdict", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_request" and error["param"] == param and error["message"]


@pytest.mark.parametrize(("content", "code"), [
    (b"", "empty_body"), (b"{oops", "invalid_json"), (b'"approve"', "invalid_request")])
async def test_verdict_rejects_unreadable_bodies(client: httpx.AsyncClient, keel: Keel,
                                                 content: bytes, code: str) -> None:
    (trace_id,) = await queue_items(keel, 0.3)
    r = await client.post(f"/api/reviews/{trace_id}/verdict", content=content)
    assert r.status_code == 400 and r.json()["error"]["code"] == code


async def test_closed_and_duplicate_verdicts_are_409(tmp_path: Path) -> None:
    keel = make_keel(tmp_path, overlap=2)
    async with client_for(keel) as client:
        await closed_and_duplicate(keel, client)


async def closed_and_duplicate(keel: Keel, client: httpx.AsyncClient) -> None:
    (trace_id,) = await queue_items(keel, 0.3)
    url = f"/api/reviews/{trace_id}/verdict"
    assert (await client.post(url, json={"reviewer": "ann", "verdict": "approve"})).status_code == 200
    r = await client.post(url, json={"reviewer": "ann", "verdict": "approve"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "review_duplicate"
    r = await client.post(url, json={"reviewer": "bob", "verdict": "reject", "reason": "no"})
    assert r.status_code == 200 and r.json()["final"]["verdict"] == "reject"  # 1-1 tie
    r = await client.post(url, json={"reviewer": "cy", "verdict": "approve"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "review_closed"


async def test_wrong_methods_are_405_not_500(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/reviews/stats", json={})
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    r = await client.get("/api/reviews/abc/verdict")
    assert r.status_code == 405


async def test_the_openapi_document_lists_the_review_api(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert {"/api/reviews", "/api/reviews/stats", "/api/reviews/next", "/api/reviews/{trace_id}",
            "/api/reviews/{trace_id}/verdict"} <= set(paths)
