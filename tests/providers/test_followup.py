"""A reask's follow-up turns reach every generative wire format after the conversation."""

from __future__ import annotations

import orjson

from keel.providers.anthropic import AnthropicProvider
from keel.providers.base import ProviderRequest
from keel.providers.openai_wire import chat_body
from keel.spec import ProviderSpec

FOLLOWUP = [{"role": "assistant", "content": "zzz"},
            {"role": "user", "content": "That answer failed a check. Answer again."}]


def request() -> ProviderRequest:
    return ProviderRequest("f", "v1", "m", {"text": "hi"}, "label", 5.0, labels=["a", "b"],
                           followup=list(FOLLOWUP))


def test_openai_body_ends_with_the_followup() -> None:
    body = orjson.loads(chat_body(request(), lambda r: "classify: hi"))
    assert body["messages"][0] == {"role": "user", "content": "classify: hi"}
    assert body["messages"][1:] == FOLLOWUP


def test_anthropic_body_ends_with_the_followup() -> None:
    provider = AnthropicProvider("claude", ProviderSpec(type="anthropic", base_url="http://127.0.0.1:9"))
    body = orjson.loads(provider._body(request(), stream=False))
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert "failed a check" in orjson.dumps(body["messages"][-1]).decode()
