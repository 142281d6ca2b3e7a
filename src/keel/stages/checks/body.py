"""Turning raw request bytes into a JSON object: size, encoding and syntax checks.

This runs before a :class:`~keel.types.Call` exists, so it works on bytes, not calls.
"""

from __future__ import annotations

from typing import Any

import orjson

from keel.errors import BodyTooLarge, EmptyBody, InvalidEncoding, InvalidJSON, InvalidRequest


def check_size(size: int, limit: int) -> None:
    if size > limit:
        raise BodyTooLarge(
            f"request body is {size} bytes; the limit is {limit} bytes "
            "(send less, or raise KEEL_MAX_BODY_BYTES)"
        )


def parse_json_object(raw: bytes, limit: int) -> dict[str, Any]:
    check_size(len(raw), limit)
    if not raw.strip():
        raise EmptyBody("request body is empty; send a JSON object")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as uexc:
            raise InvalidEncoding(
                f"request body is not valid UTF-8 (byte {uexc.start}); encode text as UTF-8"
            ) from None
        raise InvalidJSON(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest(f"request body must be a JSON object, got {type(data).__name__}")
    return data
