"""The bare pass-through of the overhead benchmark: the floor any Python gateway pays.

A pure ASGI app (no framework) that forwards every request body to one upstream with
one shared ``httpx.AsyncClient`` and returns the upstream's status and bytes. It runs
under uvicorn exactly as ``keel serve`` does (uvloop, httptools, access log off, log level
warning), so the difference between this and Keel is Keel's own work (FastAPI included)::

    python bench/passthrough.py --port 9201 --upstream http://127.0.0.1:9100/v1/chat/completions

``--stream`` relays the upstream's body chunk by chunk as it arrives (server-sent events;
``bench/field.py``) instead of reading it whole first.
"""

from __future__ import annotations

import argparse
from typing import Any

import httpx
import uvicorn

Scope = dict[str, Any]
Message = dict[str, Any]


class PassThrough:
    def __init__(self, upstream: str, max_connections: int = 256) -> None:
        self.upstream = upstream
        self.max_connections = max_connections
        self.client: httpx.AsyncClient | None = None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        assert scope["type"] == "http"
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        assert self.client is not None
        response = await self.client.post(self.upstream, content=b"".join(chunks))
        body = response.content
        await send({
            "type": "http.response.start",
            "status": response.status_code,
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode())],
        })
        await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # the same pool shape as Keel's openai provider (max_connections: 256)
                n = self.max_connections
                self.client = httpx.AsyncClient(
                    headers={"content-type": "application/json", "accept": "application/json"},
                    limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
                    timeout=30.0,
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.client is not None:
                    await self.client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


class StreamingPassThrough(PassThrough):
    """Forwards the body, then relays the upstream's answer chunk by chunk (SSE streams)."""

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        assert self.client is not None
        request = self.client.build_request("POST", self.upstream, content=b"".join(chunks))
        response = await self.client.send(request, stream=True)
        try:
            kind = response.headers.get("content-type", "application/json").encode()
            await send({"type": "http.response.start", "status": response.status_code,
                        "headers": [(b"content-type", kind)]})
            async for piece in response.aiter_raw():
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="URL every request is POSTed to")
    parser.add_argument("--max-connections", type=int, default=256,
                        help="httpx pool size (Keel's provider default: 256)")
    parser.add_argument("--stream", action="store_true",
                        help="relay the answer chunk by chunk (for streamed answers)")
    args = parser.parse_args()
    app = (StreamingPassThrough if args.stream else PassThrough)(args.upstream,
                                                                 args.max_connections)
    # the same server options as keel.cli.serve: uvloop, httptools, no access log
    uvicorn.run(app, host=args.host, port=args.port,
                log_level="warning", access_log=False, timeout_graceful_shutdown=30,
                loop="uvloop", http="httptools")


if __name__ == "__main__":
    main()
