"""The HTTP API in-process (ASGI), with scripted providers: shapes and every error path."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from keel.errors import ProviderBadResponse
from keel.gateway import Keel
from keel.server import create_app
from tests.conftest import scripted


@pytest.fixture
async def client(scripted_keel: Keel) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(scripted_keel)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://keel") as client:
        yield client


async def test_feature_call_returns_the_documented_fields(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/features/f", json={"input": {"text": "hi"}, "user": "u1"})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"trace_id", "feature", "version", "output", "decision", "confidence",
                         "reviewed", "review", "reason", "cost_usd", "usage", "timings_ms", "attempts",
                         "validations"}
    assert body["output"] == {"label": "a"} and body["decision"] == "accepted"
    assert r.headers["x-keel-trace-id"] == body["trace_id"]
    assert r.headers["x-keel-version"] == "v1" and r.headers["x-keel-cost-usd"] == "unknown"


@pytest.mark.parametrize(
    ("content", "headers", "status", "code"),
    [
        (b"", {}, 400, "empty_body"),
        (b"{oops", {}, 400, "invalid_json"),
        (b'{"input": {"text": "\xff"}}', {}, 400, "invalid_encoding"),
        (b"[]", {}, 400, "invalid_request"),
        (b'{"input": "text"}', {}, 400, "invalid_request"),
        (b'{"text": "forgot the envelope"}', {}, 400, "invalid_request"),
        (b'{"input": {"text": "x"}, "user": 5}', {}, 400, "invalid_request"),
        (b'{"input": {"text": 5}}', {}, 400, "input_schema_violation"),
        (b'{"input": {}}', {}, 400, "input_schema_violation"),
        (b'{"input": {"text": ""}}', {}, 400, "empty_text"),
        (b'{"input": {"text": "\\ud800"}}', {}, 400, "invalid_json"),
        (b"x" * (10 * 1024 * 1024), {}, 413, "body_too_large"),
    ],
)
async def test_bad_input_gets_a_4xx_with_a_code(client: httpx.AsyncClient, content: bytes,
                                                headers: dict[str, str], status: int, code: str) -> None:
    r = await client.post("/v1/features/f", content=content, headers=headers)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["message"]


async def test_unknown_feature_and_route(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/features/nope", json={"input": {"text": "x"}})
    assert r.status_code == 404 and r.json()["error"]["code"] == "feature_not_found"
    r = await client.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await client.get("/v1/features/f")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


async def test_all_targets_failing_is_a_502_with_trace_and_attempts(
        client: httpx.AsyncClient, scripted_keel: Keel) -> None:
    scripted(scripted_keel, "p1").script = [ProviderBadResponse("p1: broken")]
    scripted(scripted_keel, "p2").script = [ProviderBadResponse("p2: broken")]
    r = await client.post("/v1/features/f", json={"input": {"text": "x"}})
    assert r.status_code == 502
    body = r.json()
    assert body["error"]["code"] == "all_targets_failed" and len(body["attempts"]) == 2
    assert body["trace_id"] == r.headers["x-keel-trace-id"]


async def test_chat_completions_shape(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/chat/completions", json={
        "model": "f", "messages": [{"role": "system", "content": "be nice"},
                                   {"role": "user", "content": [{"type": "text", "text": "hi"}]}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "a"}
    assert body["usage"]["total_tokens"] == 12
    assert body["keel"]["decision"] == "accepted" and body["id"].endswith(body["keel"]["trace_id"])


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ({"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}, 404, "model_not_found"),
        ({"messages": [{"role": "user", "content": "x"}]}, 400, "invalid_request"),
        ({"model": "f", "messages": []}, 400, "invalid_request"),
        ({"model": "f", "messages": [{"role": "system", "content": "x"}]}, 400, "invalid_request"),
        ({"model": "f", "messages": [{"role": "user", "content": 5}]}, 400, "invalid_request"),
        ({"model": "f", "messages": ["x"]}, 400, "invalid_request"),
        ({"model": "f", "messages": [{"role": "user", "content": " "}]}, 400, "empty_text"),
        ({"model": "f", "stream": "yes", "messages": [{"role": "user", "content": "x"}]}, 400, "invalid_request"),
        ({"model": "f", "n": 2, "messages": [{"role": "user", "content": "x"}]}, 400, "invalid_request"),
    ],
)
async def test_chat_completions_errors(client: httpx.AsyncClient, payload: dict[str, object],
                                       status: int, code: str) -> None:
    r = await client.post("/v1/chat/completions", json=payload)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


async def test_models_and_features_listing(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/models")
    assert r.json() == {"object": "list", "data": [{"id": "f", "object": "model", "created": 0, "owned_by": "keel"}]}
    assert (await client.get("/v1/models/f")).json()["id"] == "f"
    assert (await client.get("/v1/models/zz")).status_code == 404
    features = (await client.get("/v1/features")).json()["features"]
    assert features[0]["aliases"] == {"champion": "v1"}
    assert (await client.get("/healthz")).json()["status"] == "ok"


async def test_openapi_document_lists_the_api(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert {"/v1/features/{name}", "/v1/chat/completions", "/v1/models"} <= set(paths)


async def test_circuit_state_is_visible(client: httpx.AsyncClient) -> None:
    await client.post("/v1/features/f", json={"input": {"text": "hi"}})
    circuits = (await client.get("/api/circuits")).json()["circuits"]
    assert {(c["provider"], c["model"], c["state"]) for c in circuits} >= {("p1", "m1", "closed")}
