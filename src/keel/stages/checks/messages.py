"""Checks on a chat feature's conversation: well-formed messages, bounded size."""

from __future__ import annotations

from typing import Any

from keel.errors import EmptyText, InvalidEncoding, InvalidRequest, TextTooLong
from keel.types import Call

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content
                       if isinstance(p, dict) and isinstance(p.get("text", ""), str))
    return ""


class MessagesCheck:
    name = "messages"

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars

    def __call__(self, call: Call) -> None:
        messages = call.input.get("messages")
        if not isinstance(messages, list):
            return  # the schema check reports it
        total = 0
        has_text = False
        for i, message in enumerate(messages):
            param = f"messages[{i}]"
            role = message.get("role") if isinstance(message, dict) else None
            if role not in ROLES:
                raise InvalidRequest(
                    f"{param}.role must be one of {', '.join(sorted(ROLES))}, got {role!r}",
                    param=f"{param}.role")
            content = message.get("content")
            if content is not None and not isinstance(content, str | list):
                raise InvalidRequest(f"{param}.content must be a string or an array of parts",
                                     param=f"{param}.content")
            text = _text_of(content)
            has_text = has_text or bool(text.strip()) or bool(message.get("tool_calls"))
            total += len(text)
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidEncoding(f"{param}.content is not valid Unicode text",
                                      param=f"{param}.content") from None
        if not has_text:
            raise EmptyText("every message is empty; send some text", param="messages")
        if total > self.max_chars:
            raise TextTooLong(f"the messages hold {total} characters; this feature accepts at "
                              f"most {self.max_chars}", param="messages")
