"""The HTTP layer every HTTP provider shares: one pooled :class:`aiohttp.ClientSession`.

One :class:`HTTPClient` per provider, opened in the provider's ``start`` (a session needs
a running loop) and closed in its ``close``. It speaks HTTP/1.1 with keep-alive over a
pool of ``max_connections``; no cookie jar, no redirects (a 3xx is the provider's
"unexpected status"), ``Accept-Encoding: gzip, deflate`` whatever optional codecs happen
to be installed, and gzip/deflate bodies decoded. Proxies come from the environment
(``HTTPS_PROXY``, ``NO_PROXY``, ...) once, at start, and certificates from
``SSL_CERT_FILE``/``SSL_CERT_DIR`` or certifi, as httpx does.

Timeouts (``timeout_s`` is the provider's, per attempt):

============  ===========================================================================
connect       ``connect_timeout_s`` (at most ``timeout_s``), for a new connection
first byte    ``first_byte_timeout_s`` or else ``timeout_s``: until the response starts
read          :meth:`HTTPClient.post`: the same bound on every later read of the body
stall         :meth:`HTTPClient.stream`: until the caller marks the stream started
              (:meth:`StreamResponse.mark_started`, at its first delta) every read must
              end by the first-byte deadline; after it each read gets ``timeout_s``
total         the caller's: the invoke stage runs every attempt in ``asyncio.timeout``
============  ===========================================================================

Failures become Keel's ProviderError tree: a timeout is :class:`ProviderTimeout`; a
refused connection, DNS failure, reset, or a server that hung up is
:class:`ProviderUnavailable`. Status codes are the provider's to judge. Reading a started
stream raises ProviderTimeout / ProviderUnavailable with a short message (``no data
within 2s``, ``the connection broke: ...``): the provider decides what that means (once a
delta went out, ProviderStreamInterrupted).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import ssl
import time
from collections.abc import AsyncGenerator, Mapping
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import NamedTuple

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from keel.errors import ConfigError, ProviderTimeout, ProviderUnavailable

# what httpx sends by default; pinned so an installed brotli/zstd changes nothing
ACCEPT_ENCODING = "gzip, deflate"
# below the 5 s keep-alive of uvicorn (vLLM, FastAPI servers) and most Go and Node
# servers: an idle connection is dropped here before the server can close it under a
# request (a POST on a connection the server just closed is not retried)
KEEPALIVE_S = 4.0


class Response(NamedTuple):
    """A whole response."""

    status: int
    headers: Mapping[str, str]  # case-insensitive
    body: bytes


def parse_url(base_url: str, path: str, provider: str, example: str) -> URL:
    """``base_url`` + ``path`` as a URL, or a ConfigError naming the provider's setting."""
    try:
        url = URL(base_url + path)
    except ValueError:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(
            f"providers.{provider}.base_url: '{base_url}' is not an http(s) URL (e.g. {example})")
    return url


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP-date)."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000
            if math.isfinite(value) and value >= 0:
                return value
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        value = float(raw)
        return value if math.isfinite(value) and value >= 0 else None
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _ssl_context() -> ssl.SSLContext:
    """Verification as httpx does it: SSL_CERT_FILE / SSL_CERT_DIR, else certifi's bundle."""
    cafile, capath = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    if cafile and os.path.isfile(cafile):
        return ssl.create_default_context(cafile=cafile)
    if capath and os.path.isdir(capath):
        return ssl.create_default_context(capath=capath)
    try:
        import certifi
    except ImportError:  # pragma: no cover - httpx depends on certifi
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc) or 'connection failed'}"


