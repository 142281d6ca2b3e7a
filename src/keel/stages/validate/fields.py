"""Which string of an output a text rule looks at."""

from __future__ import annotations

from keel.types import JSON


def field_text(output: JSON, field: str | None) -> str | None:
    """The string a text rule applies to: ``output[field]``, or the output itself."""
    if field is not None:
        value = output.get(field) if isinstance(output, dict) else None
    elif isinstance(output, str):
        value = output
    elif isinstance(output, dict):
        value = output.get("text", output.get("label", output.get("content")))
    else:
        value = None
    return value if isinstance(value, str) else None


def replace_text(output: JSON, field: str | None, text: str) -> JSON:
    """``output`` with the string :func:`field_text` reads replaced by ``text``."""
    if isinstance(output, str):
        return text
    if isinstance(output, dict):
        key = field or next((k for k in ("text", "label", "content") if k in output), "text")
        return {**output, key: text}
    return output
