"""keel.providers.anthropic_wire: pure translation, OpenAI shapes <-> Anthropic Messages API."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from keel.errors import ProviderBadResponse, ProviderRejected
from keel.providers.anthropic_wire import (
    DEFAULT_MAX_TOKENS,
    AnthropicStreamError,
    SSEDecoder,
    StreamTranslator,
    build_body,
    finish_reason,
    to_anthropic_messages,
    to_anthropic_tool_choice,
    to_anthropic_tools,
    to_completion,
    to_usage,
)
from keel.types import Delta, Usage

PNG = "iVBORw0KGgo="
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def body(messages: list[dict[str, Any]] | None = None, **params: Any) -> dict[str, Any]:
    return build_body("claude-test", messages or [user("hi")], params)


# --- messages ------------------------------------------------------------------------


def test_system_and_developer_messages_anywhere_join_into_system() -> None:
    system, messages = to_anthropic_messages([
        {"role": "system", "content": "be brief"},
        user("hi"),
        {"role": "developer", "content": [{"type": "text", "text": "use French"},
                                          {"type": "text", "text": "no emoji"}]},
        {"role": "assistant", "content": "bonjour"},
    ], system="You are Keel.")
    assert system == "You are Keel.\n\nbe brief\n\nuse French\nno emoji"
    assert messages == [user("hi"), {"role": "assistant", "content": "bonjour"}]


def test_no_system_is_none_and_left_out_of_the_body() -> None:
    assert to_anthropic_messages([user("hi")]) == (None, [user("hi")])
    b = body()
    assert "system" not in b
    assert list(b) == ["model", "max_tokens", "messages"]


def test_content_parts_become_blocks_and_data_images_base64() -> None:
    _, messages = to_anthropic_messages([user([
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "text", "text": "", "cache_control": {"type": "ephemeral"}},  # empty: dropped
        {"type": "text", "text": "long context", "cache_control": {"type": "ephemeral"}},
    ])])
    assert messages == [user([
        {"type": "text", "text": "what is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "text", "text": "long context", "cache_control": {"type": "ephemeral"}},
    ])]


@pytest.mark.parametrize(("part", "words"), [
    ({"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}, "not a base64"),
    ({"type": "image_url", "image_url": {"url": "data:image/bmp;base64,AAAA"}}, "image/bmp"),
    ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}, "input_audio"),
])
def test_unsupported_parts_are_rejected_with_where_and_why(part: dict[str, Any],
                                                           words: str) -> None:
    with pytest.raises(ProviderRejected) as info:
        to_anthropic_messages([user("first"), {"role": "assistant", "content": "ok"},
                               user([{"type": "text", "text": "see"}, part])])
    assert "messages[2].content[1]" in info.value.message
    assert words in info.value.message


def test_unknown_role_is_rejected() -> None:
    with pytest.raises(ProviderRejected, match="role 'function'"):
        to_anthropic_messages([{"role": "function", "name": "f", "content": "x"}])


def test_consecutive_same_role_messages_merge() -> None:
    _, messages = to_anthropic_messages([user("one"), user("two"),
                                         {"role": "assistant", "content": "three"},
                                         {"role": "assistant", "content": "four"}])
    assert messages == [
        user([{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]),
        {"role": "assistant", "content": [{"type": "text", "text": "three"},
                                          {"type": "text", "text": "four"}]},
    ]


def test_assistant_tool_calls_become_tool_use_blocks() -> None:
    _, messages = to_anthropic_messages([user("weather?"), {
        "role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": ""}},
        ]}])
    assert messages[1] == {"role": "assistant", "content": [
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_2", "name": "now", "input": {}},
    ]}
    _, only_calls = to_anthropic_messages([{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}])
    assert only_calls[0]["content"] == [{"type": "tool_use", "id": "c", "name": "f", "input": {}}]


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]"])
def test_tool_call_arguments_must_be_a_json_object(arguments: str) -> None:
    with pytest.raises(ProviderRejected, match=r"tool_calls\[0\].*JSON object"):
        to_anthropic_messages([{"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}]}])


def test_tool_results_merge_into_one_user_message_before_any_text() -> None:
    _, messages = to_anthropic_messages([
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2",
         "content": [{"type": "text", "text": "12:00"}]},
        user("thanks, and tomorrow?"),
    ])
    assert messages == [user([
        {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
        {"type": "tool_result", "tool_use_id": "call_2",
         "content": [{"type": "text", "text": "12:00"}]},
        {"type": "text", "text": "thanks, and tomorrow?"},
    ])]
    # a user text that came first still ends up after the tool results
    _, reordered = to_anthropic_messages([
        user("note"), {"role": "tool", "tool_call_id": "c", "content": "done"}])
    assert [b["type"] for b in reordered[0]["content"]] == ["tool_result", "text"]
    with pytest.raises(ProviderRejected, match="tool_call_id"):
        to_anthropic_messages([{"role": "tool", "content": "orphan"}])


def test_tool_round_trip_openai_anthropic_openai() -> None:
    # Anthropic answers with a tool_use; the caller sees an OpenAI tool call ...
    answer: dict[str, Any] = {"type": "message", "model": "claude-test", "stop_reason": "tool_use",
              "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                           "input": {"city": "Paris", "days": [1, 2]}}],
              "usage": {"input_tokens": 5, "output_tokens": 7}}
    assistant = to_completion(answer, "chat", model="claude-test").output
    # ... and sends it back with the tool's result: Anthropic gets the same ids and input
    b = body([user("weather?"), assistant,
              {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"}],
             tools=[WEATHER])
    assert b["messages"] == [
        user("weather?"),
        {"role": "assistant", "content": [answer["content"][0]]},
        user([{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]),
    ]


# --- params ----------------------------------------------------------------------------


def test_max_tokens_default_and_precedence() -> None:
    assert body()["max_tokens"] == DEFAULT_MAX_TOKENS == 1024
    assert body(max_tokens=50)["max_tokens"] == 50
    assert body(max_tokens=50, max_completion_tokens=70)["max_tokens"] == 70


def test_sampling_stop_user_stream_and_dropped_params() -> None:
    b = build_body("m", [user("hi")], {"temperature": 0.2, "top_p": 0.9, "stop": "END",
                                       "user": "u-42", "seed": 7, "logprobs": True,
                                       "presence_penalty": 1, "text_field": "text"},
                   stream=True)
    assert b == {"model": "m", "max_tokens": 1024, "messages": [user("hi")],
                 "temperature": 0.2, "top_p": 0.9, "stop_sequences": ["END"],
                 "metadata": {"user_id": "u-42"}, "stream": True}
    assert body(stop=["a", "b"])["stop_sequences"] == ["a", "b"]
    assert "stream" not in body()


def test_tools_convert_and_anthropic_shaped_tools_pass() -> None:
    native = {"type": "web_search_20250305", "name": "web_search", "max_uses": 2}
    bare = {"type": "function", "function": {"name": "now"}}
    assert to_anthropic_tools([WEATHER, bare, native]) == [
        {"name": "get_weather", "description": "Weather in a city",
         "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
        native,
    ]
    with pytest.raises(ProviderRejected, match=r"tools\[0\]"):
        to_anthropic_tools([{"type": "function"}])


@pytest.mark.parametrize(("choice", "expected"), [
    ("auto", {"type": "auto"}),
    ("none", {"type": "none"}),
    ("required", {"type": "any"}),
    ({"type": "function", "function": {"name": "get_weather"}},
     {"type": "tool", "name": "get_weather"}),
    ({"type": "any"}, {"type": "any"}),
])
def test_tool_choice(choice: Any, expected: dict[str, Any]) -> None:
    assert to_anthropic_tool_choice(choice) == expected
    assert body(tools=[WEATHER], tool_choice=choice)["tool_choice"] == expected


def test_tool_choice_rejects_nonsense_and_needs_tools() -> None:
    with pytest.raises(ProviderRejected, match="tool_choice"):
        to_anthropic_tool_choice("sometimes")
    assert "tool_choice" not in body(tool_choice="auto")  # no tools: nothing to choose


def test_parallel_tool_calls_false() -> None:
    assert body(tools=[WEATHER], parallel_tool_calls=False)["tool_choice"] == {
        "type": "auto", "disable_parallel_tool_use": True}
    assert body(tools=[WEATHER], tool_choice="required", parallel_tool_calls=False)[
        "tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert body(tools=[WEATHER], tool_choice="none", parallel_tool_calls=False)[
        "tool_choice"] == {"type": "none"}


def test_response_format_native_params_extra_body_and_n() -> None:
    schema = {"type": "object", "properties": {"label": {"type": "string"}}}
    b = body(response_format={"type": "json_schema", "json_schema": {"name": "x",
                                                                      "schema": schema}},
             output_config={"effort": "low"}, top_k=5, thinking={"type": "disabled"},
             extra_body={"service_tier": "standard_only"})
    assert b["output_config"] == {"format": {"type": "json_schema", "schema": schema},
                                  "effort": "low"}
    assert (b["top_k"], b["thinking"], b["service_tier"]) == (5, {"type": "disabled"},
                                                               "standard_only")
    assert "output_config" not in body(response_format={"type": "json_object"})
    assert "n" not in body(n=1)
    with pytest.raises(ProviderRejected, match="n=2"):
        body(n=2)


# --- responses ---------------------------------------------------------------------------


def message(*content: dict[str, Any], stop_reason: str = "end_turn",
            **usage: int) -> dict[str, Any]:
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-real",
            "content": list(content), "stop_reason": stop_reason, "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 3, **usage}}


def text(t: str) -> dict[str, Any]:
    return {"type": "text", "text": t}


def test_usage_counts_cache_reads_and_writes_into_input() -> None:
    assert to_usage({"input_tokens": 10, "output_tokens": 3, "cache_read_input_tokens": 100,
                     "cache_creation_input_tokens": 20,
                     "output_tokens_details": {"thinking_tokens": 2}}) == Usage(
        input_tokens=130, output_tokens=3, cached_input_tokens=100, cache_write_tokens=20,
        reasoning_tokens=2)
    assert to_usage({"input_tokens": 4, "output_tokens": 1, "cache_read_input_tokens": None}) \
        == Usage(4, 1)
    assert to_usage(None) == Usage()


@pytest.mark.parametrize(("stop", "expected"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("pause_turn", "stop"),
    ("max_tokens", "length"), ("model_context_window_exceeded", "length"),
    ("tool_use", "tool_calls"), ("refusal", "content_filter"), ("brand_new", "brand_new"),
    (None, None),
])
def test_finish_reasons(stop: str | None, expected: str | None) -> None:
    assert finish_reason(stop) == expected


def test_chat_completion_with_text_and_tool_calls() -> None:
    c = to_completion(message(text("Let me "), text("check."),
                              {"type": "thinking", "thinking": "hmm", "signature": "s"},
                              {"type": "tool_use", "id": "toolu_9", "name": "get_weather",
                               "input": {"city": "Oslo"}},
                              stop_reason="tool_use", cache_read_input_tokens=5),
                      "chat", model="claude-test")
    assert c.output == {"role": "assistant", "content": "Let me check.", "tool_calls": [
        {"id": "toolu_9", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]}
    assert (c.text, c.model, c.finish_reason) == ("Let me check.", "claude-real", "tool_calls")
    assert c.usage == Usage(input_tokens=15, output_tokens=3, cached_input_tokens=5)
    plain = to_completion(message(text("hi")), "chat", model="m").output
    assert plain == {"role": "assistant", "content": "hi"}  # no tool_calls key
    only_tools = to_completion(message({"type": "tool_use", "id": "t", "name": "f", "input": {}},
                                       stop_reason="tool_use"), "chat", model="m")
    assert only_tools.output["content"] is None and only_tools.text is None


def test_label_text_and_json_kinds_are_shaped() -> None:
    assert to_completion(message(text(' "billing." ')), "label", model="m").output == {
        "label": "billing"}
    assert to_completion(message(text("Hello")), "text", model="m").output == {"text": "Hello"}
    assert to_completion(message(text('{"a": 1}')), "json", model="m").output == {"a": 1}
    c = to_completion(message(text("x"), stop_reason="max_tokens"), "text", model="m")
    assert c.finish_reason == "length"


def test_bad_messages_are_bad_responses() -> None:
    with pytest.raises(ProviderBadResponse, match="refused"):
        to_completion(message(stop_reason="refusal"), "label", model="m")
    with pytest.raises(ProviderBadResponse, match="no text"):
        to_completion(message({"type": "tool_use", "id": "t", "name": "f", "input": {}}),
                      "text", model="m")
    data: Any
    for data in ({"type": "error"}, [], "msg"):
        with pytest.raises(ProviderBadResponse, match="not an Anthropic message"):
            to_completion(data, "chat", model="m")


# --- streaming -------------------------------------------------------------------------


def sse(*events: tuple[str, dict[str, Any]]) -> list[tuple[str | None, str]]:
    return [(name, orjson.dumps(data).decode()) for name, data in events]


def ev(kind: str, **fields: Any) -> tuple[str, dict[str, Any]]:
    return kind, {"type": kind, **fields}


def run(events: list[tuple[str | None, str]]) -> tuple[list[Delta], StreamTranslator]:
    t = StreamTranslator()
    out: list[Delta] = []
    for name, data in events:
        out += t.feed(name, data)
    return out, t


START = ev("message_start", message={
    "id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "claude-s",
    "stop_reason": None, "stop_sequence": None,
    "usage": {"input_tokens": 12, "cache_read_input_tokens": 30, "output_tokens": 1}})


def test_stream_text_then_two_tool_calls() -> None:
    deltas, t = run(sse(
        START,
        ev("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        ev("ping"),
        ev("content_block_delta", index=0, delta={"type": "text_delta", "text": "Checking"}),
        ev("content_block_stop", index=0),
        ev("content_block_start", index=1, content_block={
            "type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {}}),
        ev("content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": ""}),
        ev("content_block_delta", index=1,
           delta={"type": "input_json_delta", "partial_json": '{"city": '}),
        ev("content_block_delta", index=1,
           delta={"type": "input_json_delta", "partial_json": '"Paris"}'}),
        ev("content_block_stop", index=1),
        ev("content_block_start", index=2, content_block={
            "type": "tool_use", "id": "toolu_b", "name": "now", "input": {}}),
        ev("content_block_stop", index=2),
        ev("message_delta", delta={"stop_reason": "tool_use", "stop_sequence": None},
           usage={"output_tokens": 40}),
        ev("brand_new_event", whatever=1),
        ev("message_stop"),
    ))
    assert t.done and t.model == "claude-s"
    assert deltas == [
        Delta(text="Checking"),
        Delta(tool_calls=[{"index": 0, "id": "toolu_a", "type": "function",
                           "function": {"name": "get_weather", "arguments": ""}}]),
        Delta(tool_calls=[{"index": 0, "function": {"arguments": '{"city": '}}]),
        Delta(tool_calls=[{"index": 0, "function": {"arguments": '"Paris"}'}}]),
        Delta(tool_calls=[{"index": 1, "id": "toolu_b", "type": "function",
                           "function": {"name": "now", "arguments": ""}}]),
        Delta(tool_calls=[{"index": 1, "function": {"arguments": "{}"}}]),  # no input at all
        Delta(finish_reason="tool_calls",
              usage=Usage(input_tokens=42, output_tokens=40, cached_input_tokens=30)),
    ]


def test_stream_ignores_thinking_and_takes_cumulative_usage_from_message_delta() -> None:
    deltas, t = run(sse(
        START,
        ev("content_block_start", index=0, content_block={"type": "thinking", "thinking": ""}),
        ev("content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": "hm"}),
        ev("content_block_delta", index=0, delta={"type": "signature_delta", "signature": "s"}),
        ev("content_block_start", index=1, content_block={"type": "text", "text": "Hi"}),
        ev("message_delta", delta={"stop_reason": "max_tokens"},
           usage={"output_tokens": 9, "input_tokens": 15, "cache_read_input_tokens": None}),
    ))
    assert not t.done  # no message_stop yet
    assert deltas == [Delta(text="Hi"), Delta(finish_reason="length", usage=Usage(
        input_tokens=45, output_tokens=9, cached_input_tokens=30))]


def test_stream_error_event_and_malformed_events() -> None:
    with pytest.raises(AnthropicStreamError) as info:
        run(sse(START, ev("error", error={"type": "overloaded_error", "message": "Overloaded"})))
    assert (info.value.error_type, info.value.message) == ("overloaded_error", "Overloaded")
    for bad in ("not json", "[1]", '{"type": "content_block_delta"}'):
        with pytest.raises(ValueError):
            StreamTranslator().feed("content_block_delta", bad)


def test_sse_decoder() -> None:
    d = SSEDecoder()
    lines = [": comment", "event: message_start", 'data: {"a":', "data: 1}", "",
             "", "data: {}", "", "event: ping", "data:{}"]
    out = [e for line in lines if (e := d.feed(line)) is not None]
    assert out == [("message_start", '{"a":\n1}'), (None, "{}")]
    assert d.flush() == ("ping", "{}")
    assert d.flush() is None
