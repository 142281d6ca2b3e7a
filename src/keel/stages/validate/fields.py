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
