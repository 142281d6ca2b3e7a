"""What the access middleware (keel.server.auth.KeyAuth) adds to one request, in process.

A bare ASGI app that answers at once is called N times directly, then behind the
middleware Keel had before roles (for reference), then behind KeyAuth in each mode: no keys (open, loopback), an env key (KEEL_API_KEYS), a stored app key on
``POST /v1/features/{name}``, the same key limited to that feature, a viewer on a
``?feature=`` read, and a wrong key (401). The store is a real SQLite file with the keys
in it; the key cache re-reads it every 2 s (its default), and the run prints how many
reads that made. Added cost = (time behind KeyAuth - time bare) / N, median of rounds.

    .venv/bin/python bench/auth.py              # ~20 s
    .venv/bin/python bench/auth.py --n 20000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from keel.control import keys
from keel.server.auth import KeyAuth
from keel.store.sqlite import SQLiteStore


async def bare(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


class PreviousAuth:
    """The middleware before roles (one env key list, digests compared in constant time),
    for reference: what the same request cost then."""

    def __init__(self, app: Any, keys: list[str]) -> None:
        self.app = app
        self._digests = [hashlib.sha256(k.encode()).hexdigest().encode() for k in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not scope["path"].startswith(("/v1/", "/api/", "/metrics")):
            await self.app(scope, receive, send)
            return
        presented = None
        for name, value in scope["headers"]:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                presented = value[7:].strip()
        if presented:
            candidate = hashlib.sha256(presented).hexdigest().encode()
            if any(hmac.compare_digest(candidate, d) for d in self._digests):
                scope.setdefault("state", {})["key_id"] = candidate[:12].decode()
                await self.app(scope, receive, send)


async def receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: Message) -> None:
    return None


def scope_for(method: str, path: str, key: str | None, query: bytes = b"") -> Scope:
    headers = [(b"host", b"keel"), (b"content-type", b"application/json")]
    if key is not None:
        headers.append((b"authorization", b"Bearer " + key.encode()))
    return {"type": "http", "method": method, "path": path, "query_string": query,
            "headers": headers}


async def per_call(app: Any, scope: Scope, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        await app({**scope}, receive, send)  # a fresh scope, as a server makes
    return (time.perf_counter() - start) / n


async def main(n: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "keel.db")
        store.migrate()
        app_key = keys.create(store, "app", "app", actor="bench")[1]
        limited = keys.create(store, "app-f", "app", ["intent"], actor="bench")[1]
        viewer = keys.create(store, "viewer", "viewer", ["intent"], actor="bench")[1]
        for i in range(50):  # a realistic number of keys
            keys.create(store, f"other-{i}", "viewer", actor="bench")
        empty = SQLiteStore(Path(tmp) / "empty.db")
        empty.migrate()
        call = ("POST", "/v1/features/intent")
        cases: list[tuple[str, Any, Scope]] = [
            ("previous middleware, env key (reference)", PreviousAuth(bare, ["sk-env"]),
             scope_for(*call, "sk-env")),
            ("no keys (open, loopback)", KeyAuth(bare, empty), scope_for(*call, None)),
            ("env key (KEEL_API_KEYS)", KeyAuth(bare, empty, ["sk-env"]),
             scope_for(*call, "sk-env")),
            ("stored app key", KeyAuth(bare, store), scope_for(*call, app_key)),
            ("stored key limited to the feature", KeyAuth(bare, store), scope_for(*call, limited)),
            ("viewer, GET /api/events?feature=", KeyAuth(bare, store),
             scope_for("GET", "/api/events", viewer, b"feature=intent&limit=50")),
            ("wrong key (401)", KeyAuth(bare, store), scope_for(*call, "keel_wrong")),
        ]
        for _, auth, scope in cases:  # warm: first read of the keys, route memo
            await per_call(auth, scope, 100)
        results: dict[str, list[float]] = {name: [] for name, _, _ in cases}
        loads_before = {name: auth.cache.loads for name, auth, _ in cases
                        if isinstance(auth, KeyAuth)}
        started = time.perf_counter()
        for _ in range(rounds):
            for name, auth, scope in cases:
                base = await per_call(bare, scope, n)
                results[name].append(await per_call(auth, scope, n) - base)
        elapsed = time.perf_counter() - started
        print(f"KeyAuth added cost per request (median of {rounds} rounds of {n} calls; "
              f"{elapsed:.1f} s in all)")
        for name, auth, _ in cases:
            added = statistics.median(results[name]) * 1e6
            if not isinstance(auth, KeyAuth):
                print(f"  {name:42s} {added:6.2f} µs")
                continue
            reads = auth.cache.loads - loads_before[name]
            print(f"  {name:42s} {added:6.2f} µs   store reads during the run: {reads}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50_000, help="calls per round and case")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.n, args.rounds))
