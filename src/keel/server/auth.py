"""Gateway keys: when any are configured, every ``/v1`` and ``/api`` request must carry
one as ``Authorization: Bearer <key>`` (or ``x-api-key``), and so must ``/metrics``
(Prometheus sends it with ``authorization.credentials``), else 401 ``invalid_api_key``
in OpenAI's error shape, so its SDK raises ``AuthenticationError``.

Keys are held only as SHA-256 digests and compared in constant time. The key's short
id (the first 12 hex digits of its digest) is what events record, never the key.
Roles, per-feature scopes and key management arrive with the access-control work;
this is the seam they replace.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from keel.errors import InvalidApiKey
from keel.server.errors import error_response

PROTECTED_PREFIXES = ("/v1/", "/api/", "/metrics")


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id(key: str) -> str:
    return digest(key)[:12]


class KeyAuth:
    """Pure ASGI middleware: one header lookup and one digest per request."""

    def __init__(self, app: ASGIApp, keys: Iterable[str]) -> None:
        self.app = app
        self._digests = [digest(k).encode() for k in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._digests or not scope["path"].startswith(PROTECTED_PREFIXES):
            await self.app(scope, receive, send)
            return
        presented = None
        for name, value in scope["headers"]:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                presented = value[7:].strip()
            elif name == b"x-api-key" and presented is None:
                presented = value.strip()
        if presented:
            candidate = hashlib.sha256(presented).hexdigest().encode()
            if any(hmac.compare_digest(candidate, d) for d in self._digests):
                scope.setdefault("state", {})["key_id"] = candidate[:12].decode()
                await self.app(scope, receive, send)
                return
        message = ("Incorrect API key provided." if presented else
                   "Missing API key: send it as 'Authorization: Bearer <key>'.")
        response = error_response(InvalidApiKey.code, message, InvalidApiKey.status, InvalidApiKey.type,
                                  headers={"www-authenticate": "Bearer"})
        await response(scope, receive, send)


def request_key_id(scope: Scope) -> str | None:
    """The id of the key a request was let in with, for events and ledgers."""
    state = scope.get("state")
    return state.get("key_id") if isinstance(state, dict) else None