class HTTPClient:
    """A provider's connection pool to one server. ``headers`` go with every request."""

    def __init__(self, provider: str, base_url: URL, headers: Mapping[str, str], *,
                 max_connections: int, connect_timeout_s: float) -> None:
        self.provider = provider
        self.base_url = base_url
        self.headers = {"accept-encoding": ACCEPT_ENCODING, **headers}
        self.max_connections = max_connections
        self.connect_timeout_s = connect_timeout_s
        self.session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[float, float | None], aiohttp.ClientTimeout] = {}
        self._proxy_headers: dict[str, str] | None = None

    async def start(self) -> None:
        if self.session is not None:
            return
        proxy: URL | None = None
        proxy_auth: aiohttp.BasicAuth | None = None
        with contextlib.suppress(LookupError):
            proxy, proxy_auth = get_env_proxy_for_url(self.base_url)
        if proxy is not None and proxy_auth is not None:
            self._proxy_headers = {"proxy-authorization": proxy_auth.encode()}
        https = self.base_url.scheme == "https" or (proxy is not None
                                                    and proxy.scheme == "https")
        connector = aiohttp.TCPConnector(
            limit=self.max_connections, keepalive_timeout=KEEPALIVE_S,
            ssl=_ssl_context() if https else True)
        self.session = aiohttp.ClientSession(
            connector=connector, headers=self.headers, proxy=proxy,
            cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=True,
            timeout=aiohttp.ClientTimeout(total=None))

    async def close(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            await session.close()

    async def _started(self) -> aiohttp.ClientSession:
        await self.start()
        assert self.session is not None
        return self.session

    def _timeout(self, timeout_s: float, read_s: float | None) -> aiohttp.ClientTimeout:
        key = (timeout_s, read_s)
        timeout = self._timeouts.get(key)
        if timeout is None:
            timeout = self._timeouts[key] = aiohttp.ClientTimeout(
                total=None, sock_connect=min(self.connect_timeout_s, timeout_s), sock_read=read_s)
        return timeout

    # --- one whole request ------------------------------------------------------------------

    async def post(self, url: URL, body: bytes, headers: Mapping[str, str] | None = None, *,
                   timeout_s: float, first_byte_timeout_s: float | None = None,
                   model: str | None = None) -> Response:
        """POST ``body``; the status, headers and whole body, whatever the status.

        The response must start within the first-byte timeout and every later read of
        its body end within it too; the total is the caller's (see the module doc)."""
        session = self.session or await self._started()
        wait = first_byte_timeout_s or timeout_s
        try:
            response = await session.request(
                "POST", url, data=body, headers=headers, allow_redirects=False,
                timeout=self._timeout(timeout_s, wait), proxy_headers=self._proxy_headers)
        except aiohttp.ConnectionTimeoutError:
            raise self.connect_timeout(url, timeout_s) from None
        except TimeoutError:
            raise self.no_response(url, wait, model) from None
        except aiohttp.ClientError as exc:
            raise self.unreachable(url, exc) from None
        try:
            data = await response.read()
        except TimeoutError:
            raise ProviderTimeout(
                f"provider '{self.provider}': {url} stopped sending its answer: no data "
                f"within {wait:g}s{_model(model)}; the server is slow or stuck: raise "
                "timeout_s or check it") from None
        except aiohttp.ClientError as exc:
            raise self.broken(url, exc) from None
        finally:
            response.release()
        return Response(response.status, response.headers, data)

    # --- a streamed response -----------------------------------------------------------------

    def stream(self, url: URL, body: bytes, headers: Mapping[str, str] | None = None, *,
               timeout_s: float, first_byte_timeout_s: float | None = None,
               model: str | None = None) -> StreamContext:
        """``async with client.stream(...) as response``: the response once its headers
        are in (within the first-byte timeout), its body read as it comes."""
        return StreamContext(self, url, body, headers, timeout_s, first_byte_timeout_s, model)

    # --- failures ----------------------------------------------------------------------------

    def connect_timeout(self, url: URL, timeout_s: float) -> ProviderTimeout:
        seconds = min(self.connect_timeout_s, timeout_s)
        return ProviderTimeout(
            f"provider '{self.provider}': no connection to {url} within {seconds:g}s "
            "(connect_timeout_s); is the server up and base_url right?")

    def no_response(self, url: URL, seconds: float, model: str | None) -> ProviderTimeout:
        return ProviderTimeout(
            f"provider '{self.provider}': no response from {url} within {seconds:g}s"
            f"{_model(model)}; the server is slow or stuck: raise timeout_s or check it")

    def unreachable(self, url: URL, exc: BaseException) -> ProviderUnavailable:
        return ProviderUnavailable(
            f"provider '{self.provider}': cannot reach {url}: {_describe(exc)}; is the server "
            "running and base_url right?")

    def broken(self, url: URL, exc: BaseException) -> ProviderUnavailable:
        return ProviderUnavailable(
            f"provider '{self.provider}': the connection to {url} broke during the answer: "
            f"{_describe(exc)}")


def _buffered(content: aiohttp.StreamReader) -> bytes:
    """The bytes a failed stream still holds (aiohttp's reads raise the failure first)."""
    read = getattr(content, "_read_nowait", None)  # private, in every aiohttp 3.x
    try:
        return bytes(read(-1)) if read is not None and getattr(content, "_buffer", None) else b""
    except Exception:
        return b""


def _model(model: str | None) -> str:
    return f" (model '{model}')" if model else ""


class StreamContext:
    """Opens a streamed POST on enter, releases the connection on exit."""

    __slots__ = ("_body", "_client", "_first_byte_s", "_headers", "_model", "_response",
                 "_timeout_s", "_url")

    def __init__(self, client: HTTPClient, url: URL, body: bytes,
                 headers: Mapping[str, str] | None, timeout_s: float,
                 first_byte_timeout_s: float | None, model: str | None) -> None:
        self._client, self._url, self._body, self._headers = client, url, body, headers
        self._timeout_s, self._first_byte_s, self._model = timeout_s, first_byte_timeout_s, model
        self._response: StreamResponse | None = None

    async def __aenter__(self) -> StreamResponse:
        client, url = self._client, self._url
        session = client.session or await client._started()
        loop = asyncio.get_running_loop()
        wait = self._first_byte_s or self._timeout_s
        deadline = loop.time() + wait
        try:
            async with asyncio.timeout_at(deadline):
                response = await session.request(
                    "POST", url, data=self._body, headers=self._headers,
                    allow_redirects=False, timeout=client._timeout(self._timeout_s, None),
                    proxy_headers=client._proxy_headers)
        except aiohttp.ConnectionTimeoutError:
            raise client.connect_timeout(url, self._timeout_s) from None
        except TimeoutError:
            raise client.no_response(url, wait, self._model) from None
        except aiohttp.ClientError as exc:
            raise client.unreachable(url, exc) from None
        self._response = StreamResponse(client, response, deadline, self._timeout_s, loop)
        return self._response

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._response is not None:
            # a body not read to its end closes the connection rather than pool it
            self._response.response.release()


class StreamResponse:
    """A response whose body is read as it arrives: :meth:`lines` or :meth:`chunks`."""

    __slots__ = ("_client", "_loop", "deadline", "response", "stall_s")

    def __init__(self, client: HTTPClient, response: aiohttp.ClientResponse, deadline: float,
                 stall_s: float, loop: asyncio.AbstractEventLoop) -> None:
        self._client = client
        self.response = response
        self.deadline: float | None = deadline  # the first-byte deadline until started
        self.stall_s = stall_s
        self._loop = loop

    @property
    def status(self) -> int:
        return self.response.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self.response.headers

    @property
    def url(self) -> URL:
        return self.response.url

    def mark_started(self) -> None:
        """The caller has its first delta: from now on each read gets ``stall_s``."""
        self.deadline = None

    async def read(self) -> bytes:
        """The whole (rest of the) body, e.g. an error's, within the current bound."""
        try:
            parts = [chunk async for chunk in self.chunks()]
        except (ProviderTimeout, ProviderUnavailable) as exc:
            raise type(exc)(f"provider '{self._client.provider}': reading the body of "
                            f"{self.url}: {exc.message}") from None
        return b"".join(parts)

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body as it arrives. Raises ProviderTimeout when a read waits past its
        bound and ProviderUnavailable when the connection breaks (short messages)."""
        content = self.response.content
        while True:
            try:
                chunk = content.read_nowait()  # what is buffered: no timer needed
                if not chunk:
                    if content.at_eof():
                        return
                    deadline = self.deadline
                    when = self._loop.time() + self.stall_s if deadline is None else deadline
                    async with asyncio.timeout_at(when):
                        chunk = await content.readany()
                    if not chunk:
                        return
            except TimeoutError:
                wait = self.stall_s if self.deadline is None else None
                raise ProviderTimeout(f"no data within {wait:g}s" if wait is not None
                                      else "no data by the first-byte deadline") from None
            except aiohttp.ClientError as exc:
                # aiohttp raises before handing out what arrived ahead of the break
                rest = _buffered(content)
                if rest:
                    yield rest
                raise ProviderUnavailable(f"the connection broke: {_describe(exc)}") from None
            yield chunk

    async def lines(self) -> AsyncGenerator[str, None]:
        """The body as text lines without their ends (LF, CRLF or CR, as SSE allows), UTF-8
        decoded with replacement. The last line need not end with a line break."""
        chunks = self.chunks()
        rest = b""
        try:
            async for chunk in chunks:
                data = rest + chunk if rest else chunk
                held = False
                if b"\r" in data:
                    # a CR at the very end may be the first half of a CRLF: hold it back
                    held = data.endswith(b"\r")
                    if held:
                        data = data[:-1]
                    data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
                *complete, rest = data.split(b"\n")
                if held:
                    rest += b"\r"
                for line in complete:
                    yield line.decode("utf-8", "replace")
            if rest.endswith(b"\r"):  # a line ended by a CR: complete, even if empty
                yield rest[:-1].decode("utf-8", "replace")
            elif rest:  # the last line, without a line break
                yield rest.decode("utf-8", "replace")
        finally:
            await chunks.aclose()


def snippet(data: bytes, limit: int = 200) -> str:
    """The start of a body, for error messages a person reads."""
    text = data[:limit].decode("utf-8", "replace")
    return text + ("..." if len(data) > limit else "")
