"""The real server process, called with the official openai SDK and with httpx, in front
of fake upstreams that fail on command."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from keel.testing import FakeUpstream
from tests.backends import store_at
from tests.e2e.server import KeelProcess

CONFIG = """
providers:
  primary: {{type: openai, base_url: "{primary}", api_key: "${{PRIMARY_KEY}}", timeout_s: 1}}
  backup: {{type: openai, base_url: "{backup}", timeout_s: 5}}
features:
  triage:
    output: {{kind: label, labels: [billing, shipping, other]}}
    versions:
      gpt: {{provider: primary, model: fake-model, price: {{input: 1.0, output: 4.0}}}}
      backup: {{provider: backup, model: fake-model}}
    aliases: {{champion: gpt}}
    fallbacks: [backup]
    retry: {{max_retries: 1, backoff_s: 0.01, max_backoff_s: 0.05}}
    validators:
      - {{type: allowed_labels, on_fail: refuse}}
    safe_default: {{label: other}}
"""


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[FakeUpstream, FakeUpstream]]:
    with FakeUpstream(reply="billing") as primary, FakeUpstream(reply="shipping") as backup:
        yield primary, backup


@pytest.fixture(scope="module")
def server(upstreams: tuple[FakeUpstream, FakeUpstream], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[KeelProcess]:
    primary, backup = upstreams
    tmp = tmp_path_factory.mktemp("serve")
    config = tmp / "keel.yaml"
    config.write_text(CONFIG.format(primary=primary.base_url, backup=backup.base_url))
    with KeelProcess(config, tmp / "keel.db", env={"PRIMARY_KEY": "sk-primary"}) as proc:
        yield proc


@pytest.fixture(autouse=True)
def reset(upstreams: tuple[FakeUpstream, FakeUpstream]) -> None:
    for upstream in upstreams:
        upstream.reset()


def events(server: KeelProcess, trace_id: str) -> list[Any]:
    """The event of one call; the writer is asynchronous, so poll briefly."""
    assert server.database is not None
    for _ in range(100):
        with store_at(server.database).connection() as conn:
            rows = conn.execute("SELECT * FROM events WHERE trace_id = ?", (trace_id,)).fetchall()
        if rows:
            return rows
        asyncio.run(asyncio.sleep(0.05))
    return []


def test_official_openai_sdk_works_unchanged(server: KeelProcess,
                                              upstreams: tuple[FakeUpstream, FakeUpstream]) -> None:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
    completion = client.chat.completions.create(
        model="triage", messages=[{"role": "user", "content": "I was charged twice"}])
    assert completion.choices[0].message.content == "billing"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    extra = completion.model_extra or {}
    assert extra["keel"]["decision"] == "accepted" and extra["keel"]["version"] == "gpt"
    assert extra["keel"]["cost_usd"] > 0
    assert [m.id for m in client.models.list().data] == ["triage"]
    # the key came from the environment and went to the upstream, not to the client
    last = upstreams[0].last_request
    assert last is not None and last.headers["authorization"] == "Bearer sk-primary"


def test_openai_sdk_raises_its_own_error_types(server: KeelProcess) -> None:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="triage", messages=[{"role": "user", "content": ""}])


def test_feature_api_over_httpx(server: KeelProcess) -> None:
    r = httpx.post(f"{server.base_url}/v1/features/triage", json={"input": {"text": "where is my parcel"}})
    assert r.status_code == 200
    body = r.json()
    assert body["output"] == {"label": "billing"} and body["decision"] == "accepted"
    assert body["timings_ms"]["total"] > 0 and body["cost_usd"] > 0
    (event,) = events(server, body["trace_id"])
    assert event["decision"] == "accepted" and event["version"] == "gpt"


@pytest.mark.parametrize(
    ("mode", "code"),
    [("timeout", "provider_timeout"), ("error", "provider_unavailable"),
     ("invalid_json", "provider_bad_response")],
)
def test_failing_primary_falls_back_and_the_event_lists_every_attempt(
        server: KeelProcess, upstreams: tuple[FakeUpstream, FakeUpstream], mode: str, code: str) -> None:
    primary, backup = upstreams
    primary.set_mode(mode, hang_s=10)  # type: ignore[arg-type]
    r = httpx.post(f"{server.base_url}/v1/features/triage", json={"input": {"text": "x"}}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["decision"] == "fallback" and body["version"] == "backup"
    assert body["output"] == {"label": "shipping"}
    retried = mode != "invalid_json"  # a malformed body is not retried; the next target is tried
    expected = [("gpt", False, code)] * (2 if retried else 1) + [("backup", True, None)]
    assert [(a["version"], a["ok"], a["error_code"]) for a in body["attempts"]] == expected
    (event,) = events(server, body["trace_id"])
    assert event["decision"] == "fallback"
    assert f'"error_code":"{code}"' in event["attempts"]
    assert backup.requests == 1


def test_all_targets_down_is_a_502_not_a_500(server: KeelProcess,
                                             upstreams: tuple[FakeUpstream, FakeUpstream]) -> None:
    for upstream in upstreams:
        upstream.set_mode("error")
    r = httpx.post(f"{server.base_url}/v1/features/triage", json={"input": {"text": "x"}})
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "all_targets_failed"
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="triage", messages=[{"role": "user", "content": "x"}])


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b"", 400, "empty_body"),
        (b"{bad json", 400, "invalid_json"),
        (b'{"input": {"text": "caf\xe9"}}', 400, "invalid_encoding"),
        (b'{"input": {"text": ["not", "a", "string"]}}', 400, "input_schema_violation"),
        (b"{" + b" " * (10 * 1024 * 1024) + b"}", 413, "body_too_large"),
    ],
)
def test_bad_input_over_the_wire(server: KeelProcess, content: bytes, status: int, code: str) -> None:
    r = httpx.post(f"{server.base_url}/v1/features/triage", content=content,
                   headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == status
    assert r.json()["error"]["code"] == code
    r = httpx.post(f"{server.base_url}/v1/features/unknown", json={"input": {"text": "x"}})
    assert r.status_code == 404 and r.json()["error"]["code"] == "feature_not_found"


def test_concurrent_calls_all_recorded_after_sigterm(
        upstreams: tuple[FakeUpstream, FakeUpstream], tmp_path: Path) -> None:
    primary, backup = upstreams
    config = tmp_path / "keel.yaml"
    config.write_text(CONFIG.format(primary=primary.base_url, backup=backup.base_url))
    n = 300
    proc = KeelProcess(config, tmp_path / "keel.db", env={"PRIMARY_KEY": "k"}).start()

    async def blast() -> list[int]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=proc.base_url, limits=limits, timeout=30) as client:
            responses = await asyncio.gather(*(
                client.post("/v1/features/triage", json={"input": {"text": f"msg {i}"}})
                for i in range(n)))
        return [r.status_code for r in responses]

    statuses = asyncio.run(blast())
    assert statuses == [200] * n
    # SIGTERM: uvicorn finishes in-flight requests, the lifespan drains the writer, then
    # uvicorn re-raises the signal (exit status -15) as a supervisor expects
    assert proc.stop() in (0, -15)
    assert b"Traceback" not in proc.output
    with store_at(tmp_path / "keel.db").connection() as conn:
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == n
        assert conn.execute("SELECT COUNT(DISTINCT trace_id) FROM events").fetchone()[0] == n


def test_sigterm_mid_load_keeps_the_event_of_every_answered_call(
        upstreams: tuple[FakeUpstream, FakeUpstream], tmp_path: Path) -> None:
    primary, backup = upstreams
    primary.set_mode("timeout", hang_s=0.4)  # every call is in flight for 0.4 s
    config = tmp_path / "keel.yaml"
    config.write_text(CONFIG.format(primary=primary.base_url, backup=backup.base_url))
    proc = KeelProcess(config, tmp_path / "keel.db", env={"PRIMARY_KEY": "k"}).start()

    async def blast() -> list[httpx.Response | BaseException]:
        async with httpx.AsyncClient(base_url=proc.base_url, timeout=30,
                                     limits=httpx.Limits(max_connections=100)) as client:
            calls = [asyncio.ensure_future(client.post("/v1/features/triage",
                                                       json={"input": {"text": f"m{i}"}}))
                     for i in range(100)]
            deadline = time.monotonic() + 10  # until calls are in flight (a busy machine)
            while primary.requests < 10 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            await asyncio.to_thread(proc.stop)
            return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(blast())
    answered = [r.json()["trace_id"] for r in results
                if isinstance(r, httpx.Response) and r.status_code == 200]
    assert answered, "no call was in flight at SIGTERM"
    with store_at(tmp_path / "keel.db").connection() as conn:
        stored = {row[0] for row in conn.execute("SELECT trace_id FROM events")}
    assert set(answered) <= stored


def test_the_embedded_default_serves_intent_offline(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    with KeelProcess(repo / "keel.yaml", tmp_path / "keel.db") as proc:
        r = httpx.post(f"{proc.base_url}/v1/features/intent",
                       json={"input": {"text": "my card still has not arrived"}})
        assert r.status_code == 200
        body = r.json()
        assert body["output"] == {"label": "card_arrival"}
        assert body["version"] == "zero-shot-1" and body["cost_usd"] == 0.0
        assert 0 < body["confidence"] <= 1 and body["decision"] in {"accepted", "review"}
        client = openai.OpenAI(base_url=f"{proc.base_url}/v1", api_key="unused", max_retries=0)
        reply = client.chat.completions.create(
            model="intent", messages=[{"role": "user", "content": "I want a refund for this purchase"}])
        assert reply.choices[0].message.content == "request_refund"
