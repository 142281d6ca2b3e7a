"""Gateway keys and roles: pure ASGI middleware in front of every route.

A request carries its key as ``Authorization: Bearer <key>`` (or ``x-api-key``);
Prometheus sends it with ``authorization.credentials``. No key, or an unknown one, is
401 ``invalid_api_key`` in OpenAI's error shape (its SDK raises
``AuthenticationError``); a key whose role or features do not cover the request is 403
``permission_denied`` naming the role needed. The rules are
:data:`keel.server.access.RULES`.

Keys are those created with ``keel keys create`` or ``POST /api/keys`` (kept as sha256
digests in the store) and those in ``KEEL_API_KEYS`` (admins). Each process holds the
live keys in a small cache, re-read from the store when it is ``ttl_s`` old (so a key
revoked by another process stops working within seconds) and, at most every
``miss_s``, when a key it does not know arrives (so a new key works at once); the hot
path hashes the key and looks it up in a dict. With no key anywhere, requests pass as
``anonymous`` admin, which :func:`keel.cli.serve.serve` allows only on a loopback
address (or with ``--insecure-no-auth``); elsewhere they get 401 until a key exists.
The key's short id (first 12 hex digits of its digest) is what events record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from urllib.parse import parse_qs

import anyio.to_thread
from starlette.types import ASGIApp, Receive, Scope, Send

from keel.control.keys import ANONYMOUS, Principal, digest, env_principal, key_id, live_digests
from keel.errors import AuthUnavailable, InvalidApiKey, KeelError, PermissionDenied
from keel.server.access import Rule, Rules, feature_denied, principal_of, role_denied
from keel.server.errors import error_response
from keel.store.db import Store

__all__ = ["KeyAuth", "KeyCache", "digest", "key_id", "request_actor", "request_key_id"]

log = logging.getLogger("keel.server")


class KeyCache:
    """digest -> principal of every live key, re-read from the store when stale."""

    def __init__(self, load: Callable[[], Mapping[str, Principal]], env_keys: Iterable[str] = (),
                 *, ttl_s: float = 2.0, miss_s: float = 0.5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._load = load
        self._env = {digest(k): env_principal(k) for k in env_keys}
        self.ttl_s, self.miss_s, self._clock = ttl_s, miss_s, clock
        self._keys: dict[str, Principal] | None = None
        self._at = float("-inf")
        self._lock: asyncio.Lock | None = None
        self.loads = 0

    async def keys(self) -> dict[str, Principal]:
        """The live keys, at most ``ttl_s`` old."""
        if self._keys is None or self._clock() - self._at >= self.ttl_s:
            await self._refresh(self.ttl_s)
        assert self._keys is not None
        return self._keys

    async def lookup(self, key_digest: str) -> Principal | None:
        keys = await self.keys()
        found = keys.get(key_digest)
        if found is None and self._clock() - self._at >= self.miss_s:
            await self._refresh(self.miss_s)  # a key created since the last read
            found = (self._keys or {}).get(key_digest)
        return found

    async def _refresh(self, older_than: float) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # one read at a time; the others take its result
            if self._keys is not None and self._clock() - self._at < older_than:
                return
            try:
                stored = await anyio.to_thread.run_sync(self._load)
            except Exception as exc:
                if self._keys is None and not self._env:
                    raise AuthUnavailable("the API keys cannot be read from the store "
                                          f"({type(exc).__name__}); try again shortly") from exc
                log.warning("API keys not re-read (%s: %s); using the ones read before",
                            type(exc).__name__, exc)
                self._keys = self._keys if self._keys is not None else dict(self._env)
                self._at = self._clock() - self.ttl_s + self.miss_s  # retry soon
                return
            self.loads += 1
            self._keys = {**stored, **self._env}
            self._at = self._clock()


def _presented(scope: Scope) -> bytes | None:
    presented = None
    for name, value in scope["headers"]:
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            presented = value[7:].strip()
        elif name == b"x-api-key" and presented is None:
            presented = value.strip()
    return presented or None


def _query_feature(scope: Scope) -> str | None:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("feature")
    return values[0] if values and values[0] else None


class KeyAuth:
    """Pure ASGI middleware: one header scan, one digest and two dict lookups per request
    (the route's rule is remembered per path)."""

    def __init__(self, app: ASGIApp, store: Store, keys: Iterable[str] = (), *,
                 open_ok: bool = True, ttl_s: float = 2.0, miss_s: float = 0.5,
                 cache: KeyCache | None = None, rules: Rules | None = None) -> None:
        self.app = app
        self.store = store
        self.open_ok = open_ok  # no key anywhere: let requests in (loopback only)
        self.cache = cache or KeyCache(lambda: live_digests(store), keys, ttl_s=ttl_s,
                                       miss_s=miss_s)
        self.rules = rules or Rules()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        rule, value = self.rules.match(method, path)
        if rule.kind == "public":
            await self.app(scope, receive, send)
            return
        try:
            principal = await self._principal(scope)
            why = role_denied(principal, rule, method, path)
            if why is None and principal.features is not None:
                why = await self._feature_denied(principal, rule, value, scope)
        except KeelError as exc:
            headers = {"www-authenticate": "Bearer"} if exc.status == 401 else None
            response = error_response(exc.code, exc.message, exc.status, exc.type,
                                      headers=headers)
            await response(scope, receive, send)
            return
        if why is not None:
            response = error_response(PermissionDenied.code, why, PermissionDenied.status,
                                      PermissionDenied.type)
            await response(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["principal"] = principal
        state["key_id"] = principal.id or None
        await self.app(scope, receive, send)

    async def _principal(self, scope: Scope) -> Principal:
        presented = _presented(scope)
        keys = await self.cache.keys()
        if not keys:
            if self.open_ok:
                return ANONYMOUS
            raise InvalidApiKey("this server has no API keys yet and is not on a loopback "
                                "address: create one with `keel keys create --name NAME "
                                "--role admin`")
        if presented is None:
            raise InvalidApiKey("Missing API key: send it as 'Authorization: Bearer <key>'.")
        principal = await self.cache.lookup(digest(presented))
        if principal is None:
            raise InvalidApiKey("Incorrect API key provided.")
        return principal

    async def _feature_denied(self, principal: Principal, rule: Rule, value: str | None,
                              scope: Scope) -> str | None:
        if rule.kind == "path":
            return feature_denied(principal, value, what="")
        if rule.kind == "query":
            return feature_denied(principal, _query_feature(scope),
                                  what=f"add ?feature=NAME to {scope['path']}")
        if rule.kind == "global":
            return feature_denied(principal, None,
                                  what=f"{scope['method']} {scope['path']} spans every feature")
        if rule.kind == "lookup" and value is not None and rule.table and rule.column:
            feature = await anyio.to_thread.run_sync(self._lookup, rule.table, rule.column, value)
            # unknown id: the handler answers 404 as it would for anyone
            return None if feature is None else feature_denied(principal, feature, what="")
        return None  # body / list: the handler checks (keel.server.access)

    def _lookup(self, table: str, column: str, value: str) -> str | None:
        with self.store.connection() as conn:
            row = conn.execute(f"SELECT feature FROM {table} WHERE {column} = ?",
                               (value,)).fetchone()
        return None if row is None else str(row[0])


def request_key_id(scope: Scope) -> str | None:
    """The id of the key a request was let in with, for events and ledgers."""
    state = scope.get("state")
    return state.get("key_id") if isinstance(state, dict) else None


def request_actor(scope: Scope) -> str:
    """Who a control-plane change made by this request is recorded as: ``key:<name>``
    (an env key's name is its id), ``api:anonymous`` when no keys exist."""
    principal = principal_of(scope)
    if principal is None or principal is ANONYMOUS:
        return "api:anonymous"
    return principal.actor
