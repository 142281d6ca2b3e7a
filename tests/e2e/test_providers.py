"""Keel as a real server in front of Claude- and GPT-shaped upstreams, called with the
official openai SDK: translation both ways, streaming end to end, every failure."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import openai
import pytest

from keel.testing import FakeAnthropic, FakeUpstream, ToolUse
from tests.backends import store_at
from tests.e2e.server import KeelProcess

CONFIG = """
providers:
  claude: {{type: anthropic, base_url: "{claude}", api_key: "${{ANTHROPIC_KEY}}", timeout_s: 2,
           first_byte_timeout_s: 1, circuit: {{failure_threshold: 100}}}}
  gpt: {{type: openai, base_url: "{gpt}", timeout_s: 2, circuit: {{failure_threshold: 100}}}}
features:
  assistant:
    output: {{kind: chat}}
    versions:
      claude-1: {{provider: claude, model: claude-sonnet-4-5, system: "Be brief."}}
      gpt-1: {{provider: gpt, model: gpt-4o-mini}}
    aliases: {{champion: claude-1}}
    fallbacks: [gpt-1]
    retry: {{max_retries: 0}}
  vectors:
    output: {{kind: embedding}}
    versions:
      openai-small: {{provider: gpt, model: text-embedding-3-small}}
    aliases: {{champion: openai-small}}
  local-vectors:
    output: {{kind: embedding}}
    versions:
      minilm: {{provider: local, model: all-MiniLM-L6-v2-int8}}
    aliases: {{champion: minilm}}
"""


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeAnthropic, FakeUpstream]]:
    with FakeAnthropic(reply="Hello from Claude", api_key="sk-ant") as claude, \
            FakeUpstream(reply="Hello from GPT") as gpt:
        yield claude, gpt


@pytest.fixture(scope="module")
def server(fakes: tuple[FakeAnthropic, FakeUpstream], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[KeelProcess]:
    claude, gpt = fakes
    tmp = tmp_path_factory.mktemp("providers")
    config = tmp / "keel.yaml"
    config.write_text(CONFIG.format(claude=claude.base_url, gpt=gpt.base_url))
    with KeelProcess(config, tmp / "keel.db", env={"ANTHROPIC_KEY": "sk-ant"}) as proc:
        yield proc


@pytest.fixture
def client(server: KeelProcess, fakes: tuple[FakeAnthropic, FakeUpstream]) -> openai.OpenAI:
    for fake in fakes:
        fake.reset()
    fakes[0].reply = "Hello from Claude"
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


def recorded_error(server: KeelProcess, trace_id: str) -> str | None:
    """The error code of one call's event; the writer is asynchronous, so poll briefly."""
    for _ in range(100):
        assert server.database is not None
        with store_at(server.database).connection() as conn:
            row = conn.execute("SELECT error_code FROM events WHERE trace_id = ?",
                               (trace_id,)).fetchone()
        if row:
            return row[0]  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"no event for {trace_id}")


ASK = [{"role": "system", "content": "You help with banking."},
       {"role": "user", "content": "hi"}]


def test_openai_sdk_to_anthropic_and_back(client: openai.OpenAI,
                                          fakes: tuple[FakeAnthropic, FakeUpstream]) -> None:
    reply = client.chat.completions.create(model="assistant", messages=ASK, max_tokens=50,
                                           temperature=0.1)
    assert reply.choices[0].message.content == "Hello from Claude"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.prompt_tokens > 0
    keel = (reply.model_extra or {})["keel"]
    assert keel["version"] == "claude-1" and keel["cost_usd"] > 0  # priced from the table
    sent = fakes[0].last_request
    assert sent is not None
    assert sent.headers["x-api-key"] == "sk-ant"
    assert "You help with banking." in json.dumps(sent.body["system"])
    assert sent.body["max_tokens"] == 50 and sent.body["messages"][0]["role"] == "user"


