"""Keel's error responses as Keel's own exceptions.

The server answers every error as ``{"error": {"code", "message", "type", "param"}}``
(:mod:`keel.server.errors`); the code names a class of :mod:`keel.errors`, which is
raised with the server's message and param, ``retry_after`` from the ``Retry-After``
header and, for ``all_targets_failed``, the call's ``trace_id``. A code this client does
not know (a newer server) raises the nearest class for the status with the server's
code, status and type on the instance.
"""

from __future__ import annotations

import contextlib
import email.utils
import math
import time
from collections.abc import Mapping
from typing import Any

import orjson

import keel.errors as errors
from keel.errors import KeelError


def _classes() -> dict[str, type[KeelError]]:
    """code -> the most specific class with that code (``not_found`` is RouteNotFound)."""
    out: dict[str, type[KeelError]] = {}
    for value in vars(errors).values():
        if isinstance(value, type) and issubclass(value, KeelError):
            have = out.get(value.code)
            if have is None or issubclass(value, have):
                out[value.code] = value
    return out


CLASSES = _classes()
_BY_STATUS: dict[int, type[KeelError]] = {
    400: errors.RequestError, 401: errors.InvalidApiKey, 404: errors.NotFound,
    409: errors.ControlConflict, 413: errors.BodyTooLarge, 422: errors.RequestError,
}


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None when
    absent or unreadable."""
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


def error_from_response(status: int, content: bytes, headers: Mapping[str, str]) -> KeelError:
    """The exception for an error response."""
    body: Any = None
    with contextlib.suppress(orjson.JSONDecodeError):  # not JSON: handled below
        body = orjson.loads(content) if content else None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):  # not Keel's answer (a proxy in between, say)
        text = content.decode("utf-8", "replace").strip()[:200]
        error = {"code": f"http_{status}", "message": f"HTTP {status}: {text or 'no body'}"}
    code = str(error.get("code") or f"http_{status}")
    message = str(error.get("message") or f"HTTP {status}")
    param = error.get("param")
    cls = CLASSES.get(code) or _BY_STATUS.get(status, KeelError)
    exc = cls.__new__(cls)
    KeelError.__init__(exc, message, param=param if isinstance(param, str) else None)
    if cls.code != code or cls.status != status:  # a code this client does not know
        exc.code, exc.status = code, status
        if isinstance(error.get("type"), str):
            exc.type = error["type"]
    exc.retry_after = retry_after(headers)
    if isinstance(body, dict) and isinstance(body.get("trace_id"), str):
        exc.trace_id = body["trace_id"]  # type: ignore[attr-defined]
    return exc
