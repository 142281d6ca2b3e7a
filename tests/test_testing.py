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
import openai
import orjson
import pytest

import keel
from keel.testing import FakeUpstream, echo
from keel.testing.fake_openai import closed_base_url, fake_embedding

EMPTY = {"model": "m", "messages": []}


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(reply="billing") as up:
        yield up


@pytest.fixture
def up(upstream: FakeUpstream) -> Iterator[FakeUpstream]:
    upstream.reset()
    upstream.reply = "billing"
    upstream.reply_tool_call = None
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
    r = client.post("/embeddings", json={"model": "m", "input": []})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "input"


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
    with pytest.raises(ValueError, match="refuse_s"):
        up.set_mode("refuse", times=1)
    with pytest.raises(ValueError, match="after_chunks"):
        up.set_mode("cut_stream", after_chunks=-1)
    with pytest.raises(ValueError, match="refuse_s"):
        up.set_mode("refuse", refuse_s=-1)
    assert up.mode == "ok"


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
        typo = c.post("/_fake/mode", json={"mode": "delay", "delay": 1})
        assert typo.status_code == 400 and "unknown keys ['delay']" in typo.text
        r = c.post("/_fake/mode", json={"mode": "cut_stream", "after_chunks": 1, "times": 2})
        assert r.json() == {"requests": 2, "mode": "cut_stream", "times": 2}
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
            # refuse over HTTP: the process stops listening for refuse_s, then comes back
            c.post("/_fake/mode", json={"mode": "refuse", "refuse_s": 0.3})
            with pytest.raises(httpx.ConnectError):
                c.get("/_fake/stats")
            time.sleep(0.45)
            assert c.get("/_fake/stats").json()["mode"] == "ok"
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


# --- usage details ---------------------------------------------------------------------------


def test_usage_details_when_configured(up: FakeUpstream, client: httpx.Client) -> None:
    up.cached_tokens, up.reasoning_tokens = 3, 2
    try:
        usage = chat(client).json()["usage"]
    finally:
        up.cached_tokens = up.reasoning_tokens = 0
    assert usage["prompt_tokens_details"]["cached_tokens"] == 3
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 2


# --- streaming: the wire format --------------------------------------------------------------


def sse(client: httpx.Client, **extra: Any) -> tuple[httpx.Response, list[Any]]:
    """POST a stream request; the response and its events (dicts, and "[DONE]")."""
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}],
            "stream": True, **extra}
    r = client.post("/chat/completions", json=body)
    raw = r.text
    assert raw.endswith("\n\n")
    events: list[Any] = []
    for block in raw.split("\n\n")[:-1]:
        assert block.startswith("data: ") and "\n" not in block
        data = block.removeprefix("data: ")
        events.append(data if data == "[DONE]" else orjson.loads(data))
    return r, events


def test_stream_format(up: FakeUpstream, client: httpx.Client) -> None:
    up.reply = "hello there world"
    r, events = sse(client, stream_options={"include_usage": True})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "gpt-test"
               for c in chunks)
    first, *content, finish, usage = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert len(content) > 3  # several pieces
    assert "".join(c["choices"][0]["delta"]["content"] for c in content) == "hello there world"
    assert all(c["choices"][0]["finish_reason"] is None and c["usage"] is None for c in content)
    assert finish["choices"] == [{"index": 0, "delta": {}, "logprobs": None,
                                  "finish_reason": "stop"}]
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == 3
    assert usage["usage"]["total_tokens"] == usage["usage"]["prompt_tokens"] + 3


def test_stream_without_usage_and_with_logprobs(up: FakeUpstream, client: httpx.Client) -> None:
    _, events = sse(client, logprobs=True)
    chunks = events[:-1]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in c for c in chunks)
    pieces = [c for c in chunks if c["choices"][0]["delta"].get("content")]
    assert [p["choices"][0]["logprobs"]["content"][0]["token"] for p in pieces] == ["bill", "ing"]
    assert all(p["choices"][0]["logprobs"]["content"][0]["logprob"] == up.token_logprob
               for p in pieces)


