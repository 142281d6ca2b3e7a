"""AnthropicProvider against a real HTTP fake (keel.testing.fake_anthropic.FakeAnthropic);
a scripted aiohttp server for what the fake does not send (other in-stream error types, a
stream that ends cleanly without message_stop, malformed events)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import RawTestServer

from keel.errors import (
    ConfigError,
    ProviderBadResponse,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderStreamInterrupted,
    ProviderTimeout,
    ProviderUnavailable,
)
from keel.providers.anthropic import AnthropicProvider
from keel.providers.base import ProviderRequest
from keel.spec import ProviderSpec
from keel.testing.fake_anthropic import FakeAnthropic, ToolUse
from keel.types import Delta, Usage

KEY = "sk-ant-test"
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=KEY) as fake:
        yield fake


@pytest.fixture
def fake(server: FakeAnthropic) -> Iterator[FakeAnthropic]:
    server.reset()
    server.reply = "billing"
    server.stop_reason = None
    server.cache_read_tokens = server.cache_write_tokens = 0
    yield server


def make(fake: FakeAnthropic, **spec: Any) -> AnthropicProvider:
    spec = {"base_url": fake.base_url, "api_key": KEY, **spec}
    return AnthropicProvider("claude", ProviderSpec(type="anthropic", **spec))


@pytest.fixture
async def provider(fake: FakeAnthropic) -> AsyncIterator[AnthropicProvider]:
    p = make(fake)
    await p.start()
    yield p
    await p.close()


def req(kind: Any = "label", **kw: Any) -> ProviderRequest:
    base: dict[str, Any] = {
        "feature": "triage", "version": "v1", "model": "claude-test",
        "input": {"text": "I was charged twice"}, "output_kind": kind, "timeout_s": 5.0,
    }
    if kind == "label":
        base["labels"] = ["billing", "bug", "other"]
    return ProviderRequest(**{**base, **kw})


def chat(**kw: Any) -> ProviderRequest:
    return req("chat", messages=[{"role": "user", "content": "weather in Paris?"}], **kw)


def sent(fake: FakeAnthropic) -> tuple[dict[str, Any], dict[str, str]]:
    last = fake.last_request
    assert last is not None and last.path == "/v1/messages"
    return last.body, last.headers


async def collect(p: AnthropicProvider, r: ProviderRequest) -> list[Delta]:
    return [d async for d in p.stream(r)]


async def broken(p: AnthropicProvider, r: ProviderRequest) -> tuple[list[Delta], Exception]:
    deltas: list[Delta] = []
    try:
        async for d in p.stream(r):
            deltas.append(d)
    except ProviderError as exc:
        return deltas, exc
    raise AssertionError(f"the stream did not fail: {deltas}")


# --- complete ------------------------------------------------------------------------


async def test_label_request_on_the_wire(fake: FakeAnthropic,
                                         provider: AnthropicProvider) -> None:
    fake.reply = ' "billing." '
    c = await provider.complete(req(system="You triage tickets.", params={"temperature": 0}))
    assert c.output == {"label": "billing"} and c.text == ' "billing." '
    assert (c.model, c.finish_reason, c.confidence) == ("claude-test", "stop", None)
    body, headers = sent(fake)
    assert (headers["x-api-key"], headers["anthropic-version"]) == (KEY, "2023-06-01")
    assert headers["content-type"] == "application/json"
    assert body["model"] == "claude-test" and body["max_tokens"] == 1024
    assert body["system"] == "You triage tickets." and body["temperature"] == 0
    [message] = body["messages"]
    assert message["role"] == "user"
    assert "- billing\n- bug\n- other" in message["content"]
    assert message["content"].endswith("Input:\nI was charged twice")
    assert "stream" not in body


async def test_text_json_and_prompt(fake: FakeAnthropic, provider: AnthropicProvider) -> None:
    c = await provider.complete(req("text", prompt="Summarise: {text}"))
    assert c.output == {"text": "billing"}
    assert sent(fake)[0]["messages"] == [{"role": "user",
                                          "content": "Summarise: I was charged twice"}]
    fake.reply = '{"priority": "high"}'
    assert (await provider.complete(req("json"))).output == {"priority": "high"}


async def test_usage_counts_cache_tokens(fake: FakeAnthropic,
                                         provider: AnthropicProvider) -> None:
    fake.cache_read_tokens, fake.cache_write_tokens = 100, 20
    fake.reply = "one two three"
    c = await provider.complete(req("text", input={"text": "four words right here"}))
    assert c.usage == Usage(input_tokens=124, output_tokens=3, cached_input_tokens=100,
                            cache_write_tokens=20)


async def test_chat_with_tools_and_options(fake: FakeAnthropic,
                                           provider: AnthropicProvider) -> None:
    fake.reply = ["Checking.", ToolUse("get_weather", {"city": "Paris"}, id="toolu_1")]
    c = await provider.complete(chat(params={"max_tokens": 50, "temperature": 0.5},
                                     options={"temperature": 0.1, "tools": TOOLS,
                                              "tool_choice": "required", "user": "u1"}))
    assert c.output == {"role": "assistant", "content": "Checking.", "tool_calls": [
        {"id": "toolu_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]}
    assert c.finish_reason == "tool_calls"
    body, _ = sent(fake)
    assert (body["max_tokens"], body["temperature"]) == (50, 0.1)
    assert body["tool_choice"] == {"type": "any"} and body["metadata"] == {"user_id": "u1"}
    assert body["tools"][0]["input_schema"]["properties"] == {"city": {"type": "string"}}


async def test_base_url_with_v1_is_tolerated(fake: FakeAnthropic) -> None:
    p = make(fake, base_url=fake.base_url + "/v1/")
    try:
        assert str(p.url) == fake.base_url + "/v1/messages"
        assert (await p.complete(req())).output == {"label": "billing"}
    finally:
        await p.close()
    assert str(AnthropicProvider("a", ProviderSpec(type="anthropic")).url) == \
        "https://api.anthropic.com/v1/messages"
    with pytest.raises(ConfigError, match=r"providers\.x\.base_url"):
        AnthropicProvider("x", ProviderSpec(type="anthropic", base_url="api.anthropic.com"))


async def test_rejected_input_never_reaches_the_wire(fake: FakeAnthropic,
                                                     provider: AnthropicProvider) -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    with pytest.raises(ProviderRejected, match=r"provider 'claude'.*data: URL"):
        await provider.complete(req("chat", messages=[{"role": "user", "content": [image]}]))
    with pytest.raises(ProviderRejected, match="no embeddings API"):
        await provider.embed(req("embedding"), ["a"])
    assert fake.requests == 0


# --- complete: failures -----------------------------------------------------------------


@pytest.mark.parametrize(("mode", "error", "words"), [
    ("error", ProviderUnavailable, "HTTP 500"),
    ("unavailable", ProviderUnavailable, "HTTP 503"),
    ("bad_gateway", ProviderUnavailable, "502 Bad Gateway"),
    ("overloaded", ProviderUnavailable, "overloaded_error: Overloaded"),
    ("bad_request", ProviderRejected, "invalid_request_error: Invalid request"),
    ("auth", ProviderRejected, "check the provider's api_key"),
    ("invalid_json", ProviderBadResponse, "not JSON"),
    ("cut_stream", ProviderUnavailable, "broke during the answer"),
    ("timeout", ProviderTimeout, "within 0.3s"),
    ("stall_stream", ProviderTimeout, "within 0.3s"),
])
async def test_failures(fake: FakeAnthropic, provider: AnthropicProvider, mode: Any,
                        error: type[ProviderError], words: str) -> None:
    fake.set_mode(mode, times=1)
    with pytest.raises(error, match=words) as info:
        await provider.complete(req(timeout_s=0.3))
    assert type(info.value) is error
    assert info.value.retryable == (error in (ProviderUnavailable, ProviderTimeout))
    assert (await provider.complete(req())).output == {"label": "billing"}


async def test_rate_limit_carries_retry_after(fake: FakeAnthropic,
                                              provider: AnthropicProvider) -> None:
    fake.set_mode("rate_limit", times=1, retry_after=2)
    with pytest.raises(ProviderRateLimited, match="retry after 2s") as info:
        await provider.complete(req())
    assert info.value.retry_after == 2 and info.value.retryable


async def test_wrong_key_and_connect_error(fake: FakeAnthropic) -> None:
    p = make(fake, api_key="sk-wrong")
    try:
        with pytest.raises(ProviderRejected, match=r"authentication_error.*x-api-key"):
            await p.complete(req())
    finally:
        await p.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = AnthropicProvider("claude", ProviderSpec(type="anthropic",
                                                 base_url=f"http://127.0.0.1:{port}"))
    try:
        with pytest.raises(ProviderUnavailable, match="cannot reach"):
            await p.complete(req())
        with pytest.raises(ProviderUnavailable, match="cannot reach"):
            await collect(p, req())
    finally:
        await p.close()


# --- stream ---------------------------------------------------------------------------------


async def test_stream_text(fake: FakeAnthropic, provider: AnthropicProvider) -> None:
    fake.reply = "Your card is on its way"
    deltas = await collect(provider, req("text"))
    assert "".join(d.text for d in deltas) == "Your card is on its way"
    assert len([d for d in deltas if d.text]) == 6
    last = deltas[-1]
    assert last.finish_reason == "stop"
    assert last.usage == Usage(input_tokens=4, output_tokens=6)
    assert sent(fake)[0]["stream"] is True


async def test_stream_tool_calls_assemble_into_openai_calls(
        fake: FakeAnthropic, provider: AnthropicProvider) -> None:
    fake.reply = ["Checking.", ToolUse("get_weather", {"city": "Paris", "days": 3}, id="t1"),
                  ToolUse("now", id="t2")]
    calls: dict[int, dict[str, Any]] = {}
    deltas = await collect(provider, chat(options={"tools": TOOLS}))
    for d in deltas:
        for call in d.tool_calls or []:
            slot = calls.setdefault(call["index"], {"id": None, "name": None, "arguments": ""})
            slot["id"] = call.get("id") or slot["id"]
            slot["name"] = call["function"].get("name") or slot["name"]
            slot["arguments"] += call["function"]["arguments"]
    assert {i: (c["id"], c["name"], orjson.loads(c["arguments"])) for i, c in calls.items()} == {
        0: ("t1", "get_weather", {"city": "Paris", "days": 3}), 1: ("t2", "now", {})}
    assert "".join(d.text for d in deltas) == "Checking."
    assert deltas[-1].finish_reason == "tool_calls"


@pytest.mark.parametrize("mode", ["cut_stream", "stall_stream", "stream_error"])
async def test_stream_broken_mid_answer_is_interrupted(fake: FakeAnthropic,
                                                       provider: AnthropicProvider,
                                                       mode: Any) -> None:
    fake.reply = "one two three four five"
    fake.set_mode(mode, times=1, cut_after=2)
    deltas, exc = await broken(provider, req("text", timeout_s=0.3))
    assert [d.text for d in deltas] == ["one ", "two "]
    assert isinstance(exc, ProviderStreamInterrupted) and not exc.retryable
    assert "broke after the answer started" in exc.message


@pytest.mark.parametrize(("mode", "error"), [
    ("overloaded", ProviderUnavailable),
    ("error", ProviderUnavailable),
    ("rate_limit", ProviderRateLimited),
    ("auth", ProviderRejected),
    ("timeout", ProviderTimeout),
    ("invalid_json", ProviderBadResponse),
])
async def test_stream_failure_before_the_first_delta_is_ordinary(
        fake: FakeAnthropic, provider: AnthropicProvider, mode: Any,
        error: type[ProviderError]) -> None:
    fake.set_mode(mode, times=1)
    deltas, exc = await broken(provider, req("text", timeout_s=0.3))
    assert deltas == [] and type(exc) is error
    assert exc.retryable == (error in (ProviderUnavailable, ProviderTimeout,
                                       ProviderRateLimited))
    assert await collect(provider, req("text"))


@pytest.mark.parametrize(("mode", "error"), [
    ("cut_stream", ProviderUnavailable), ("stall_stream", ProviderTimeout),
    ("stream_error", ProviderUnavailable)])
async def test_stream_broken_before_any_delta_is_retryable(
        fake: FakeAnthropic, provider: AnthropicProvider, mode: Any,
        error: type[ProviderError]) -> None:
    fake.set_mode(mode, times=1, cut_after=0)
    deltas, exc = await broken(provider, req("text", timeout_s=0.3))
    assert deltas == [] and type(exc) is error and exc.retryable


async def test_stream_stopped_early_by_the_caller(fake: FakeAnthropic,
                                                  provider: AnthropicProvider) -> None:
    fake.reply = "one two three four"
    stream = provider.stream(req("text"))
    first = await anext(stream)
    await stream.aclose()
    assert first.text == "one "
    assert (await provider.complete(req())).text == "one two three four"


# --- stream: what only a scripted transport can send ----------------------------------------


def sse(*events: dict[str, Any]) -> bytes:
    return b"".join(b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n"
                    for e in events)


START = {"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant",
                                              "content": [], "model": "c",
                                              "usage": {"input_tokens": 3, "output_tokens": 1}}}
TEXT = [{"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}]


async def scripted(body: bytes) -> AsyncIterator[Delta]:
    async def answer(request: web.BaseRequest) -> web.Response:
        return web.Response(body=body, headers={"content-type": "text/event-stream"})

    async with RawTestServer(answer) as server:
        p = AnthropicProvider("claude", ProviderSpec(type="anthropic", api_key=KEY,
                                                     base_url=str(server.make_url(""))))
        try:
            async for d in p.stream(req("text")):
                yield d
        finally:
            await p.close()


@pytest.mark.parametrize(("events", "error", "n"), [
    ((START, {"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}}),
     ProviderRateLimited, 0),
    ((START, {"type": "error", "error": {"type": "invalid_request_error", "message": "no"}}),
     ProviderRejected, 0),
    ((START, *TEXT), ProviderStreamInterrupted, 1),  # ended cleanly, but no message_stop
    ((START,), ProviderUnavailable, 0),
])
async def test_stream_error_events_and_early_ends(events: tuple[dict[str, Any], ...],
                                                  error: type[ProviderError], n: int) -> None:
    deltas: list[Delta] = []
    with pytest.raises(error):
        async for d in scripted(sse(*events)):
            deltas.append(d)
    assert len(deltas) == n


async def test_malformed_stream_event() -> None:
    with pytest.raises(ProviderBadResponse, match="malformed"):
        async for _ in scripted(sse(START) + b"event: content_block_delta\ndata: {oops\n\n"):
            pass
    with pytest.raises(ProviderStreamInterrupted, match="malformed"):
        async for _ in scripted(sse(START, *TEXT) + b"data: [1]\n\n"):
            pass
