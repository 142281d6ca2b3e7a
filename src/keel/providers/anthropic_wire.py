"""Pure translation between Keel's OpenAI-shaped world and Anthropic's Messages API.

No I/O here: :mod:`keel.providers.anthropic` sends what :func:`build_body` makes and
hands back what arrives to :func:`to_completion` or a :class:`StreamTranslator`.

Requests: system and developer messages (anywhere) join into ``system``; assistant
``tool_calls`` become ``tool_use`` blocks; ``tool`` messages become ``tool_result``
blocks of a user message; consecutive same-role messages merge (Anthropic wants the
roles to alternate). Chat Completions params map onto Anthropic's (``stop`` ->
``stop_sequences``, ``user`` -> ``metadata.user_id``, ``tool_choice: required`` ->
``{"type": "any"}``, ``response_format`` json_schema -> ``output_config.format``;
``json_object`` has no equivalent and is dropped). Params OpenAI has no name for
(``top_k``, ``thinking``, ``output_config``) pass as they are; ``extra_body`` merges last.
Params Anthropic has no equivalent for (``seed``, ``logprobs``, penalties) are dropped.

Usage follows Keel's convention: ``input_tokens`` is the whole prompt, cache reads and
writes included; ``cached_input_tokens`` and ``cache_write_tokens`` are parts of it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from keel.errors import ProviderBadResponse, ProviderRejected
from keel.providers.base import OutputKind, shape_output
from keel.types import Completion, Delta, Usage

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024

FINISH_REASONS: Mapping[str, str] = {
    "end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop",
    "max_tokens": "length", "model_context_window_exceeded": "length",
    "tool_use": "tool_calls", "refusal": "content_filter",
}
IMAGE_TYPES: frozenset[str] = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
# Anthropic-native params with no Chat Completions name: forwarded as they are
NATIVE_PARAMS: frozenset[str] = frozenset({"top_k", "thinking", "stop_sequences", "output_config"})

_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+);base64,(.*)", re.DOTALL)
_TOOL_CHOICES: Mapping[str, dict[str, Any]] = {
    "auto": {"type": "auto"}, "none": {"type": "none"}, "required": {"type": "any"},
}


def finish_reason(stop_reason: str | None) -> str | None:
    """Anthropic's stop_reason in OpenAI's vocabulary (unknown ones pass unchanged)."""
    return None if stop_reason is None else FINISH_REASONS.get(stop_reason, stop_reason)


# --- requests -----------------------------------------------------------------------


def _text_of(content: Any, where: str) -> str:
    """The text of a system/developer message: a string or a list of text parts."""
    blocks = _blocks(content, where)
    if any(block["type"] != "text" for block in blocks):
        raise ProviderRejected(f"{where}: system and developer messages take text only")
    return "\n".join(block["text"] for block in blocks)


def _image_block(part: dict[str, Any], where: str) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    match = _DATA_URL.fullmatch(url) if isinstance(url, str) else None
    if match is None:
        shown = url[:40] + "..." if isinstance(url, str) and len(url) > 40 else url
        raise ProviderRejected(
            f"{where}: image_url {shown!r} is not a base64 data: URL; send the image inline "
            "as data:<media type>;base64,<data> (the anthropic provider does not fetch URLs)"
        )
    media_type, data = match.groups()
    if media_type not in IMAGE_TYPES:
        raise ProviderRejected(f"{where}: image type {media_type!r} is not supported by "
                               f"Anthropic (use one of {', '.join(sorted(IMAGE_TYPES))})")
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """User or assistant content (a string or OpenAI content parts) as Anthropic blocks."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise ProviderRejected(f"{where}: content must be a string, a list of parts or null")
    blocks: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        at = f"{where}[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            block: dict[str, Any] = {"type": "text", "text": part["text"]}
            if not block["text"]:
                continue
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            block = {"type": "text", "text": part["refusal"]}
        elif kind == "image_url":
            block = _image_block(part, at)
        else:
            raise ProviderRejected(f"{at}: content part of type {kind!r} is not supported by the "
                                   "anthropic provider (text and base64 image_url are)")
        if isinstance(part.get("cache_control"), dict):
            block["cache_control"] = part["cache_control"]
        blocks.append(block)
    return blocks