def test_stream_tool_call_format(up: FakeUpstream, client: httpx.Client) -> None:
    up.reply_tool_call = ("get_weather", '{"city": "Paris", "unit": "celsius"}')
    _, events = sse(client)
    first, *args, finish, done = events
    (call,) = first["choices"][0]["delta"]["tool_calls"]
    assert call["index"] == 0 and call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": ""}
    assert first["choices"][0]["delta"]["content"] is None
    assert len(args) > 1
    assert "".join(a["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                   for a in args) == '{"city": "Paris", "unit": "celsius"}'
    assert finish["choices"][0]["finish_reason"] == "tool_calls"
    assert done == "[DONE]"


def test_tool_call_completion(up: FakeUpstream, client: httpx.Client) -> None:
    up.reply_tool_call = ("lookup", "{}")
    (choice,) = chat(client).json()["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["function"] == {"name": "lookup", "arguments": "{}"}


# --- the official SDK as a client of the fake ---------------------------------------------


@pytest.fixture
def sdk(up: FakeUpstream) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=up.base_url, api_key="sk-test", max_retries=0, timeout=5) as c:
        yield c


TOOLS: list[Any] = [{"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
HI: list[Any] = [{"role": "user", "content": "hi"}]


def test_sdk_streams(up: FakeUpstream, sdk: openai.OpenAI) -> None:
    up.reply = "streamed by the fake"
    up.cached_tokens = 1
    try:
        chunks = list(sdk.chat.completions.create(
            model="m", messages=HI, stream=True, stream_options={"include_usage": True}))
    finally:
        up.cached_tokens = 0
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "streamed by the fake"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 4
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 1


def test_sdk_tool_calls(up: FakeUpstream, sdk: openai.OpenAI) -> None:
    up.reply_tool_call = ("get_weather", '{"city": "Paris"}')
    r = sdk.chat.completions.create(model="m", messages=HI, tools=TOOLS)
    assert r.choices[0].finish_reason == "tool_calls"
    call = r.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert call.function.arguments == '{"city": "Paris"}'  # type: ignore[union-attr]
    with sdk.chat.completions.stream(model="m", messages=HI, tools=TOOLS) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    (streamed,) = final.choices[0].message.tool_calls or []
    assert streamed.function.arguments == '{"city": "Paris"}'
    assert final.choices[0].finish_reason == "tool_calls"


def test_sdk_embeddings(up: FakeUpstream, sdk: openai.OpenAI) -> None:
    r = sdk.embeddings.create(model="emb", input=["first text", "second"])  # base64 on the wire
    assert [d.embedding for d in r.data] == [fake_embedding("first text"), fake_embedding("second")]
    assert r.usage.prompt_tokens == 3 and r.model == "emb"
    r = sdk.embeddings.create(model="emb", input="one", encoding_format="float", dimensions=4)
    assert r.data[0].embedding == fake_embedding("one", 4)


def test_sdk_sees_the_errors_it_knows(up: FakeUpstream, sdk: openai.OpenAI) -> None:
    up.set_mode("auth", times=1)
    with pytest.raises(openai.AuthenticationError) as auth:
        sdk.chat.completions.create(model="m", messages=HI)
    assert auth.value.code == "invalid_api_key"
    up.set_mode("stream_error", times=1)
    with pytest.raises(openai.APIError, match="The server had an error"):
        list(sdk.chat.completions.create(model="m", messages=HI, stream=True))
    up.set_mode("cut_stream", times=1)
    with pytest.raises(openai.APIConnectionError):
        list(sdk.chat.completions.create(model="m", messages=HI, stream=True))


# --- embeddings over plain HTTP --------------------------------------------------------------


def test_embeddings_shape(up: FakeUpstream, client: httpx.Client) -> None:
    r = client.post("/embeddings", json={"model": "emb", "input": ["a b", "c"]})
    data = r.json()
    assert data["object"] == "list" and data["model"] == "emb"
    assert data["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    assert [d["index"] for d in data["data"]] == [0, 1]
    assert all(d["object"] == "embedding" and len(d["embedding"]) == 8 for d in data["data"])
    vector = fake_embedding("a b")
    assert data["data"][0]["embedding"] == vector
    assert sum(x * x for x in vector) == pytest.approx(1.0, abs=1e-6)
    assert fake_embedding("a b") == vector != fake_embedding("c")
    last = up.last_request
    assert last is not None and last.path == "/v1/embeddings"
    up.embedding_dim = 3
    try:
        one = client.post("/embeddings", json={"model": "emb", "input": "x"}).json()
    finally:
        up.embedding_dim = 8
    assert len(one["data"][0]["embedding"]) == 3
    assert up.requests == 2
    up.set_mode("unavailable", times=1)
    assert client.post("/embeddings", json={"model": "emb", "input": "x"}).status_code == 503


# --- the other failure modes --------------------------------------------------------------


@pytest.mark.parametrize(("mode", "status"), [("bad_gateway", 502), ("unavailable", 503),
                                              ("auth", 401)])
def test_status_modes(up: FakeUpstream, client: httpx.Client, mode: Any, status: int) -> None:
    up.set_mode(mode, times=1)
    r = chat(client)
    assert r.status_code == status
    if mode == "bad_gateway":
        assert r.headers["content-type"].startswith("text/html") and "502 Bad Gateway" in r.text
    else:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    if mode == "auth":
        assert r.json()["error"]["code"] == "invalid_api_key"
    assert chat(client).status_code == 200


def test_delay_mode(up: FakeUpstream, client: httpx.Client) -> None:
    up.set_mode("delay", delay_s=0.15, times=2)
    start = time.monotonic()
    assert chat(client).status_code == 200
    assert time.monotonic() - start >= 0.15
    # a stream: the headers at once, the first chunk after delay_s
    body = {"model": "m", "messages": HI, "stream": True}
    start = time.monotonic()
    with client.stream("POST", "/chat/completions", json=body) as r:
        headers_after = time.monotonic() - start
        text = "".join(r.iter_text())
    assert headers_after < 0.1 <= 0.15 <= time.monotonic() - start
    assert text.endswith("data: [DONE]\n\n")
    assert up.mode == "ok"


def stream_events(client: httpx.Client) -> tuple[list[str], Exception | None]:
    """The raw SSE blocks a stream request got, and the error that ended it, if any."""
    blocks: list[str] = []
    body = {"model": "m", "messages": HI, "stream": True}
    try:
        with client.stream("POST", "/chat/completions", json=body, timeout=0.3) as r:
            buffer = ""
            for text in r.iter_text():
                buffer += text
                *done, buffer = buffer.split("\n\n")
                blocks += done
    except httpx.HTTPError as exc:
        return blocks, exc
    return blocks, None


def test_cut_stream(up: FakeUpstream, client: httpx.Client) -> None:
    up.reply = "a long enough reply"
    up.set_mode("cut_stream", after_chunks=3, times=1)
    blocks, error = stream_events(client)
    assert len(blocks) == 3 and "[DONE]" not in "".join(blocks)
    assert isinstance(error, httpx.RemoteProtocolError)  # the connection closed mid-body
    blocks, error = stream_events(client)
    assert error is None and blocks[-1] == "data: [DONE]"


def test_stall_stream(up: FakeUpstream, client: httpx.Client) -> None:
    up.set_mode("stall_stream", after_chunks=1, times=1)
    start = time.monotonic()
    blocks, error = stream_events(client)
    assert len(blocks) == 1 and isinstance(error, httpx.ReadTimeout)
    assert time.monotonic() - start < 1
    up.set_mode("stall_stream", after_chunks=1, hang_s=0.05, times=1)
    blocks, error = stream_events(client)  # goes on after hang_s
    assert error is None and blocks[-1] == "data: [DONE]"


def test_stream_error_and_invalid_json(up: FakeUpstream, client: httpx.Client) -> None:
    up.set_mode("stream_error", after_chunks=2, times=1)
    blocks, error = stream_events(client)
    assert error is None and len(blocks) == 3
    assert orjson.loads(blocks[-1].removeprefix("data: "))["error"]["type"] == "server_error"
    up.set_mode("invalid_json", after_chunks=0, times=1)
    blocks, error = stream_events(client)
    assert error is None and len(blocks) == 1
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(blocks[0].removeprefix("data: "))


def test_stream_faults_strike_before_done_at_the_latest(
        up: FakeUpstream, client: httpx.Client) -> None:
    up.set_mode("stream_error", after_chunks=99, times=1)
    blocks, error = stream_events(client)
    assert error is None and "[DONE]" not in "".join(blocks)
    assert '"finish_reason":"stop"' in blocks[-2] and '"error"' in blocks[-1]


def test_timeout_mode_then_a_normal_stream(up: FakeUpstream, client: httpx.Client) -> None:
    up.set_mode("timeout", hang_s=0.05, times=1)
    blocks, error = stream_events(client)
    assert error is None and blocks[-1] == "data: [DONE]"
    assert "".join(orjson.loads(b.removeprefix("data: "))["choices"][0]["delta"].get("content")
                   or "" for b in blocks[:-1]) == "billing"


def test_stream_modes_leave_plain_requests_alone(up: FakeUpstream, client: httpx.Client) -> None:
    up.set_mode("cut_stream", times=1)
    assert chat(client).status_code == 200
    assert up.faults.times == 1  # not used up by a non-streaming request
    stream_events(client)
    assert up.mode == "ok"


def test_refuse(up: FakeUpstream, client: httpx.Client) -> None:
    assert chat(client).status_code == 200  # a keep-alive connection to close
    up.set_mode("refuse")
    with pytest.raises(httpx.ConnectError):
        chat(client)
    with pytest.raises(httpx.ConnectError):
        httpx.get(up.base_url + "/models")
    up.set_mode("ok")
    assert chat(client).status_code == 200
    up.set_mode("refuse", refuse_s=0.1)
    with pytest.raises(httpx.ConnectError):
        chat(client)
    time.sleep(0.2)
    assert up.mode == "ok"
    assert chat(client).status_code == 200
    up.set_mode("refuse")
    up.reset()  # listens again
    assert chat(client).status_code == 200


def test_closed_base_url() -> None:
    with pytest.raises(httpx.ConnectError):
        httpx.get(closed_base_url() + "/models")
