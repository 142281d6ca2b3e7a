"""keel.providers.http against a scripted raw HTTP/1.1 server on a real port: whatever a
test needs the server to do (answer slowly, stall, cut, hang up, split lines across
packets) it does on the socket; no mocks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate

import pytest
from multidict import CIMultiDict
from yarl import URL

from keel.errors import ConfigError, ProviderTimeout, ProviderUnavailable
from keel.providers.http import HTTPClient, parse_retry_after, parse_url
from keel.testing.fake_openai import closed_base_url


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    connection: int  # which connection (0, 1, ...) carried it


Handler = Callable[[Request, asyncio.StreamWriter], Awaitable[None]]


def head(status: int = 200, length: int | None = None, **headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status} X"]
    if length is not None:
        lines.append(f"content-length: {length}")
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def ok(request: Request, writer: asyncio.StreamWriter) -> None:
    body = b'{"echo": ' + str(len(request.body)).encode() + b"}"
    writer.write(head(200, len(body), content_type="application/json", x_Thing="yes") + body)


@dataclass
class Server:
    """One scripted HTTP/1.1 server: ``handler`` answers every request (keep-alive)."""

    handler: Handler = ok
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    server: asyncio.Server | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> URL:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return URL(f"http://127.0.0.1:{port}/v1/x")

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        number, self.connections = self.connections, self.connections + 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while True:
                try:
                    raw = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                first, *rest = raw.decode().split("\r\n")
                method, path, _ = first.split(" ")
                headers = {k.lower(): v.strip() for k, _, v in
                           (line.partition(":") for line in rest if line)}
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                request = Request(method, path, headers, body, number)
                self.requests.append(request)
                await self.handler(request, writer)
                if writer.is_closing():
                    return
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.open_now -= 1
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    s = Server()
    s.server = await asyncio.start_server(s.serve, "127.0.0.1", 0)
    yield s
    s.server.close()
    await s.server.wait_closed()
    for task in s.tasks:
        task.cancel()
    await asyncio.gather(*s.tasks, return_exceptions=True)


@pytest.fixture
async def client(server: Server) -> AsyncIterator[HTTPClient]:
    c = HTTPClient("up", server.url, {"content-type": "application/json", "x-key": "k1"},
                   max_connections=4, connect_timeout_s=1.0)
    await c.start()
    yield c
    await c.close()


# --- post -------------------------------------------------------------------------------


async def test_post_and_keep_alive(server: Server, client: HTTPClient) -> None:
    for _ in range(3):
        status, headers, body = await client.post(server.url, b"12345", {"x-key": "k2"},
                                                  timeout_s=2)
        assert (status, body) == (200, b'{"echo": 5}')
        assert headers["X-THING"] == "yes"  # case-insensitive
    assert server.connections == 1  # one pooled keep-alive connection
    sent = server.requests[-1]
    assert (sent.method, sent.path, sent.body) == ("POST", "/v1/x", b"12345")
    assert sent.headers["x-key"] == "k2"  # a call's header wins over the client's
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["accept-encoding"] == "gzip, deflate"


async def test_error_statuses_are_returned_not_raised(server: Server,
                                                      client: HTTPClient) -> None:
    async def answer(request: Request, writer: asyncio.StreamWriter) -> None:
        status = int(request.path.rsplit("/", 1)[1])
        writer.write(head(status, 4, location="http://127.0.0.1:1/", set_cookie="a=1") + b"nope")

    server.handler = answer
    for status in (302, 429, 503):
        response = await client.post(server.url.with_path(f"/{status}"), b"", timeout_s=2)
        assert (response.status, response.body) == (status, b"nope")
    assert [r.path for r in server.requests] == ["/302", "/429", "/503"]  # no redirect
    assert "cookie" not in server.requests[-1].headers  # no cookie jar


async def test_no_first_byte_is_a_timeout(server: Server, client: HTTPClient) -> None:
    async def slow(request: Request, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    server.handler = slow
    start = time.monotonic()
    with pytest.raises(ProviderTimeout, match=r"'up': no response from .* within 0\.2s") as info:
        await client.post(server.url, b"", timeout_s=0.2, model="m1")
    assert time.monotonic() - start < 1.0
    assert "(model 'm1')" in info.value.message
    start = time.monotonic()
    with pytest.raises(ProviderTimeout, match=r"within 0\.1s"):
        await client.post(server.url, b"", timeout_s=5, first_byte_timeout_s=0.1)
    assert time.monotonic() - start < 1.0


async def test_a_stalled_body_is_a_timeout(server: Server, client: HTTPClient) -> None:
    async def stall(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(head(200, 10) + b"12345")
        await asyncio.sleep(5)

    server.handler = stall
    with pytest.raises(ProviderTimeout, match=r"stopped sending .* within 0\.2s"):
        await client.post(server.url, b"", timeout_s=0.2)


async def test_refused_and_hung_up(server: Server, client: HTTPClient) -> None:
    with pytest.raises(ProviderUnavailable, match=r"'up': cannot reach .*ClientConnectorError"):
        await client.post(URL(closed_base_url()), b"", timeout_s=2)

    async def hang_up(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server.handler = hang_up
    with pytest.raises(ProviderUnavailable, match=r"cannot reach .*ServerDisconnectedError"):
        await client.post(server.url, b"", timeout_s=2)

    async def cut(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(head(200, 100) + b"only part")
        writer.close()

    server.handler = cut
    with pytest.raises(ProviderUnavailable, match="broke during the answer: ClientPayloadError"):
        await client.post(server.url, b"", timeout_s=2)
    server.handler = ok
    assert (await client.post(server.url, b"", timeout_s=2)).status == 200


async def test_the_pool_is_capped(server: Server) -> None:
    async def slow(request: Request, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.05)
        await ok(request, writer)

    server.handler = slow
    c = HTTPClient("up", server.url, {}, max_connections=2, connect_timeout_s=1)
    try:  # not started: the first call starts it
        results = await asyncio.gather(*(c.post(server.url, b"", timeout_s=2) for _ in range(6)))
    finally:
        await c.close()
        await c.close()  # twice is fine
    assert [r.status for r in results] == [200] * 6
    assert server.most_open == 2


# --- stream -----------------------------------------------------------------------------


def chunked(*parts: bytes) -> list[bytes]:
    return [f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in parts] + [b"0\r\n\r\n"]


def streaming(*parts: bytes, gap_s: float = 0.01, then: str = "end") -> Handler:
    """A chunked answer, one packet per part ``gap_s`` apart; ``then``: end, cut, stall."""
    async def answer(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(head(200, transfer_encoding="chunked", content_type="text/event-stream"))
        *body, last = chunked(*parts)
        for piece in body:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(gap_s)
        if then == "cut":
            writer.close()
        elif then == "stall":
            await asyncio.sleep(5)
        else:
            writer.write(last)
    return answer


async def read_lines(client: HTTPClient, url: URL, **kw: float) -> list[str]:
    async with client.stream(url, b"{}", timeout_s=kw.pop("timeout_s", 2), **kw) as response:
        assert response.status == 200
        assert response.headers["content-type"] == "text/event-stream"
        return [line async for line in response.lines()]


async def test_lines_in_every_ending_and_split_anywhere(server: Server,
                                                       client: HTTPClient) -> None:
    euro = "€".encode()
    server.handler = streaming(b"data: a\n\ndata: b\r", b"\n\r\ndata: c\rdata: ", euro[:1],
                               euro[1:] + b"\r", b"\rlast")
    assert await read_lines(client, server.url) == [
        "data: a", "", "data: b", "", "data: c", "data: €", "", "last"]
    server.handler = streaming(b"x" * 300_000 + b"\n", b"tail\r")  # longer than any buffer
    assert await read_lines(client, server.url) == ["x" * 300_000, "tail"]


async def test_first_byte_deadline_then_stall_timeout(server: Server,
                                                      client: HTTPClient) -> None:
    # before mark_started the chunks share one deadline; after it each read gets timeout_s
    server.handler = streaming(b"a\n", b"b\n", b"c\n", b"d\n", gap_s=0.15)
    with pytest.raises(ProviderTimeout):
        await read_lines(client, server.url, timeout_s=2, first_byte_timeout_s=0.3)
    got = []
    async with client.stream(server.url, b"", timeout_s=0.3, first_byte_timeout_s=0.2) as r:
        async for line in r.lines():
            got.append(line)
            r.mark_started()
            await asyncio.sleep(0.4)  # a slow consumer is not a stall
    assert got == ["a", "b", "c", "d"]
    server.handler = streaming(b"a\n", then="stall")
    got = []
    start = time.monotonic()
    with pytest.raises(ProviderTimeout, match=r"no data within 0\.2s"):
        async with client.stream(server.url, b"", timeout_s=0.2) as r:
            async for line in r.lines():
                got.append(line)
                r.mark_started()
    assert got == ["a"] and time.monotonic() - start < 1.0


async def test_a_cut_delivers_what_arrived_then_raises(server: Server,
                                                       client: HTTPClient) -> None:
    server.handler = streaming(b"a\nb\n", b"c\n", gap_s=0, then="cut")
    got = []
    with pytest.raises(ProviderUnavailable, match="the connection broke: ClientPayloadError"):
        async with client.stream(server.url, b"", timeout_s=2) as r:
            async for line in r.lines():
                got.append(line)
    assert got == ["a", "b", "c"]


async def test_stream_open_failures(server: Server, client: HTTPClient) -> None:
    with pytest.raises(ProviderUnavailable, match="cannot reach"):
        async with client.stream(URL(closed_base_url()), b"", timeout_s=2):
            pass

    async def slow(request: Request, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    server.handler = slow
    with pytest.raises(ProviderTimeout, match=r"no response from .* within 0\.2s"):
        async with client.stream(server.url, b"", timeout_s=5, first_byte_timeout_s=0.2):
            pass


async def test_error_body_and_early_exit_keep_the_pool_sound(server: Server,
                                                             client: HTTPClient) -> None:
    async def refuse(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(head(400, 11) + b"bad request")

    server.handler = refuse
    async with client.stream(server.url, b"", timeout_s=2) as r:
        assert (r.status, await r.read()) == (400, b"bad request")
    server.handler = streaming(*(b"line\n" for _ in range(50)))
    async with client.stream(server.url, b"", timeout_s=2) as r:
        async for _ in r.lines():
            break  # the rest is never read: the connection is closed, not pooled
    server.handler = ok
    assert (await client.post(server.url, b"", timeout_s=2)).status == 200


async def test_chunks(server: Server, client: HTTPClient) -> None:
    server.handler = streaming(b"ab", b"cd")
    async with client.stream(server.url, b"", timeout_s=2) as r:
        assert b"".join([c async for c in r.chunks()]) == b"abcd"


# --- helpers ------------------------------------------------------------------------------


def test_parse_retry_after() -> None:
    assert parse_retry_after(CIMultiDict({"Retry-After": "3"})) == 3.0
    assert parse_retry_after(CIMultiDict({"retry-after-ms": "1500", "retry-after": "3"})) == 1.5
    assert parse_retry_after(CIMultiDict({"retry-after-ms": "nan", "retry-after": "2"})) == 2.0
    assert parse_retry_after(CIMultiDict({"retry-after": "soon"})) is None
    assert parse_retry_after(CIMultiDict({"retry-after": "-1"})) is None
    past = formatdate(time.time() - 60, usegmt=True)
    assert parse_retry_after(CIMultiDict({"retry-after": past})) == 0.0
    assert parse_retry_after(CIMultiDict()) is None


def test_parse_url() -> None:
    assert str(parse_url("http://h:1/v1", "/x", "p", "e.g.")) == "http://h:1/v1/x"
    for bad in ("localhost:8000", "api.example.com", "ftp://h", "http://[::1"):
        with pytest.raises(ConfigError, match=r"providers\.p\.base_url"):
            parse_url(bad, "/x", "p", "http://localhost:11434/v1")
