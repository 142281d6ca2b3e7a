"""Checks on the feature's text field: not empty, valid Unicode, not too long."""

from __future__ import annotations

from keel.errors import EmptyText, InvalidEncoding, TextTooLong
from keel.types import Call


class TextCheck:
    name = "text"

    def __init__(self, field: str, max_chars: int) -> None:
        self.field = field
        self.max_chars = max_chars

    def __call__(self, call: Call) -> None:
        value = call.input.get(self.field)
        if not isinstance(value, str):
            return  # absence and type are the schema check's business
        param = f"input.{self.field}"
        if not value.strip():
            raise EmptyText(f"{param} is empty; send the text to process", param=param)
        if len(value) > self.max_chars:
            raise TextTooLong(
                f"{param} has {len(value)} characters; this feature accepts at most "
                f"{self.max_chars}",
                param=param,
            )
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            # lone surrogates (e.g. a JSON "\ud800" escape) are not text
            raise InvalidEncoding(
                f"{param} is not valid Unicode text (position {exc.start}); send UTF-8 text",
                param=param,
            ) from None