def test_tool_calls_translate_both_ways(client: openai.OpenAI,
                                        fakes: tuple[FakeAnthropic, FakeUpstream]) -> None:
    fakes[0].reply = ToolUse("get_balance", {"account": "main"}, id="toolu_1")
    tools = [{"type": "function", "function": {"name": "get_balance", "description": "balance",
              "parameters": {"type": "object", "properties": {"account": {"type": "string"}}}}}]
    reply = client.chat.completions.create(model="assistant", messages=ASK, tools=tools)  # type: ignore[arg-type]
    call = reply.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert reply.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_balance" and json.loads(call.function.arguments) == {"account": "main"}
    sent = fakes[0].last_request
    assert sent is not None and sent.body["tools"][0]["input_schema"]["type"] == "object"
    # the tool result goes back to Claude as a tool_result block
    fakes[0].reply = "Your balance is 10"
    follow = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
              {"role": "tool", "tool_call_id": call.id, "content": "10 EUR"}]
    reply = client.chat.completions.create(model="assistant", messages=follow, tools=tools)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == "Your balance is 10"
    blocks = fakes[0].last_request.body["messages"][-1]["content"]  # type: ignore[union-attr]
    assert blocks[0]["type"] == "tool_result" and blocks[0]["tool_use_id"] == "toolu_1"


def test_streaming_end_to_end(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="assistant", messages=ASK, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from Claude"
    assert any(c.usage and c.usage.completion_tokens > 0 for c in chunks)
    keel = (chunks[-1].model_extra or {})["keel"]
    assert keel["decision"] == "accepted" and keel["version"] == "claude-1"


def test_a_stream_that_fails_before_its_first_token_falls_back_unseen(
        client: openai.OpenAI, fakes: tuple[FakeAnthropic, FakeUpstream]) -> None:
    fakes[0].set_mode("overloaded")
    chunks = list(client.chat.completions.create(model="assistant", messages=ASK, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from GPT"
    keel = (chunks[-1].model_extra or {})["keel"]
    assert keel["decision"] == "fallback"
    assert [a["error_code"] for a in keel["attempts"]] == ["provider_unavailable", None]


@pytest.mark.parametrize("mode", ["cut_stream", "stall_stream", "stream_error"])
def test_a_stream_that_breaks_mid_way_ends_with_an_error(
        client: openai.OpenAI, fakes: tuple[FakeAnthropic, FakeUpstream], server: KeelProcess,
        mode: str) -> None:
    fakes[0].set_mode(mode, hang_s=5)  # type: ignore[arg-type]
    stream = client.chat.completions.create(model="assistant", messages=ASK, stream=True)
    received: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            if chunk.choices:
                received.append(chunk.choices[0].delta.content or "")
    assert "".join(received)  # some content arrived before the break
    assert "stream" in str(info.value.message).lower() or "broke" in str(info.value.message).lower()
    assert fakes[1].requests == 0  # no silent switch to another model mid-answer
    trace_id = stream.response.headers["x-keel-trace-id"]
    assert recorded_error(server, trace_id) == "provider_stream_interrupted"


@pytest.mark.parametrize(("mode", "error"), [
    ("rate_limit", openai.RateLimitError),
    ("error", openai.InternalServerError),
])
def test_failures_of_every_target_reach_the_sdk_as_its_own_types(
        client: openai.OpenAI, fakes: tuple[FakeAnthropic, FakeUpstream], mode: str,
        error: type[Exception]) -> None:
    for fake in fakes:
        fake.set_mode(mode)  # type: ignore[arg-type]
    with pytest.raises(error) as info:
        client.chat.completions.create(model="assistant", messages=ASK)
    if mode == "rate_limit":
        assert info.value.response.headers["retry-after"] == "1"  # type: ignore[attr-defined]


def test_embeddings_through_the_sdk(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="vectors", input=["one", "two"])
    assert [len(d.embedding) for d in result.data] == [8, 8]
    local = client.embeddings.create(model="local-vectors", input="my card has not arrived")
    assert len(local.data[0].embedding) == 384
    assert (local.model_extra or {})["keel"]["cost_usd"] == 0.0


def test_unknown_model_and_bad_request_types(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-9", messages=ASK)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="assistant", messages=ASK, n=3)
