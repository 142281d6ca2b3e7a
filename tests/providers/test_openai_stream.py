"""OpenAIProvider.stream against the fake upstream's real server-sent events; no mocks.

Before the first delta every failure is an ordinary ProviderError (the caller can fall
back); after it, every failure is ProviderStreamInterrupted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from keel.errors import (
    ProviderBadResponse,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderStreamInterrupted,
    ProviderTimeout,
    ProviderUnavailable,
)
from keel.providers.base import ProviderRequest
from keel.providers.openai import OpenAIProvider
from keel.spec import ProviderSpec
from keel.testing import FakeUpstream
from keel.testing.fake_openai import closed_base_url
from keel.types import Delta

REPLY = "the parcel left the warehouse on Monday"
TOOLS = [{"type": "function", "function": {"name": "track", "parameters": {"type": "object"}}}]


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as up:
        yield up


@pytest.fixture
def up(upstream: FakeUpstream) -> Iterator[FakeUpstream]:
    upstream.reset()
    upstream.reply = REPLY
    upstream.reply_tool_call = None
    upstream.cached_tokens = upstream.reasoning_tokens = 0
    yield upstream


@pytest.fixture
async def provider(up: FakeUpstream) -> AsyncIterator[OpenAIProvider]:
    p = OpenAIProvider("fake", ProviderSpec(type="openai", base_url=up.base_url))
    await p.start()
    yield p
    await p.close()


def req(kind: Any = "chat", **kw: Any) -> ProviderRequest:
    base: dict[str, Any] = {
        "feature": "support", "version": "v1", "model": "gpt-test", "input": {"text": "where?"},
        "output_kind": kind, "timeout_s": 0.3,
        "messages": [{"role": "user", "content": "Where is my parcel?"}],
    }
    return ProviderRequest(**{**base, **kw})


async def collect(provider: OpenAIProvider, request: ProviderRequest,
                  into: list[Delta] | None = None) -> list[Delta]:
    deltas = into if into is not None else []
    async for delta in provider.stream(request):
        deltas.append(delta)
    return deltas


# --- happy paths ---------------------------------------------------------------------------


async def test_text_deltas_reassemble(up: FakeUpstream, provider: OpenAIProvider) -> None:
    up.cached_tokens, up.reasoning_tokens = 2, 1
    deltas = await collect(provider, req(system="Be brief.", options={"temperature": 0.5}))
    *content, finish, last = deltas
    assert len(content) > 5
    assert "".join(d.text for d in content) == REPLY
    assert all(d.finish_reason is None and d.usage is None and d.tool_calls is None
               for d in content)
    assert finish == Delta(finish_reason="stop")
    assert last.text == "" and last.usage is not None  # the usage chunk comes last
    assert last.usage.output_tokens == len(REPLY.split())
    assert last.usage.input_tokens == 6  # system + user words
    assert (last.usage.cached_input_tokens, last.usage.reasoning_tokens) == (2, 1)
    last_request = up.last_request
    assert last_request is not None
    body = last_request.body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["temperature"] == 0.5
    assert last_request.headers["accept"] == "text/event-stream"


async def test_tool_call_deltas_reassemble(up: FakeUpstream, provider: OpenAIProvider) -> None:
    up.reply_tool_call = ("track", '{"parcel": "A-1234", "carrier": "dhl"}')
    deltas = await collect(provider, req(options={"tools": TOOLS, "tool_choice": "required"}))
    calls = [call for d in deltas for call in d.tool_calls or []]
    assert all(d.text == "" for d in deltas)
    first = calls[0]
    assert first["index"] == 0 and first["id"].startswith("call_")
    assert first["function"]["name"] == "track"
    assert "".join(c["function"]["arguments"] for c in calls) == (
        '{"parcel": "A-1234", "carrier": "dhl"}')
    assert [d.finish_reason for d in deltas if d.finish_reason] == ["tool_calls"]
    assert deltas[-1].usage is not None
    body = up.last_request.body if up.last_request else None
    assert body is not None and body["tools"] == TOOLS and body["tool_choice"] == "required"


async def test_label_kind_streams_text(up: FakeUpstream, provider: OpenAIProvider) -> None:
    up.reply = "billing"
    deltas = await collect(provider, req("label", labels=["billing", "other"], messages=None))
    assert "".join(d.text for d in deltas) == "billing"
    body = up.last_request.body if up.last_request else None
    assert body is not None and "- billing\n- other" in body["messages"][0]["content"]


async def test_stops_early_cleanly(up: FakeUpstream, provider: OpenAIProvider) -> None:
    stream = provider.stream(req())
    async for _ in stream:
        break
    await stream.aclose()  # type: ignore[attr-defined]
    assert len(await collect(provider, req())) > 2  # the pool is still fine


# --- before the first delta: the ordinary mapping ---------------------------------------


@pytest.mark.parametrize(("mode", "error", "retryable"), [
    ("error", ProviderUnavailable, True),
    ("bad_gateway", ProviderUnavailable, True),
    ("unavailable", ProviderUnavailable, True),
    ("rate_limit", ProviderRateLimited, True),
    ("bad_request", ProviderRejected, False),
    ("auth", ProviderRejected, False),
])
async def test_status_errors(up: FakeUpstream, provider: OpenAIProvider, mode: Any,
                             error: type[ProviderError], retryable: bool) -> None:
    up.set_mode(mode, times=1, retry_after=3)
    with pytest.raises(error) as info:
        await collect(provider, req())
    assert type(info.value) is error and info.value.retryable is retryable
    if isinstance(info.value, ProviderRateLimited):
        assert info.value.retry_after == 3
    assert len(await collect(provider, req())) > 2


async def test_no_response_is_a_timeout(up: FakeUpstream, provider: OpenAIProvider) -> None:
    up.set_mode("timeout", times=1, hang_s=5)
    start = time.monotonic()
    with pytest.raises(ProviderTimeout, match=r"within 0\.3s") as info:
        await collect(provider, req())
    assert time.monotonic() - start < 1.5
    assert info.value.retryable


async def test_time_to_first_token(up: FakeUpstream, provider: OpenAIProvider) -> None:
    up.set_mode("delay", times=1, delay_s=2)  # headers at once, then nothing
    start = time.monotonic()
    with pytest.raises(ProviderTimeout, match=r"no first delta.*within 0\.3s") as info:
        await collect(provider, req())
    assert 0.25 < time.monotonic() - start < 1.5
    assert "0 chunk(s)" in info.value.message
    up.set_mode("delay", times=1, delay_s=0.1)  # slow but within timeout_s
    assert "".join(d.text for d in await collect(provider, req())) == REPLY


async def test_first_chunks_without_a_delta_count_against_the_deadline(
        up: FakeUpstream, provider: OpenAIProvider) -> None:
    # the role-only opening chunk arrives, then a stall: still before the first delta
    up.set_mode("stall_stream", times=1, after_chunks=1, hang_s=5)
    with pytest.raises(ProviderTimeout, match=r"1 chunk\(s\) arrived"):
        await collect(provider, req())


@pytest.mark.parametrize(("mode", "error"), [
    ("cut_stream", ProviderUnavailable),
    ("stream_error", ProviderUnavailable),
    ("invalid_json", ProviderBadResponse),
])
async def test_stream_faults_before_the_first_delta(
        up: FakeUpstream, provider: OpenAIProvider, mode: Any, error: type[ProviderError]) -> None:
    up.set_mode(mode, times=1, after_chunks=0)
    with pytest.raises(error) as info:
        await collect(provider, req())
    assert type(info.value) is error
    assert "before the first delta" in info.value.message


async def test_connection_refused() -> None:
    p = OpenAIProvider("down", ProviderSpec(type="openai", base_url=closed_base_url()))
    try:
        with pytest.raises(ProviderUnavailable, match="cannot reach") as info:
            await collect(p, req())
    finally:
        await p.close()
    assert info.value.retryable


async def test_refused_by_the_fake(up: FakeUpstream, provider: OpenAIProvider) -> None:
    up.set_mode("refuse")
    with pytest.raises(ProviderUnavailable, match="cannot reach"):
        await collect(provider, req())


async def test_not_an_event_stream(up: FakeUpstream) -> None:
    # a server that ignores stream: true (here: a 200 JSON body from the models endpoint)
    p = OpenAIProvider("odd", ProviderSpec(type="openai", base_url=up.base_url))
    p.url = p.url.with_path("/_fake/reset")  # POST answers 200 JSON
    try:
        with pytest.raises(ProviderBadResponse, match="not text/event-stream"):
            await collect(p, req())
    finally:
        await p.close()


# --- after the first delta: ProviderStreamInterrupted --------------------------------------


@pytest.mark.parametrize(("mode", "why"), [
    ("cut_stream", "connection broke"),
    ("stall_stream", r"no chunk within 0\.3s"),
    ("stream_error", "error event: The server had an error"),
    ("invalid_json", "malformed chunk"),
])
async def test_interrupted_after_deltas(up: FakeUpstream, provider: OpenAIProvider, mode: Any,
                                        why: str) -> None:
    up.set_mode(mode, times=1, after_chunks=3, hang_s=5)
    got: list[Delta] = []
    start = time.monotonic()
    with pytest.raises(ProviderStreamInterrupted, match=why) as info:
        await collect(provider, req(), got)
    assert time.monotonic() - start < 1.5
    assert len(got) == 2  # the role chunk carries no delta
    assert "".join(d.text for d in got) == REPLY[:len(got[0].text) + len(got[1].text)]
    assert not info.value.retryable
    assert "chunk(s)" in info.value.message and "2 delta(s) already sent" in info.value.message
    assert len(await collect(provider, req())) > 2  # the next call is fine


async def test_slow_consumer_is_not_a_stall(up: FakeUpstream, provider: OpenAIProvider) -> None:
    deltas = []
    async for delta in provider.stream(req(timeout_s=0.2)):
        deltas.append(delta)
        if len(deltas) == 1:
            await asyncio.sleep(0.3)  # longer than timeout_s, but the server was not silent
    assert "".join(d.text for d in deltas) == REPLY
