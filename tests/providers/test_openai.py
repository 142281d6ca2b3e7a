"""OpenAIProvider against a real HTTP fake upstream (keel.testing.FakeUpstream); no mocks."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Iterator
from email.utils import formatdate
from typing import Any

import httpx
import pytest

from keel.errors import (
    ConfigError,
    ProviderBadResponse,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
)
from keel.providers import build_provider
from keel.providers.base import ProviderRequest
from keel.providers.openai import OpenAIProvider, label_instruction, parse_retry_after
from keel.spec import ProviderSpec
from keel.testing import FakeUpstream, echo
from keel.testing.fake_openai import closed_base_url, fake_embedding


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as up:
        yield up


@pytest.fixture
def up(upstream: FakeUpstream) -> Iterator[FakeUpstream]:
    upstream.reset()
    upstream.reply = "billing"
    upstream.reply_tool_call = None
    upstream.cached_tokens = upstream.reasoning_tokens = 0
    yield upstream


def make(up: FakeUpstream, **spec: Any) -> OpenAIProvider:
    return OpenAIProvider("fake", ProviderSpec(type="openai", base_url=up.base_url, **spec))


@pytest.fixture
async def provider(up: FakeUpstream) -> AsyncIterator[OpenAIProvider]:
    p = make(up)
    await p.start()
    yield p
    await p.close()


def req(kind: Any = "label", **kw: Any) -> ProviderRequest:
    base: dict[str, Any] = {
        "feature": "triage", "version": "v1", "model": "gpt-test",
        "input": {"text": "I was charged twice"}, "output_kind": kind, "timeout_s": 5.0,
    }
    if kind == "label":
        base["labels"] = ["billing", "bug", "other"]
    return ProviderRequest(**{**base, **kw})


def sent(up: FakeUpstream) -> dict[str, Any]:
    last = up.last_request
    assert last is not None
    body: dict[str, Any] = last.body
    return body


# --- success -------------------------------------------------------------------------


async def test_label(up: FakeUpstream, provider: OpenAIProvider) -> None:
    up.reply = ' "billing." '
    c = await provider.complete(req())
    assert c.output == {"label": "billing"}
    assert c.text == ' "billing." '
    assert c.model == "gpt-test"
    assert c.confidence is None
    assert c.finish_reason == "stop"
    assert c.usage.output_tokens == 1
    assert c.usage.input_tokens > 5
    body = sent(up)
    assert body["model"] == "gpt-test"
    (msg,) = body["messages"]
    assert msg["role"] == "user"
    assert "- billing\n- bug\n- other" in msg["content"]
    assert msg["content"].endswith("I was charged twice")


async def test_label_descriptions_system_and_params(
    up: FakeUpstream, provider: OpenAIProvider
) -> None:
    r = req(system="You triage tickets.", label_descriptions={"bug": "something is broken"},
            params={"temperature": 0, "max_tokens": 5, "seed": 7, "stop": ["\n"],
                    "text_field": "text", "extra_body": {"top_k": 1}})
    await provider.prepare(req(input={}))
    await provider.complete(r)
    body = sent(up)
    assert body["messages"][0] == {"role": "system", "content": "You triage tickets."}
    assert "- bug: something is broken" in body["messages"][1]["content"]
    assert "exactly one" in body["messages"][1]["content"]
    assert {k: body[k] for k in ("temperature", "max_tokens", "seed", "stop", "top_k")} == {
        "temperature": 0, "max_tokens": 5, "seed": 7, "stop": ["\n"], "top_k": 1}
    assert "text_field" not in body and "extra_body" not in body


async def test_text(up: FakeUpstream, provider: OpenAIProvider) -> None:
    up.reply = echo
    c = await provider.complete(req("text", input={"text": "summarise me"}))
    assert c.output == {"text": "summarise me"}
    assert c.usage.input_tokens == 2 and c.usage.output_tokens == 2
    assert sent(up)["messages"] == [{"role": "user", "content": "summarise me"}]


async def test_json_with_prompt(up: FakeUpstream, provider: OpenAIProvider) -> None:
    up.reply = '{"sentiment": "negative", "score": 0.2}'
    r = req("json", input={"text": "awful", "lang": "en"}, prompt="Rate ({lang}): {text} {input}",
            params={"response_format": {"type": "json_object"}})
    c = await provider.complete(r)
    assert c.output == {"sentiment": "negative", "score": 0.2}
    body = sent(up)
    assert body["response_format"] == {"type": "json_object"}
    assert body["messages"][0]["content"] == 'Rate (en): awful {"text":"awful","lang":"en"}'


async def test_input_without_text_as_json(up: FakeUpstream, provider: OpenAIProvider) -> None:
    await provider.complete(req("json", input={"title": "x", "n": 2}))
    assert sent(up)["messages"][0]["content"] == '{"title":"x","n":2}'


async def test_logprobs_give_confidence(up: FakeUpstream, provider: OpenAIProvider) -> None:
    up.reply = "billing"
    c = await provider.complete(req(params={"logprobs": True}))
    assert c.confidence == pytest.approx(math.exp(up.token_logprob))
    assert sent(up)["logprobs"] is True


async def test_headers(up: FakeUpstream) -> None:
    p = make(up, api_key="sk-secret", headers={"X-Team": "support"})
    await p.start()
    try:
        await p.complete(req())
    finally:
        await p.close()
    last = up.last_request
    assert last is not None
    assert last.headers["authorization"] == "Bearer sk-secret"
    assert last.headers["x-team"] == "support"
    assert last.headers["content-type"] == "application/json"


async def test_no_authorization_without_api_key(up: FakeUpstream, provider: OpenAIProvider) -> None:
    await provider.complete(req())
    last = up.last_request
    assert last is not None
    assert "authorization" not in last.headers


async def test_built_from_the_provider_table(up: FakeUpstream) -> None:
    p = build_provider("fake", ProviderSpec(type="openai", base_url=up.base_url + "/"))
    assert isinstance(p, OpenAIProvider)
    try:
        c = await p.complete(req())  # starts itself if start() was not called
    finally:
        await p.close()
    assert c.output == {"label": "billing"}


def test_bad_base_url() -> None:
    with pytest.raises(ConfigError, match=r"providers\.x\.base_url"):
        OpenAIProvider("x", ProviderSpec(type="openai", base_url="localhost:8000"))


# --- failures ----------------------------------------------------------------------------


async def test_timeout(up: FakeUpstream, provider: OpenAIProvider) -> None:
    up.set_mode("timeout", hang_s=30)
    start = time.monotonic()
    with pytest.raises(ProviderTimeout) as info:
        await provider.complete(req(timeout_s=0.3))
    assert time.monotonic() - start < 1.5
    assert info.value.retryable
    assert "'fake'" in info.value.message and "0.3s" in info.value.message
    up.set_mode("ok")
    assert (await provider.complete(req())).output == {"label": "billing"}  # pool still fine


async def test_server_error(up: FakeUpstream, provider: OpenAIProvider) -> None:
    up.set_mode("error", times=1)
    with pytest.raises(ProviderUnavailable) as info:
        await provider.complete(req())
    assert info.value.retryable
    assert "'fake'" in info.value.message and "HTTP 500" in info.value.message
    assert "The server had an error" in info.value.message
    assert (await provider.complete(req())).output == {"label": "billing"}
    assert up.requests == 2


async def test_invalid_json(up: FakeUpstream, provider: OpenAIProvider) -> None:
    up.set_mode("invalid_json")
    with pytest.raises(ProviderBadResponse) as info:
        await provider.complete(req())
    assert not info.value.retryable
    assert "not JSON" in info.value.message and "'fake'" in info.value.message


@pytest.mark.parametrize(("retry_after", "expected"), [(2, 2.0), (0.25, 0.25)])
async def test_rate_limited(up: FakeUpstream, provider: OpenAIProvider,
                            retry_after: float, expected: float) -> None:
    up.set_mode("rate_limit", retry_after=retry_after)
    with pytest.raises(ProviderRateLimited) as info:
        await provider.complete(req())
    assert info.value.retryable
    assert info.value.retry_after == expected
    assert "HTTP 429" in info.value.message and "Rate limit reached" in info.value.message


async def test_rate_limited_with_http_date(up: FakeUpstream, provider: OpenAIProvider) -> None:
    up.set_mode("rate_limit", retry_after=formatdate(time.time() + 30, usegmt=True))
    with pytest.raises(ProviderRateLimited) as info:
        await provider.complete(req())
    assert info.value.retry_after is not None
    assert 25 < info.value.retry_after <= 30


async def test_bad_request(up: FakeUpstream, provider: OpenAIProvider) -> None:
    up.set_mode("bad_request")
    with pytest.raises(ProviderRejected) as info:
        await provider.complete(req())
    assert not info.value.retryable
    assert "HTTP 400" in info.value.message and "fake upstream told to refuse" in info.value.message


async def test_not_found_hints_at_base_url(up: FakeUpstream) -> None:
    p = OpenAIProvider("fake", ProviderSpec(type="openai", base_url=up.base_url + "/nope"))
    try:
        with pytest.raises(ProviderRejected, match=r"HTTP 404.*check base_url"):
            await p.complete(req())
    finally:
        await p.close()


async def test_missing_content(up: FakeUpstream, provider: OpenAIProvider) -> None:
    up.reply = lambda body: None
    with pytest.raises(ProviderBadResponse, match="content is not a string"):
        await provider.complete(req())


async def test_connection_refused() -> None:
    p = OpenAIProvider("down", ProviderSpec(type="openai", base_url=closed_base_url()))
    await p.start()
    try:
        with pytest.raises(ProviderUnavailable) as info:
            await p.complete(req())
    finally:
        await p.close()
    assert info.value.retryable
    assert "'down'" in info.value.message and "cannot reach" in info.value.message


@pytest.mark.parametrize(("mode", "error", "retryable", "text"), [
    ("bad_gateway", ProviderUnavailable, True, "HTTP 502"),
    ("unavailable", ProviderUnavailable, True, "currently overloaded"),
    ("auth", ProviderRejected, False, "check the provider's api_key"),
])
async def test_more_status_errors(up: FakeUpstream, provider: OpenAIProvider, mode: Any,
                                  error: type[ProviderError], retryable: bool, text: str) -> None:
    up.set_mode(mode, times=1)
    with pytest.raises(error) as info:
        await provider.complete(req())
    assert info.value.retryable is retryable
    assert text in info.value.message


async def test_refused_then_back(up: FakeUpstream, provider: OpenAIProvider) -> None:
    await provider.complete(req())  # a pooled keep-alive connection, which refuse closes
    up.set_mode("refuse")
    with pytest.raises(ProviderUnavailable, match="cannot reach"):
        await provider.complete(req())
    up.set_mode("ok")
    assert (await provider.complete(req())).output == {"label": "billing"}


# --- usage ----------------------------------------------------------------------------------


async def test_cached_and_reasoning_tokens(up: FakeUpstream, provider: OpenAIProvider) -> None:
    up.cached_tokens, up.reasoning_tokens = 4, 1
    c = await provider.complete(req())
    assert c.usage.cached_input_tokens == 4
    assert c.usage.reasoning_tokens == 1
    assert c.usage.input_tokens > 4 and c.usage.output_tokens == 1


# --- chat -------------------------------------------------------------------------------------

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}]
MESSAGES = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
     "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"},
]


def chat_req(**kw: Any) -> ProviderRequest:
    return req("chat", input={}, messages=MESSAGES, **kw)


async def test_chat_passes_messages_and_options(up: FakeUpstream, provider: OpenAIProvider) -> None:
    up.reply = "It is 18C and sunny in Paris."
    r = chat_req(system="Be brief.",
                 params={"temperature": 0.2, "max_tokens": 50, "text_field": "x",
                         "extra_body": {"top_k": 3}},
                 options={"tools": TOOLS, "tool_choice": "auto", "temperature": 0.9,
                          "response_format": {"type": "text"}, "stop": ["END"],
                          "stream": True, "not_a_param": 1})
    c = await provider.complete(r)
    assert c.output == {"role": "assistant", "content": "It is 18C and sunny in Paris."}
    assert c.text == "It is 18C and sunny in Paris."
    assert c.finish_reason == "stop"
    body = sent(up)
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, *MESSAGES]
    assert body["tools"] == TOOLS and body["tool_choice"] == "auto"
    assert body["temperature"] == 0.9  # the call's option wins over the version's param
    assert body["max_tokens"] == 50 and body["top_k"] == 3 and body["stop"] == ["END"]
    assert body["response_format"] == {"type": "text"}
    assert "stream" not in body and "not_a_param" not in body and "text_field" not in body


async def test_chat_tool_call_has_null_content(up: FakeUpstream, provider: OpenAIProvider) -> None:
    up.reply_tool_call = ("get_weather", '{"city": "Paris"}')
    c = await provider.complete(chat_req(options={"tools": TOOLS}))
    assert c.finish_reason == "tool_calls"
    assert c.text == ""
    out = c.output
    assert out["role"] == "assistant" and out["content"] is None
    (call,) = out["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert sent(up)["messages"] == MESSAGES  # no system message when none is set


async def test_null_content_is_an_error_for_other_kinds(
        up: FakeUpstream, provider: OpenAIProvider) -> None:
    up.reply_tool_call = ("get_weather", "{}")
    with pytest.raises(ProviderBadResponse, match=r"content is not a string.*tool_calls"):
        await provider.complete(req("text"))


async def test_options_apply_to_other_kinds(up: FakeUpstream, provider: OpenAIProvider) -> None:
    await provider.complete(req(params={"temperature": 0}, options={"temperature": 1, "seed": 2}))
    body = sent(up)
    assert body["temperature"] == 1 and body["seed"] == 2


# --- embeddings ---------------------------------------------------------------------------


async def test_embed(up: FakeUpstream, provider: OpenAIProvider) -> None:
    texts = ["my card has not arrived", "refund please", "hi"]
    e = await provider.embed(req("embedding", model="emb-1"), texts)
    assert e.vectors == [fake_embedding(t) for t in texts]
    assert e.usage.input_tokens == 8
    assert e.model == "emb-1"
    last = up.last_request
    assert last is not None and last.path == "/v1/embeddings"
    assert last.body == {"model": "emb-1", "input": texts, "encoding_format": "float"}
    e = await provider.embed(req("embedding", params={"dimensions": 4, "temperature": 1}), ["x"])
    assert e.vectors == [fake_embedding("x", 4)]
    assert sent(up) == {"model": "gpt-test", "input": ["x"], "dimensions": 4,
                        "encoding_format": "float"}
    requests = up.requests
    assert (await provider.embed(req("embedding"), [])).vectors == []
    assert up.requests == requests  # nothing to embed: no call


@pytest.mark.parametrize(("mode", "error"), [
    ("error", ProviderUnavailable), ("rate_limit", ProviderRateLimited),
    ("auth", ProviderRejected), ("invalid_json", ProviderBadResponse),
    ("timeout", ProviderTimeout),
])
async def test_embed_errors(up: FakeUpstream, provider: OpenAIProvider, mode: Any,
                            error: type[Exception]) -> None:
    up.set_mode(mode, times=1, hang_s=5)
    with pytest.raises(error, match="/v1/embeddings"):
        await provider.embed(req("embedding", timeout_s=0.3), ["a"])


async def test_embed_refused() -> None:
    p = OpenAIProvider("down", ProviderSpec(type="openai", base_url=closed_base_url()))
    try:
        with pytest.raises(ProviderUnavailable, match=r"cannot reach.*/embeddings"):
            await p.embed(req("embedding"), ["a"])
    finally:
        await p.close()


# --- helpers -------------------------------------------------------------------------------


def test_parse_retry_after() -> None:
    assert parse_retry_after(httpx.Headers({"retry-after": "3"})) == 3.0
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "1500", "retry-after": "3"})) == 1.5
    assert parse_retry_after(httpx.Headers({"retry-after": "soon"})) is None
    assert parse_retry_after(httpx.Headers({"retry-after": "-1"})) is None
    past = formatdate(time.time() - 60, usegmt=True)
    assert parse_retry_after(httpx.Headers({"retry-after": past})) == 0.0
    assert parse_retry_after(httpx.Headers()) is None


def test_label_instruction() -> None:
    text = label_instruction(["a", "b"], {"b": "the second"})
    assert "- a\n- b: the second" in text
    assert text.endswith("Input:\n")
