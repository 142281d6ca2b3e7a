"""keel.testing.fake_anthropic.FakeAnthropic, checked with the official ``anthropic`` SDK as
the client: if the SDK parses it, the wire format is right."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import orjson
import pytest

from keel.testing.fake_anthropic import ANTHROPIC_MODES, FakeAnthropic, ToolUse

KEY = "sk-ant-test"
HI: list[Any] = [{"role": "user", "content": "hello there"}]
WEATHER: Any = {"name": "get_weather", "description": "Weather in a city",
                           "input_schema": {"type": "object",
                                            "properties": {"city": {"type": "string"}}}}


@pytest.fixture(scope="module")
def server() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=KEY) as fake:
        yield fake


@pytest.fixture
def fake(server: FakeAnthropic) -> Iterator[FakeAnthropic]:
    server.reset()
    server.reply = "The card is on its way"
    server.stop_reason = None
    server.cache_read_tokens = server.cache_write_tokens = 0
    yield server


@pytest.fixture
def client(fake: FakeAnthropic) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=fake.base_url, api_key=KEY, max_retries=0,
                             timeout=5) as c:
        yield c


def create(client: anthropic.Anthropic, **kw: Any) -> Any:
    """``messages.create`` (a Message, or a Stream of events with ``stream=True``)."""
    return client.messages.create(model="claude-fake", max_tokens=100, messages=HI, **kw)


# --- the ok path -------------------------------------------------------------------------


def test_create_returns_a_message(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    fake.cache_read_tokens, fake.cache_write_tokens = 7, 3
    m = create(client, system="be brief")
    assert m.type == "message" and m.role == "assistant" and m.model == "claude-fake"
    assert m.id.startswith("msg_")
    assert [(b.type, getattr(b, "text", None)) for b in m.content] == [
        ("text", "The card is on its way")]
    assert (m.stop_reason, m.stop_sequence) == ("end_turn", None)
    assert (m.usage.input_tokens, m.usage.output_tokens) == (4, 6)
    assert (m.usage.cache_read_input_tokens, m.usage.cache_creation_input_tokens) == (7, 3)
    last = fake.last_request
    assert last is not None and (last.method, last.path) == ("POST", "/v1/messages")
    assert last.body["max_tokens"] == 100 and last.body["system"] == "be brief"
    assert "anthropic-version" in last.headers
    assert fake.requests == 1


def test_tool_use_reply(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    fake.reply = ["Let me check.", ToolUse("get_weather", {"city": "Paris"}, id="toolu_1")]
    m = create(client, tools=[WEATHER], tool_choice={"type": "auto"})
    assert m.stop_reason == "tool_use"
    text, tool = m.content
    assert text.type == "text" and text.text == "Let me check."
    assert tool.type == "tool_use"
    assert (tool.id, tool.name, tool.input) == ("toolu_1", "get_weather", {"city": "Paris"})
    assert fake.last_request is not None and fake.last_request.body["tools"] == [WEATHER]


def test_reply_function_and_forced_stop_reason(fake: FakeAnthropic,
                                               client: anthropic.Anthropic) -> None:
    fake.reply = lambda body: f"you said {body['messages'][-1]['content']}"
    fake.stop_reason = "max_tokens"
    m = create(client)
    assert m.content[0].type == "text" and m.content[0].text == "you said hello there"
    assert m.stop_reason == "max_tokens"


def test_stream_helper_accumulates_text(fake: FakeAnthropic,
                                        client: anthropic.Anthropic) -> None:
    with client.messages.stream(model="claude-fake", max_tokens=100, messages=HI) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) == 6 and "".join(pieces) == "The card is on its way"
    assert final.content[0].type == "text" and final.content[0].text == "The card is on its way"
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (2, 6)


def test_stream_helper_accumulates_tool_input(fake: FakeAnthropic,
                                              client: anthropic.Anthropic) -> None:
    fake.reply = ToolUse("get_weather", {"city": "Paris", "days": [1, 2, 3]})
    with client.messages.stream(model="claude-fake", max_tokens=100, messages=HI,
                                tools=[WEATHER]) as stream:
        final = stream.get_final_message()
    tool = final.content[0]
    assert tool.type == "tool_use" and tool.name == "get_weather"
    assert tool.input == {"city": "Paris", "days": [1, 2, 3]}
    assert tool.id.startswith("toolu_") and final.stop_reason == "tool_use"


def test_raw_stream_event_order(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    fake.reply = "Hi there"
    events = [e.type for e in create(client, stream=True)]
    assert events == ["message_start", "content_block_start", "content_block_delta",
                      "content_block_delta", "content_block_stop", "message_delta",
                      "message_stop"]


def test_sse_lines_on_the_wire(fake: FakeAnthropic) -> None:
    fake.reply = "Hi"
    body = {"model": "m", "max_tokens": 5, "messages": HI, "stream": True}
    r = httpx.post(fake.base_url + "/v1/messages", json=body,
                   headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"})
    assert r.headers["content-type"].startswith("text/event-stream")
    blocks = r.text.split("\n\n")
    assert blocks[-1] == ""
    names = [b.split("\n")[0] for b in blocks[:-1]]
    assert names == ["event: message_start", "event: content_block_start", "event: ping",
                     "event: content_block_delta", "event: content_block_stop",
                     "event: message_delta", "event: message_stop"]
    assert orjson.loads(blocks[2].split("\n")[1].removeprefix("data: ")) == {"type": "ping"}


async def test_async_client_streams(fake: FakeAnthropic) -> None:
    async with (anthropic.AsyncAnthropic(base_url=fake.base_url, api_key=KEY,
                                         max_retries=0) as client,
                client.messages.stream(model="claude-fake", max_tokens=10,
                                       messages=HI) as stream):
        text = "".join([t async for t in stream.text_stream])
    assert text == "The card is on its way"


def test_models_list(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    assert [m.id for m in client.models.list()] == ["claude-fake"]


# --- failures -------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "error", "status"), [
    ("rate_limit", anthropic.RateLimitError, 429),
    ("overloaded", anthropic.OverloadedError, 529),
    ("error", anthropic.InternalServerError, 500),
    ("unavailable", anthropic.ServiceUnavailableError, 503),
    ("bad_gateway", anthropic.InternalServerError, 502),
    ("bad_request", anthropic.BadRequestError, 400),
    ("auth", anthropic.AuthenticationError, 401),
])
def test_failure_modes_raise_the_sdks_errors(fake: FakeAnthropic, client: anthropic.Anthropic,
                                             mode: Any, error: type[Exception],
                                             status: int) -> None:
    fake.set_mode(mode, times=1, retry_after=3)
    with pytest.raises(error) as info:
        create(client)
    assert isinstance(info.value, anthropic.APIStatusError)
    assert info.value.status_code == status
    if mode != "bad_gateway":  # a proxy's HTML page
        assert isinstance(info.value.body, dict) and info.value.body["type"] == "error"
    if mode == "rate_limit":
        assert info.value.response.headers["retry-after"] == "3"
    assert create(client).content  # times=1: back to ok
    assert fake.requests == 2


def test_failure_before_a_stream_raises_too(fake: FakeAnthropic,
                                            client: anthropic.Anthropic) -> None:
    fake.set_mode("overloaded", times=1)
    with pytest.raises(anthropic.OverloadedError):
        create(client, stream=True)


def test_wrong_or_missing_api_key_is_401(fake: FakeAnthropic) -> None:
    with anthropic.Anthropic(base_url=fake.base_url, api_key="sk-wrong", max_retries=0) as c, \
            pytest.raises(anthropic.AuthenticationError) as info:
        create(c)
    assert info.value.body == {"type": "error", "error": {
        "type": "authentication_error", "message": "invalid x-api-key"}}
    ok = httpx.post(fake.base_url + "/v1/messages", json={"model": "m", "max_tokens": 5,
                                                          "messages": HI},
                    headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"})
    assert ok.status_code == 200 and ok.headers["request-id"].startswith("req_")


@pytest.mark.parametrize(("version", "body", "message"), [
    (None, {"model": "m", "max_tokens": 5, "messages": HI},
     "anthropic-version: header is required"),
    ("2023-06-01", {"model": "m", "messages": HI}, "max_tokens: Field required"),
    ("2023-06-01", {"model": "m", "max_tokens": 5,
                    "messages": [{"role": "system", "content": "x"}]},
     "messages.0.role: Input should be 'user' or 'assistant'"),
])
def test_requests_the_real_api_refuses(fake: FakeAnthropic, version: str | None,
                                       body: dict[str, Any], message: str) -> None:
    headers = {"x-api-key": KEY} | ({"anthropic-version": version} if version else {})
    r = httpx.post(fake.base_url + "/v1/messages", json=body, headers=headers)
    assert r.status_code == 400
    assert r.json() == {"type": "error", "error": {"type": "invalid_request_error",
                                                   "message": message}}


def test_invalid_json(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    fake.set_mode("invalid_json")
    with pytest.raises(ValueError):
        create(client)


def test_timeout_and_delay(fake: FakeAnthropic) -> None:
    with anthropic.Anthropic(base_url=fake.base_url, api_key=KEY, max_retries=0,
                             timeout=0.3) as client:
        fake.set_mode("timeout", times=1)
        t0 = time.monotonic()
        with pytest.raises(anthropic.APITimeoutError):
            create(client)
        assert time.monotonic() - t0 < 2
        fake.set_mode("delay", times=1, delay_s=0.15)
        t0 = time.monotonic()
        assert create(client).content
        assert time.monotonic() - t0 >= 0.15


def _stream_until_it_breaks(client: anthropic.Anthropic) -> tuple[list[str], Exception]:
    seen: list[str] = []
    try:
        for event in create(client, stream=True):
            seen.append(event.type)
    except Exception as exc:  # the SDK lets the transport's own error through
        return seen, exc
    raise AssertionError(f"the stream did not break: {seen}")


def test_cut_stream_drops_the_connection_mid_stream(fake: FakeAnthropic,
                                                    client: anthropic.Anthropic) -> None:
    fake.set_mode("cut_stream", times=1, cut_after=2)
    seen, exc = _stream_until_it_breaks(client)
    assert seen == ["message_start", "content_block_start", "content_block_delta",
                    "content_block_delta"]
    assert type(exc).__name__ == "RemoteProtocolError"
    assert not isinstance(exc, anthropic.APIStatusError)
    assert create(client).content  # next request is fine


def test_stall_stream_hangs_mid_stream(fake: FakeAnthropic) -> None:
    fake.set_mode("stall_stream", times=1, cut_after=1)
    with anthropic.Anthropic(base_url=fake.base_url, api_key=KEY, max_retries=0,
                             timeout=0.3) as client:
        seen, exc = _stream_until_it_breaks(client)
    assert seen == ["message_start", "content_block_start", "content_block_delta"]
    assert "Timeout" in type(exc).__name__


def test_stream_error_sends_an_error_event(fake: FakeAnthropic,
                                          client: anthropic.Anthropic) -> None:
    fake.set_mode("stream_error", times=2, cut_after=1)
    seen: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as info:
        for event in create(client, stream=True):
            seen.append(event.type)
    assert seen == ["message_start", "content_block_start", "content_block_delta"]
    assert info.value.body == {"type": "error", "error": {"type": "overloaded_error",
                                                          "message": "Overloaded"}}
    with pytest.raises(anthropic.OverloadedError):  # without streaming: a 529
        create(client)


def test_cut_and_stall_without_streaming(fake: FakeAnthropic) -> None:
    with anthropic.Anthropic(base_url=fake.base_url, api_key=KEY, max_retries=0,
                             timeout=0.3) as client:
        fake.set_mode("cut_stream", times=1)
        with pytest.raises(anthropic.APIConnectionError):
            create(client)
        fake.set_mode("stall_stream", times=1)
        with pytest.raises(anthropic.APIConnectionError):  # APITimeoutError is one
            create(client)


# --- steering -------------------------------------------------------------------------------


def test_control_endpoints(fake: FakeAnthropic, client: anthropic.Anthropic) -> None:
    base = fake.base_url
    assert httpx.get(base + "/_fake/last_request").status_code == 404
    r = httpx.post(base + "/_fake/mode", json={"mode": "overloaded", "times": 2})
    assert r.json() == {"requests": 0, "mode": "overloaded", "times": 2}
    for _ in range(2):
        with pytest.raises(anthropic.OverloadedError):
            create(client)
    assert create(client).content
    assert httpx.get(base + "/_fake/stats").json() == {"requests": 3, "mode": "ok",
                                                       "times": None}
    last = httpx.get(base + "/_fake/last_request").json()
    assert last["path"] == "/v1/messages" and last["body"]["messages"] == HI
    assert httpx.post(base + "/_fake/mode", json={"mode": "nope"}).status_code == 400
    assert httpx.post(base + "/_fake/reset").json()["requests"] == 0


def test_set_mode_checks_its_arguments(fake: FakeAnthropic) -> None:
    with pytest.raises(ValueError, match="unknown fake mode"):
        fake.set_mode("nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="times"):
        fake.set_mode("error", times=0)
    assert {"ok", "cut_stream", "stall_stream", "overloaded", "delay"} <= ANTHROPIC_MODES


def test_base_url_needs_a_started_server() -> None:
    fake = FakeAnthropic()
    with pytest.raises(RuntimeError, match="not started"):
        _ = fake.base_url
    with fake:
        assert not fake.base_url.endswith("/v1")
    fake.stop()  # twice is fine