def _tool_use(call: Any, where: str) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ProviderRejected(f"{where}: a tool call needs function.name")
    raw = function.get("arguments") or "{}"
    try:
        arguments = orjson.loads(raw) if isinstance(raw, str | bytes) else raw
    except orjson.JSONDecodeError:
        arguments = None
    if not isinstance(arguments, dict):
        raise ProviderRejected(f"{where}: function.arguments must be a JSON object, not {raw!r}")
    return {"type": "tool_use", "id": str(call.get("id") or ""), "name": function["name"],
            "input": arguments}


def _tool_result(message: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise ProviderRejected(f"{where}: a tool message needs tool_call_id")
    content = message.get("content")
    result: Any = content if isinstance(content, str) else _blocks(content, f"{where}.content")
    return {"type": "tool_result", "tool_use_id": call_id, "content": result}


def _push(out: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    """Append blocks, merging with the previous message when it has the same role.
    ``tool_result`` blocks go before any other block of their user message."""
    if not out or out[-1]["role"] != role:
        out.append({"role": role, "content": []})
    content: list[dict[str, Any]] = out[-1]["content"]
    for block in blocks:
        if block["type"] == "tool_result":
            at = next((i for i, b in enumerate(content) if b["type"] != "tool_result"),
                      len(content))
            content.insert(at, block)
        else:
            content.append(block)


def to_anthropic_messages(
    messages: list[dict[str, Any]], system: str | None = None
) -> tuple[str | None, list[dict[str, Any]]]:
    """OpenAI chat messages -> (Anthropic ``system``, Anthropic ``messages``)."""
    systems = [system] if system else []
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message.get("role") if isinstance(message, dict) else None
        if role in ("system", "developer"):
            text = _text_of(message.get("content"), f"{where}.content")
            if text:
                systems.append(text)
        elif role == "user":
            _push(out, "user", _blocks(message.get("content"), f"{where}.content"))
        elif role == "assistant":
            blocks = _blocks(message.get("content"), f"{where}.content")
            calls = message.get("tool_calls") or []
            blocks += [_tool_use(c, f"{where}.tool_calls[{j}]") for j, c in enumerate(calls)]
            if blocks:
                _push(out, "assistant", blocks)
        elif role == "tool":
            _push(out, "user", [_tool_result(message, where)])
        else:
            raise ProviderRejected(f"{where}: role {role!r} is not supported by the anthropic "
                                   "provider (system, developer, user, assistant, tool are)")
    for message in out:  # a lone text block reads better as a plain string
        blocks = message["content"]
        if not blocks:
            message["content"] = ""
        elif len(blocks) == 1 and blocks[0]["type"] == "text" and len(blocks[0]) == 2:
            message["content"] = blocks[0]["text"]
    return ("\n\n".join(systems) or None), out


def to_anthropic_tools(tools: list[Any]) -> list[dict[str, Any]]:
    """OpenAI function tools -> Anthropic tools; Anthropic-shaped tools pass unchanged."""
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            converted: dict[str, Any] = {"name": function["name"]}
            if function.get("description"):
                converted["description"] = function["description"]
            converted["input_schema"] = function.get("parameters") or {
                "type": "object", "properties": {}}
            out.append(converted)
        elif isinstance(tool, dict) and isinstance(tool.get("name"), str):
            out.append(tool)
        else:
            raise ProviderRejected(f"tools[{i}]: expected {{'type': 'function', 'function': "
                                   "{'name', 'description', 'parameters'}}")
    return out


def to_anthropic_tool_choice(choice: Any) -> dict[str, Any]:
    """auto/none/required/{"function": {"name"}} -> Anthropic's tool_choice."""
    if isinstance(choice, str) and choice in _TOOL_CHOICES:
        return dict(_TOOL_CHOICES[choice])
    if isinstance(choice, dict):
        function = choice.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return {"type": "tool", "name": function["name"]}
        if choice.get("type") in ("auto", "any", "none", "tool"):
            return dict(choice)
    raise ProviderRejected(f"tool_choice {choice!r}: expected auto, none, required or "
                           "{'type': 'function', 'function': {'name': ...}}")


def build_body(model: str, messages: list[dict[str, Any]], params: Mapping[str, Any], *,
               system: str | None = None, stream: bool = False) -> dict[str, Any]:
    """The JSON body of ``POST /v1/messages``. ``params`` are Chat Completions params
    (a version's, overridden by the call's options)."""
    joined, converted = to_anthropic_messages(messages, system)
    max_tokens = params.get("max_completion_tokens") or params.get("max_tokens")
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens or DEFAULT_MAX_TOKENS}
    if joined:
        body["system"] = joined
    body["messages"] = converted
    if (n := params.get("n")) is not None and n != 1:
        raise ProviderRejected(f"n={n}: Anthropic returns one answer per request")
    for key in ("temperature", "top_p"):
        if params.get(key) is not None:
            body[key] = params[key]
    stop = params.get("stop")
    if stop:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    tools = params.get("tools")
    if tools:
        body["tools"] = to_anthropic_tools(tools)
        choice = params.get("tool_choice")
        if choice is not None:
            body["tool_choice"] = to_anthropic_tool_choice(choice)
        if params.get("parallel_tool_calls") is False and body.get("tool_choice", {}).get(
                "type") != "none":
            body["tool_choice"] = {**body.get("tool_choice", {"type": "auto"}),
                                   "disable_parallel_tool_use": True}
    if isinstance(params.get("user"), str):
        body["metadata"] = {"user_id": params["user"]}
    response_format = params.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if isinstance(schema, dict):
            body["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    for key in NATIVE_PARAMS:
        value = params.get(key)
        if value is not None:
            body[key] = {**body[key], **value} if key == "output_config" and key in body else value
    extra = params.get("extra_body")
    if isinstance(extra, dict):
        body.update(extra)
    if stream:
        body["stream"] = True
    return body


# --- responses ----------------------------------------------------------------------


def to_usage(usage: Any) -> Usage:
    """Anthropic's usage -> Keel's (cache reads and writes counted into input_tokens)."""
    if not isinstance(usage, dict):
        return Usage()
    read = usage.get("cache_read_input_tokens") or 0
    write = usage.get("cache_creation_input_tokens") or 0
    details = usage.get("output_tokens_details")
    thinking = (details.get("thinking_tokens") or 0) if isinstance(details, dict) else 0
    return Usage(input_tokens=(usage.get("input_tokens") or 0) + read + write,
                 output_tokens=usage.get("output_tokens") or 0,
                 cached_input_tokens=read, cache_write_tokens=write, reasoning_tokens=thinking)


def tool_call(block: dict[str, Any]) -> dict[str, Any]:
    """A ``tool_use`` block as an OpenAI tool call."""
    return {"id": block.get("id"), "type": "function",
            "function": {"name": block.get("name"),
                         "arguments": orjson.dumps(block.get("input") or {}).decode()}}


def to_completion(data: Any, kind: OutputKind, *, model: str) -> Completion:
    """An Anthropic message -> a Completion in the feature's output shape.
    Raises ProviderBadResponse when it is not a message or has no text to shape."""
    content = data.get("content") if isinstance(data, dict) else None
    if not isinstance(content, list):
        raise ProviderBadResponse("the body is not an Anthropic message (no content list)")
    texts = [b["text"] for b in content
             if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)]
    calls = [tool_call(b) for b in content if isinstance(b, dict) and b.get("type") == "tool_use"]
    text = "".join(texts) if texts else None
    stop_reason = data.get("stop_reason")
    if kind == "chat":
        output: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            output["tool_calls"] = calls
        shaped: Any = output
    elif text is None:
        why = "the model refused" if stop_reason == "refusal" else "it has no text content"
        raise ProviderBadResponse(f"{why} (stop_reason {stop_reason!r})")
    else:
        shaped = shape_output(kind, text)
    return Completion(output=shaped, usage=to_usage(data.get("usage")), text=text,
                      model=data.get("model") or model, finish_reason=finish_reason(stop_reason))


# --- streaming ----------------------------------------------------------------------


class AnthropicStreamError(Exception):
    """An ``error`` event in the stream (e.g. ``overloaded_error``)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message


class SSEDecoder:
    """Server-sent events, one line at a time: ``feed`` returns ``(event, data)`` when a
    blank line ends an event with data, else None."""

    def __init__(self) -> None:
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, line: str) -> tuple[str | None, str] | None:
        if not line:
            return self.flush()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None

    def flush(self) -> tuple[str | None, str] | None:
        event, data = self._event, self._data
        self._event, self._data = None, []
        return (event, "\n".join(data)) if data else None


class StreamTranslator:
    """Anthropic stream events -> OpenAI-semantics :class:`Delta` objects.

    Tool calls are numbered 0, 1, ... among ``tool_use`` blocks only (OpenAI's index),
    not by Anthropic's block index. ``finish_reason`` and the whole usage arrive on
    one delta, at ``message_delta``; ``done`` turns true at ``message_stop``."""

    def __init__(self) -> None:
        self.done = False
        self.model: str | None = None
        self._usage: dict[str, Any] = {}
        self._tools: dict[int, int] = {}  # Anthropic block index -> OpenAI tool index
        self._empty_args: set[int] = set()  # tool blocks that got no arguments yet

    def feed(self, event: str | None, data: str) -> list[Delta]:
        """One event's deltas. Raises ValueError on a malformed event and
        :class:`AnthropicStreamError` on an ``error`` event."""
        payload = orjson.loads(data)
        if not isinstance(payload, dict):
            raise ValueError(f"event data is not an object: {data[:80]!r}")
        try:
            return self._feed(event or payload.get("type"), payload, data)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed {event} event ({type(exc).__name__}: {exc}): "
                             f"{data[:120]!r}") from None

    def _feed(self, kind: Any, payload: dict[str, Any], data: str) -> list[Delta]:
        if kind == "error":
            error = payload.get("error") or {}
            raise AnthropicStreamError(str(error.get("type") or "error"),
                                       str(error.get("message") or data[:200]))
        if kind == "message_start":
            message = payload["message"]
            self.model = message.get("model")
            self._usage = dict(message.get("usage") or {})
        elif kind == "content_block_start":
            return self._block_start(int(payload["index"]), payload["content_block"])
        elif kind == "content_block_delta":
            return self._block_delta(int(payload["index"]), payload["delta"])
        elif kind == "content_block_stop":
            index = int(payload["index"])
            if index in self._empty_args:  # a tool called with no arguments at all
                self._empty_args.discard(index)
                return [self._tool_delta(index, {"arguments": "{}"})]
        elif kind == "message_delta":
            usage = payload.get("usage") or {}
            self._usage.update({k: v for k, v in usage.items() if v is not None})
            reason = finish_reason((payload.get("delta") or {}).get("stop_reason"))
            return [Delta(finish_reason=reason, usage=to_usage(self._usage))]
        elif kind == "message_stop":
            self.done = True
        return []  # ping, and event types added after this was written

    def _tool_delta(self, index: int, function: dict[str, Any],
                    **extra: Any) -> Delta:
        return Delta(tool_calls=[{"index": self._tools[index], **extra, "function": function}])

    def _block_start(self, index: int, block: dict[str, Any]) -> list[Delta]:
        if block.get("type") == "text":
            return [Delta(text=block["text"])] if block.get("text") else []
        if block.get("type") != "tool_use":
            return []  # thinking and server-tool blocks stay inside
        self._tools[index] = len(self._tools)
        arguments = orjson.dumps(block["input"]).decode() if block.get("input") else ""
        if not arguments:
            self._empty_args.add(index)
        return [self._tool_delta(index, {"name": block.get("name"), "arguments": arguments},
                                 id=block.get("id"), type="function")]

    def _block_delta(self, index: int, delta: dict[str, Any]) -> list[Delta]:
        kind = delta.get("type")
        if kind == "text_delta":
            return [Delta(text=delta["text"])] if delta.get("text") else []
        if kind == "input_json_delta" and index in self._tools and delta.get("partial_json"):
            self._empty_args.discard(index)
            return [self._tool_delta(index, {"arguments": delta["partial_json"]})]
        return []
