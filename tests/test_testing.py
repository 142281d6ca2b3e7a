"""keel.testing.FakeUpstream: the wire format, every failure mode, steering over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

import keel
from keel.testing import FakeUpstream, echo

EMPTY = {"model": "m", "messages": []}


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(reply="billing") as up:
        yield up


@pytest.fixture
def up(upstream: FakeUpstream) -> Iterator[FakeUpstream]:
    upstream.reset()
    upstream.reply = "billing"
    yield upstream


@pytest.fixture
def client(up: FakeUpstream) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=up.base_url, timeout=5) as c:
        yield c


def chat(client: httpx.Client, content: str = "hello there", **extra: Any) -> httpx.Response:
    body = {"model": "gpt-test", "messages": [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": content}], **extra}
    return client.post("/chat/completions", json=body)


def test_ok_has_the_chat_completion_shape(up: FakeUpstream, client: httpx.Client) -> None:
    r = chat(client)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    data = r.json()
    assert data["object"] == "chat.completion"
    assert data["id"].startswith("chatcmpl-")
    assert isinstance(data["created"], int)
    assert data["model"] == "gpt-test"
    (choice,) = data["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "billing"
    assert choice["finish_reason"] == "stop"
    assert choice["logprobs"] is None
    assert data["usage"] == {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5}
    assert up.requests == 1


def test_base_url_ends_in_v1(up: FakeUpstream) -> None:
    assert up.base_url == f"http://127.0.0.1:{up.port}/v1"


def test_echo_and_callable_replies(up: FakeUpstream, client: httpx.Client) -> None:
    up.reply = echo
    r = chat(client, "say this back")
    assert r.json()["choices"][0]["message"]["content"] == "say this back"
    up.reply = lambda body: f"{len(body['messages'])} messages"
    assert chat(client).json()["choices"][0]["message"]["content"] == "2 messages"


def test_logprobs_when_asked(up: FakeUpstream, client: httpx.Client) -> None:
    up.reply = "two words"
    lp = chat(client, logprobs=True).json()["choices"][0]["logprobs"]["content"]
    assert [t["token"] for t in lp] == ["two", "words"]
    assert all(t["logprob"] == up.token_logprob for t in lp)


def test_models(client: httpx.Client) -> None:
    data = client.get("/models").json()
    assert data["object"] == "list"
    assert data["data"][0]["id"] == "fake-model"
    assert data["data"][0]["object"] == "model"


def test_malformed_requests_are_refused_like_openai(client: httpx.Client) -> None:
    r = client.post("/chat/completions", content=b"{nope",
                    headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    r = client.post("/chat/completions", json={"model": "m"})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "messages"
    r = chat(client, stream=True)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "stream"


def test_error_mode(up: FakeUpstream, client: httpx.Client) -> None:
    up.set_mode("error")
    r = chat(client)
    assert r.status_code == 500
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert r.json()["error"]["type"] == "server_error"
    assert chat(client).status_code == 500  # no `times`: stays in the mode
    assert up.requests == 2


def test_invalid_json_mode(up: FakeUpstream, client: httpx.Client) -> None:
    up.set_mode("invalid_json")
    r = chat(client)
    assert r.status_code == 200
    with pytest.raises(ValueError):
        orjson.loads(r.content)


def test_rate_limit_mode(up: FakeUpstream, client: httpx.Client) -> None:
    up.set_mode("rate_limit", retry_after=2)
    r = chat(client)
    assert r.status_code == 429
    assert r.headers["retry-after"] == "2"
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    up.set_mode("rate_limit", retry_after=0.25)
    assert chat(client).headers["retry-after"] == "0.25"
    up.set_mode("rate_limit", retry_after="Wed, 21 Oct 2065 07:28:00 GMT")
    assert chat(client).headers["retry-after"] == "Wed, 21 Oct 2065 07:28:00 GMT"


def test_bad_request_mode(up: FakeUpstream, client: httpx.Client) -> None:
    up.set_mode("bad_request")
    r = chat(client)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_timeout_mode_hangs_past_the_client_timeout(up: FakeUpstream, client: httpx.Client) -> None:
    up.set_mode("timeout", hang_s=30)
    start = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        client.post("/chat/completions", json={"model": "m", "messages": []}, timeout=0.2)
    assert time.monotonic() - start < 2
    assert up.requests == 1


def test_timeout_mode_answers_after_hang_s(up: FakeUpstream, client: httpx.Client) -> None:
    up.set_mode("timeout", hang_s=0.1, times=1)
    start = time.monotonic()
    r = chat(client)
    assert r.status_code == 200
    assert time.monotonic() - start >= 0.1


def test_times_then_back_to_ok(up: FakeUpstream, client: httpx.Client) -> None:
    up.set_mode("error", times=2)
    assert [chat(client).status_code for _ in range(3)] == [500, 500, 200]
    assert up.mode == "ok"
    assert up.requests == 3


def test_set_mode_rejects_unknown_modes(up: FakeUpstream) -> None:
    with pytest.raises(ValueError, match="unknown fake mode"):
        up.set_mode("explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="times"):
        up.set_mode("error", times=0)


def test_steering_over_http(up: FakeUpstream) -> None:
    with httpx.Client(base_url=up.base_url.removesuffix("/v1"), timeout=5) as c:
        r = c.post("/_fake/mode", json={"mode": "rate_limit", "times": 1, "retry_after": 3})
        assert r.json() == {"requests": 0, "mode": "rate_limit", "times": 1}
        assert c.post("/v1/chat/completions", json=EMPTY).status_code == 429
        assert c.post("/v1/chat/completions", json=EMPTY).status_code == 200
        assert c.get("/_fake/stats").json() == {"requests": 2, "mode": "ok", "times": None}
        bad = c.post("/_fake/mode", json={"mode": "explode"})
        assert bad.status_code == 400
        assert "unknown fake mode" in bad.json()["error"]["message"]
        assert c.post("/_fake/mode", content=b"[").status_code == 400
        assert c.post("/_fake/reset").json()["requests"] == 0


def test_last_request_is_recorded(up: FakeUpstream, client: httpx.Client) -> None:
    root = up.base_url.removesuffix("/v1")
    assert up.last_request is None
    assert httpx.get(f"{root}/_fake/last_request").status_code == 404
    chat(client, "hi", temperature=0)
    client.post("/chat/completions", json={"model": "m", "messages": []},
                headers={"Authorization": "Bearer sk-test"})
    last = up.last_request
    assert last is not None
    assert last.method == "POST"
    assert last.path == "/v1/chat/completions"
    assert last.headers["authorization"] == "Bearer sk-test"
    assert last.body == {"model": "m", "messages": []}
    over_http = httpx.get(f"{root}/_fake/last_request").json()
    assert over_http == last.to_dict()


async def test_async_context_manager() -> None:
    async with FakeUpstream(reply="hi") as up, httpx.AsyncClient(base_url=up.base_url) as c:
        r = await c.post("/chat/completions", json={"model": "m", "messages": []})
        assert r.json()["choices"][0]["message"]["content"] == "hi"
    with pytest.raises(RuntimeError, match="not started"):
        _ = up.base_url


def test_runs_as_a_separate_process() -> None:
    with FakeUpstream() as probe:  # find a free port the same way the fake does
        port = probe.port
    # the child imports the same keel as this process, installed or not
    src = str(Path(keel.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "keel.testing", "--port", str(port), "--reply", "from a process"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=5) as c:
            deadline = time.monotonic() + 10
            while True:
                try:
                    c.get("/_fake/stats")
                    break
                except httpx.ConnectError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise
                    time.sleep(0.05)
            c.post("/_fake/mode", json={"mode": "error", "times": 1})
            assert c.post("/v1/chat/completions", json=EMPTY).status_code == 500
            r = c.post("/v1/chat/completions", json=EMPTY)
            assert r.json()["choices"][0]["message"]["content"] == "from a process"
            assert c.get("/_fake/stats").json()["requests"] == 2
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
