"""Streaming through Keel, and what the fallback path adds, measured side by side in one run.

Every server is its own process (the helpers for them, the CPU meters, pinning and the
quiet-machine checks come from ``bench/harness.py``):

  healthy fake   ``python -m keel.testing --reply <40-word sentence>``: streams its answer in
                 token-sized pieces (``\\s*\\S{1,4}``) back to back, with no pause between them
  broken fake    a second fake, told ``POST /_fake/mode {"mode": "error"}``: 500 at once
  slow fake      a third fake, told ``{"mode": "timeout"}``: holds every request 5 s
  solo fake      one more healthy fake, on Keel's CPU: the upstream alone on a CPU
  keel           ``keel serve`` on a keel.yaml with ``chat`` features (output kind ``chat``)

(1) Streaming, ``POST /v1/chat/completions`` with ``"stream": true``, direct to the healthy
fake vs through Keel (feature ``chat``, champion an ``openai`` provider on the healthy fake):

- concurrency 1: ``--streams`` sequential streams per path on one keep-alive connection;
  time to first token (TTFT: from writing the request to parsing the first SSE chunk with
  non-empty ``delta.content``) p50/p99 and total stream time; added TTFT = Keel - direct;
- concurrency ``--connections`` (64): completed streams per second per path, the ratio;
  also direct to the solo fake (server for server: each alone on a CPU).

The client is a lean asyncio (uvloop) HTTP/1.1 + SSE parser on raw sockets; its own CPU per
stream is measured and printed. Every stream is verified: 200, the content reassembles to
the reply, the usage chunk counts its words, the body ends with ``data: [DONE]`` and, through
Keel, the last JSON chunk carries ``keel.decision == "accepted"``.

(2) The fallback path, non-streamed, concurrency 1: Keel with the healthy target as champion
against features whose champion fails and whose fallback is the healthy target
(``retry: {max_retries: 0}``): a champion that answers 500, one that times out
(``timeout_s: --timeout-s``, 0.2), and one whose circuit is open (``failure_threshold: 3``,
opened by the first three calls; the run checks the broken fake sees no request meanwhile).
A control row calls the healthy champion after the same pause as the timeout: on a VM, idle
CPUs wake up slowly, and that is not the fallback's cost.
Every answer is verified: 200, the reply, the decision, the version, each attempt's error code,
and at the end Keel's events: one per call, with the expected decision.

Pinning (``--pin split``, 2 CPUs): Keel alone on CPU 1 (with the solo fake, idle but in its
own row); the other fakes and this script (the client) share CPU 0. A measurement during which other processes used more than
``--max-background`` CPUs is discarded and re-run.

    .venv/bin/python bench/streaming.py           # ~1.5 min (results/streaming.{json,png})
    .venv/bin/python bench/streaming.py --quick   # ~30 s smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import http.client
import json
import os
import resource
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import orjson
import report
from harness import (  # the shared benchmark harness (bench/harness.py)
    BadResponse,
    Child,
    Children,
    CpuMeter,
    Quiet,
    RawClient,
    cpu_plan,
    cpu_seconds,
    free_port,
    machine,
    machine_busy_seconds,
    percentile,
    upstream_connections,
)
from report import add_common_args, pyplot, run_main, save_figure  # bench/report.py

HERE = Path(__file__).resolve().parent
ASK = "My card was charged twice for the same order. What happens now?"
REPLY = ("Your refund for the duplicate charge has been approved and will reach the card you "
         "paid with within three to five business days, and we will email you a confirmation "
         "as soon as your bank has fully processed the payment.")
REPLY_WORDS = len(REPLY.split())
OTHER_BENCHMARKS = ("bench/overhead.py", "bench/streaming.py")

CONFIG = """\
# written by bench/streaming.py
providers:
  healthy:
    type: openai
    base_url: "http://127.0.0.1:{healthy}/v1"
    api_key: "${{KEEL_BENCH_KEY}}"
    timeout_s: 10
  broken:                      # answers 500 at once; its circuit never opens
    type: openai
    base_url: "http://127.0.0.1:{broken}/v1"
    api_key: "${{KEEL_BENCH_KEY}}"
    timeout_s: 10
    circuit: {{failure_threshold: 1000000000}}
  slow:                        # holds every request: Keel gives up after timeout_s
    type: openai
    base_url: "http://127.0.0.1:{slow}/v1"
    api_key: "${{KEEL_BENCH_KEY}}"
    timeout_s: {timeout_s}
    circuit: {{failure_threshold: 1000000000}}
  dead:                        # the broken fake again, behind a circuit that opens
    type: openai
    base_url: "http://127.0.0.1:{broken}/v1"
    api_key: "${{KEEL_BENCH_KEY}}"
    timeout_s: 10
    circuit: {{failure_threshold: 3, reset_after_s: 3600}}
features:
{features}"""

FEATURE = """\
  {name}:
    description: {description}
    output: {{kind: chat}}
    versions:
      primary: {{provider: {champion}, model: gpt-4o-mini}}
      backup: {{provider: healthy, model: gpt-4o-mini}}
    aliases: {{champion: primary}}
    fallbacks: [backup]
    retry: {{max_retries: 0}}
"""

FEATURES = {  # name: (champion provider, description)
    "chat": ("healthy", "the healthy target as champion (streams, and the fallback baseline)"),
    "fb_error": ("broken", "champion answers 500, fallback on the healthy target"),
    "fb_timeout": ("slow", "champion times out, fallback on the healthy target"),
    "fb_open": ("dead", "champion behind an open circuit, fallback on the healthy target"),
}


def keel_yaml(healthy: int, broken: int, slow: int, timeout_s: float) -> str:
    features = "".join(FEATURE.format(name=name, champion=champion, description=description)
                       for name, (champion, description) in FEATURES.items())
    return CONFIG.format(healthy=healthy, broken=broken, slow=slow, timeout_s=timeout_s,
                         features=features)


def chat_body(model: str, stream: bool) -> bytes:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": ASK}]}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return orjson.dumps(body)


def http_request(port: int, path: str, body: bytes) -> bytes:
    """A complete HTTP/1.1 POST request."""
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def control(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """A control call (fake modes and stats, Keel's health and circuits): (status, JSON)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        payload = None if body is None else json.dumps(body)
        conn.request(method, path, body=payload, headers={"content-type": "application/json"})
        response = conn.getresponse()
        raw = response.read()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw.decode(errors="replace")
    finally:
        conn.close()


def fake_requests(port: int) -> int:
    status, stats = control(port, "GET", "/_fake/stats")
    if status != 200:
        raise SystemExit(f"fake on port {port}: /_fake/stats answered {status}: {stats}")
    return int(stats["requests"])


class Meter(CpuMeter):
    """harness.CpuMeter with the CPU of several upstream processes (the fakes) summed."""

    def __init__(self, gateway: Child | None, upstreams: list[Child]) -> None:
        super().__init__(gateway, upstreams[0])
        self.upstreams = upstreams

    def _snap(self) -> tuple[float, ...]:
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (time.monotonic(), machine_busy_seconds(),
                cpu_seconds(self.gateway.pid) if self.gateway else 0.0,
                sum(cpu_seconds(u.pid) for u in self.upstreams),
                time.process_time() + kids.ru_utime + kids.ru_stime)


# --- a lean asyncio HTTP/1.1 + server-sent events client ----------------------------------


clock = time.perf_counter_ns


@dataclass(slots=True)
class Reply:
    """One answer as the client saw it."""

    t0: int  # ns: just before the request was written
    status: int = 0
    first: int = 0  # ns: the first SSE event with non-empty delta.content was parsed
    end: int = 0  # ns: the body was complete
    parts: list[str] = field(default_factory=list)
    events: int = 0  # JSON events
    done: bool = False  # saw data: [DONE]
    after_done: int = 0  # events after [DONE] (must be 0)
    last: dict[str, Any] | None = None  # the last JSON event
    usage: dict[str, Any] | None = None
    error: Any = None  # an in-stream {"error": ...} event
    body: bytes = b""  # a Content-Length body (non-streamed answers)
    leftover: bytes = b""  # undecoded SSE bytes at the end (must be empty)

    @property
    def ttft_ms(self) -> float:
        return (self.first - self.t0) / 1e6

    @property
    def total_ms(self) -> float:
        return (self.end - self.t0) / 1e6


class SSEClient(asyncio.Protocol):
    """One keep-alive connection: writes a request and parses the answer as it arrives
    (status line, Content-Length or chunked body, then SSE events, JSON-decoded)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Reply] | None = None
        self.reply = Reply(0)
        self.buf = b""
        self.sse = b""
        self.head_done = False
        self.chunked = False
        self.length = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(BadResponse(f"connection closed mid-answer ({exc or 'EOF'})"))

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def send(self, request: bytes) -> asyncio.Future[Reply]:
        if self.transport is None:
            raise BadResponse("not connected")
        self.waiter = asyncio.get_running_loop().create_future()
        self.buf = self.sse = b""
        self.head_done = self.chunked = False
        self.reply = Reply(clock())
        self.transport.write(request)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        try:
            self._received(data)
        except Exception as exc:  # a malformed answer: fail this request, drop the connection
            self._fail(BadResponse(f"unparseable answer: {type(exc).__name__}: {exc}"))

    def _received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        reply = self.reply
        if not self.head_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            head = buf[:end].decode("latin-1").lower()
            reply.status = int(head[9:12])
            self.chunked = "\r\ntransfer-encoding: chunked" in head
            if not self.chunked:
                at = head.find("\r\ncontent-length:")
                if at < 0:
                    raise BadResponse(f"neither chunked nor Content-Length: {head!r}")
                self.length = int(head[at + 17:].split("\r\n", 1)[0])
            self.head_done = True
            buf = buf[end + 4:]
        if not self.chunked:
            if len(buf) < self.length:
                self.buf = buf
                return
            reply.body, self.buf = buf[:self.length], b""
            self._finish()
            return
        pos, n = 0, len(buf)
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            size = int(buf[pos:eol].split(b";", 1)[0], 16)
            start = eol + 2
            if n < start + size + 2:
                break
            if size == 0:  # the last chunk (no trailers)
                self.buf = b""
                self._finish()
                return
            self._feed(buf[start:start + size])
            pos = start + size + 2
        self.buf = buf[pos:]

    def _feed(self, data: bytes) -> None:
        sse = self.sse + data if self.sse else data
        pos = 0
        while (end := sse.find(b"\n\n", pos)) >= 0:
            self._event(sse[pos:end])
            pos = end + 2
        self.sse = sse[pos:]

    def _event(self, event: bytes) -> None:
        if not event.startswith(b"data: "):
            return  # comments, event:/id: fields: neither side sends them here
        payload = event[6:]
        reply = self.reply
        if payload == b"[DONE]":
            reply.done = True
            return
        if reply.done:
            reply.after_done += 1
        obj = orjson.loads(payload)
        reply.events += 1
        reply.last = obj
        if "error" in obj:
            reply.error = obj["error"]
        choices = obj.get("choices")
        if choices:
            content = (choices[0].get("delta") or {}).get("content")
            if content:
                if not reply.first:
                    reply.first = clock()
                reply.parts.append(content)
        if obj.get("usage"):
            reply.usage = obj["usage"]

    def _finish(self) -> None:
        reply = self.reply
        reply.end = clock()
        reply.leftover = self.sse
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(reply)


async def connect(port: int) -> SSEClient:
    _, client = await asyncio.get_running_loop().create_connection(SSEClient, "127.0.0.1", port)
    return client


# --- checks ------------------------------------------------------------------------------


def check_stream(reply: Reply, keel: bool) -> str | None:
    """None when the stream is right, else what is wrong."""
    if reply.status != 200:
        return f"HTTP {reply.status}: {reply.body[:200]!r}"
    if reply.error is not None:
        return f"error event: {reply.error}"
    text = "".join(reply.parts)
    if text != REPLY:
        return f"content {text[:80]!r}... is not the reply ({len(reply.parts)} pieces)"
    if not reply.done or reply.after_done or reply.leftover:
        return (f"does not end with data: [DONE] (done {reply.done}, {reply.after_done} events "
                f"after it, leftover {reply.leftover[:80]!r})")
    if not reply.usage or reply.usage.get("completion_tokens") != REPLY_WORDS:
        return f"usage chunk missing or wrong: {reply.usage}"
    if keel:
        meta = (reply.last or {}).get("keel")
        if not isinstance(meta, dict) or meta.get("decision") != "accepted":
            return f"the last JSON chunk has no keel.decision 'accepted': {reply.last}"
    return None


@dataclass(frozen=True)
class Row:
    """A non-streamed row of part (2) and what each of its answers must say."""

    key: str
    label: str
    model: str
    decision: str | None  # None: direct (no keel field)
    version: str | None = None
    codes: tuple[str | None, ...] = ()  # each attempt's error_code, in order
    requests: int = 0
    pause_s: float = 0.0  # idle time before each call (not timed): a control for timeouts


def check_answer(row: Row, status: int,
                 body: bytes) -> tuple[str | None, float | None, float | None]:
    """(problem or None, and as Keel recorded them: the failed champion attempt's latency_ms,
    the answering attempt's)."""
    if status != 200:
        return f"HTTP {status}: {body[:300]!r}", None, None
    try:
        data = orjson.loads(body)
        content = data["choices"][0]["message"]["content"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return f"not a chat.completion: {body[:300]!r}", None, None
    if content != REPLY:
        return f"content {str(content)[:80]!r} is not the reply", None, None
    if row.decision is None:
        return None, None, None
    meta = data.get("keel") or {}
    attempts = meta.get("attempts") or []
    codes = tuple(a.get("error_code") for a in attempts)
    if (meta.get("decision"), meta.get("version"), codes) != (row.decision, row.version,
                                                                row.codes):
        return (f"decision {meta.get('decision')!r}, version {meta.get('version')!r}, attempts "
                f"{codes} (expected {row.decision!r}, {row.version!r}, {row.codes})"), None, None
    failed = attempts[0].get("latency_ms") if len(attempts) > 1 else None
    return None, failed, attempts[-1].get("latency_ms")


# --- measurements ------------------------------------------------------------------------


@dataclass
class Run:
    """One measurement of one path (a round)."""

    ttft: list[float] = field(default_factory=list, repr=False)
    total: list[float] = field(default_factory=list, repr=False)
    failed_attempt: list[float] = field(default_factory=list, repr=False)
    answering_attempt: list[float] = field(default_factory=list, repr=False)
    n: int = 0  # answers verified (ok or not)
    ok: int = 0
    bad: int = 0
    sample_error: str = ""
    in_window: int = 0  # concurrency N: streams completed within the duration
    duration_s: float = 0.0
    wall_s: float = 0.0
    gateway_s: float = 0.0
    upstream_s: float = 0.0
    client_s: float = 0.0
    foreign_s: float = 0.0
    upstream_conns: int | None = None
    champion_calls: int | None = None  # requests the failing fake received meanwhile
    others: list[str] = field(default_factory=list)  # the busiest other processes meanwhile

    def note(self, problem: str | None) -> None:
        self.n += 1
        if problem is None:
            self.ok += 1
        else:
            self.bad += 1
            self.sample_error = self.sample_error or problem

    def cpu(self, meter: CpuMeter) -> None:
        self.wall_s, self.gateway_s, self.upstream_s = meter.wall, meter.gateway_s, meter.upstream_s
        self.client_s, self.foreign_s = meter.client_s, meter.foreign_s


@dataclass
class Summary:
    """Rounds pooled: latency percentiles over every answer; req/s of the median round."""

    n: int = 0
    ok: int = 0
    bad: int = 0
    sample_error: str = ""
    ttft_p50: float = 0.0
    ttft_p90: float = 0.0
    ttft_p99: float = 0.0
    total_p50: float = 0.0
    total_p99: float = 0.0
    mean: float = 0.0
    failed_attempt_p50: float | None = None
    answering_attempt_p50: float | None = None
    rps: float = 0.0
    rps_min: float = 0.0
    rps_max: float = 0.0
    rounds_rps: list[float] = field(default_factory=list)
    gateway_cpu_us: float | None = None  # per answer
    gateway_cpu_pct: float | None = None
    upstream_cpu_us: float = 0.0
    upstream_cpu_pct: float = 0.0
    client_cpu_us: float = 0.0
    client_cpu_pct: float = 0.0
    other_load_pct: float = 0.0
    upstream_conns: list[int | None] = field(default_factory=list)
    champion_calls: int | None = None

    @classmethod
    def of(cls, runs: list[Run], has_gateway: bool) -> Summary:
        s = cls()
        ttft = sorted(t for r in runs for t in r.ttft)
        total = sorted(t for r in runs for t in r.total)
        s.n, s.ok, s.bad = (sum(r.n for r in runs), sum(r.ok for r in runs),
                            sum(r.bad for r in runs))
        s.sample_error = next((r.sample_error for r in runs if r.sample_error), "")
        if ttft:
            s.ttft_p50, s.ttft_p90 = percentile(ttft, 0.5), percentile(ttft, 0.9)
            s.ttft_p99 = percentile(ttft, 0.99)
        if total:
            s.total_p50, s.total_p99 = percentile(total, 0.5), percentile(total, 0.99)
            s.mean = sum(total) / len(total)
        failed = sorted(t for r in runs for t in r.failed_attempt)
        s.failed_attempt_p50 = percentile(failed, 0.5) if failed else None
        answering = sorted(t for r in runs for t in r.answering_attempt)
        s.answering_attempt_p50 = percentile(answering, 0.5) if answering else None
        if any(r.duration_s for r in runs):
            s.rounds_rps = [r.in_window / r.duration_s for r in runs]
            s.rps = statistics.median(s.rounds_rps)
            s.rps_min, s.rps_max = min(s.rounds_rps), max(s.rounds_rps)
        wall = sum(r.wall_s for r in runs) or 1e-9
        n = max(1, s.n)
        gateway = sum(r.gateway_s for r in runs)
        s.gateway_cpu_us = gateway / n * 1e6 if has_gateway else None
        s.gateway_cpu_pct = 100 * gateway / wall if has_gateway else None
        s.upstream_cpu_us = sum(r.upstream_s for r in runs) / n * 1e6
        s.upstream_cpu_pct = 100 * sum(r.upstream_s for r in runs) / wall
        s.client_cpu_us = sum(r.client_s for r in runs) / n * 1e6
        s.client_cpu_pct = 100 * sum(r.client_s for r in runs) / wall
        s.other_load_pct = 100 * sum(r.foreign_s for r in runs) / wall
        s.upstream_conns = [r.upstream_conns for r in runs]
        calls = [r.champion_calls for r in runs if r.champion_calls is not None]
        s.champion_calls = sum(calls) if calls else None
        return s


@dataclass
class Path_:
    key: str
    label: str
    port: int
    request: bytes
    keel: bool  # through Keel (None gateway: direct)


async def streams_c1(p: Path_, n: int, meter: Meter) -> Run:
    """n sequential streams on one keep-alive connection."""
    run = Run()
    client = await connect(p.port)
    try:
        with meter:
            for _ in range(n):
                try:
                    reply = await client.send(p.request)
                except BadResponse as exc:
                    run.note(str(exc))
                    client = await connect(p.port)
                    continue
                problem = check_stream(reply, p.keel)
                run.note(problem)
                if problem is None:
                    run.ttft.append(reply.ttft_ms)
                    run.total.append(reply.total_ms)
    finally:
        if client.transport is not None:
            client.transport.close()
    run.cpu(meter)
    return run


async def streams_load(p: Path_, connections: int, duration: float, meter: Meter | None) -> Run:
    """`connections` connections, each streaming back to back for `duration` seconds; the
    streams in flight at the deadline finish (verified, not counted in the rate)."""
    run = Run(duration_s=duration)
    clients = [await connect(p.port) for _ in range(connections)]
    deadline = 0

    async def worker(i: int) -> None:
        while clock() < deadline:
            try:
                reply = await clients[i].send(p.request)
            except BadResponse as exc:
                run.note(str(exc))
                clients[i] = await connect(p.port)
                continue
            problem = check_stream(reply, p.keel)
            run.note(problem)
            if problem is None:
                run.ttft.append(reply.ttft_ms)
                run.total.append(reply.total_ms)
                run.in_window += reply.end <= deadline

    try:
        with meter or contextlib.nullcontext():
            deadline = clock() + int(duration * 1e9)
            await asyncio.gather(*(worker(i) for i in range(connections)))
    finally:
        for c in clients:
            if c.transport is not None:
                c.transport.close()
    if meter is not None:
        run.cpu(meter)
    return run


def answers_c1(row: Row, port: int, n: int, meter: Meter, watch: int | None) -> Run:
    """n sequential non-streamed calls (harness.RawClient: blocking socket, keep-alive)."""
    client = RawClient(port, "/v1/chat/completions", chat_body(row.model, stream=False))
    client.connect()
    run = Run()
    before = fake_requests(watch) if watch else None
    try:
        with meter:
            for _ in range(n):
                if row.pause_s:
                    time.sleep(row.pause_s)
                t0 = clock()
                try:
                    status, body = client.call()
                except (OSError, BadResponse) as exc:
                    run.note(f"{type(exc).__name__}: {exc}")
                    client.connect()
                    continue
                t1 = clock()
                problem, failed, answering = check_answer(row, status, body)
                run.note(problem)
                if problem is None:
                    run.total.append((t1 - t0) / 1e6)
                    if failed is not None:
                        run.failed_attempt.append(failed)
                    if answering is not None:
                        run.answering_attempt.append(answering)
    finally:
        client.close()
    if watch:
        assert before is not None
        run.champion_calls = fake_requests(watch) - before
    run.cpu(meter)
    return run


# --- the run -----------------------------------------------------------------------------


def _ancestors() -> set[int]:
    """This process and its parents (a wrapper such as `timeout` shows this script's name)."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return pids


def process_cpu() -> dict[int, float]:
    """CPU seconds of every process on the machine now."""
    out = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                out[int(pid)] = cpu_seconds(int(pid))
    return out


def busiest(before: dict[int, float], after: dict[int, float], wall: float,
            mine: set[int]) -> list[str]:
    """Other processes that used ≥ 5 % of a CPU between two process_cpu() snapshots."""
    used = sorted(((after[pid] - before.get(pid, 0.0), pid) for pid in after
                   if pid not in mine), reverse=True)
    out = []
    for seconds, pid in used[:3]:
        if seconds < 0.05 * wall:
            break
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            name = " ".join(a.decode(errors="replace") for a in argv[:3])[:60]
            out.append(f"{name} ({100 * seconds / wall:.0f} %)")
    return out


def source_state() -> dict[str, Any]:
    """What Keel code ran: HEAD, the uncommitted changes to src/ and a hash of them (other
    people edit the working tree while benchmarks run)."""

    def git(*cmd: str) -> str:
        return subprocess.run(["git", "-C", str(HERE), *cmd], capture_output=True, text=True,
                              check=False).stdout

    changed = git("status", "--porcelain", "--", "../src").splitlines()
    digest = hashlib.sha256(git("diff", "HEAD", "--", "../src").encode())
    for line in changed:
        if line.startswith("??"):  # untracked files: their content
            path = HERE.parent / line[3:].strip()
            files = sorted(path.rglob("*")) if path.is_dir() else [path]
            for f in files:
                with contextlib.suppress(OSError):
                    digest.update(f.read_bytes())
    provider = HERE.parent / "src" / "keel" / "providers" / "openai.py"
    client = "?"
    with contextlib.suppress(OSError):
        text = provider.read_text()
        client = ("aiohttp (keel.providers.http)" if "keel.providers.http" in text
                  else "httpx" if "import httpx" in text else "?")
    return {"head": git("rev-parse", "--short", "HEAD").strip(), "changed": changed,
            "diff_sha256": digest.hexdigest()[:12] if changed else None,
            "openai_provider_http_client": client}


def other_benchmarks() -> list[str]:
    """Command lines of other Python processes running a benchmark now (not this one)."""
    found, mine = [], _ancestors()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) in mine:
            continue
        with contextlib.suppress(OSError, UnicodeDecodeError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
            if "python" in Path(argv[0]).name and any(
                    arg.endswith(name) for arg in argv[1:3] for name in OTHER_BENCHMARKS):
                found.append(f"{pid}: {' '.join(argv).strip()[:120]}")
    return found


def wait_for_other_benchmarks(max_wait: float) -> bool:
    deadline = time.monotonic() + max_wait
    while found := other_benchmarks():
        if time.monotonic() > deadline:
            return False
        print("another benchmark is running; waiting (polling every 15 s):\n  "
              + "\n  ".join(found), flush=True)
        time.sleep(15)
    return True


def wait_ready(children: list[Child], probes: list[Callable[[], bool]],
               timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    for probe in probes:
        while True:
            for child in children:
                if child.proc.poll() is not None:
                    raise SystemExit(f"{child.name} exited ({child.proc.returncode}):\n"
                                     f"{child.output()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if probe():
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"servers not ready after {timeout:.0f} s")
            time.sleep(0.1)


def order(i: int, items: list[Any]) -> list[Any]:
    k = i % len(items)
    return items[k:] + items[:k]


def split(total: int, rounds: int) -> list[int]:
    return [total // rounds + (i < total % rounds) for i in range(rounds)]


def run(args: argparse.Namespace, children: Children, workdir: Path) -> int:
    started = time.monotonic()
    info = machine()
    source = source_state()  # before the servers start: the code they run
    client_cpus, upstream_cpus, gateway_cpus, _ = cpu_plan(args.pin)
    pin_note = ("none: every process may run on every CPU" if gateway_cpus is None else
                f"Keel alone on CPU {min(gateway_cpus)}; the fakes on CPU "
                f"{min(upstream_cpus or {0})}, this script (the client) on CPU "
                f"{min(client_cpus or {0})}")
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    py = sys.executable
    ports = {name: free_port() for name in ("healthy", "broken", "slow", "solo", "keel")}
    # "solo": one more healthy fake, on Keel's CPU (idle but in its own row): the upstream
    # alone on a CPU, as Keel is, for a server-for-server comparison at concurrency N
    solo = gateway_cpus is not None
    fakes = {name: children.start(f"fake-{name}", [py, "-m", "keel.testing", "--port",
                                                   str(ports[name]), "--reply", REPLY],
                                  gateway_cpus if name == "solo" else upstream_cpus)
             for name in ("healthy", "broken", "slow", *(("solo",) if solo else ()))}
    config = workdir / "keel.yaml"
    config.write_text(keel_yaml(ports["healthy"], ports["broken"], ports["slow"], args.timeout_s))
    database = workdir / "keel.db"
    keel = children.start("keel", [py, "-m", "keel", "serve", "--config", str(config), "--db",
                                   str(database), "--port", str(ports["keel"])], gateway_cpus,
                          env={"KEEL_BENCH_KEY": "sk-bench"})
    servers = [*fakes.values(), keel]
    wait_ready(servers, [
        *(lambda port=ports[n]: control(port, "GET", "/_fake/stats")[0] == 200 for n in fakes),
        lambda: control(ports["keel"], "GET", "/healthz")[0] == 200,
    ])
    for name, mode in (("broken", {"mode": "error"}), ("slow", {"mode": "timeout", "hang_s": 5})):
        status, answer = control(ports[name], "POST", "/_fake/mode", mode)
        if status != 200 or answer.get("mode") != mode["mode"]:
            raise SystemExit(f"could not set the {name} fake's mode: {status} {answer}")
    print(f"servers up in {time.monotonic() - started:.1f} s; pinning: {pin_note}", flush=True)
    print(f"reply: {REPLY_WORDS} words", flush=True)

    try:
        import uvloop
        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    runner = asyncio.Runner(loop_factory=factory)
    quiet = Quiet(args.max_background, args.retry_budget)
    sent = Counter[str]()  # calls sent to Keel per feature (every one is answered)
    upstreams = list(fakes.values())
    rounds = args.rounds

    def meter(gateway: Child | None) -> Meter:
        return Meter(gateway, upstreams)

    def measure(label: str, fn: Callable[[], Run]) -> Run:
        """quiet.run, and who the other processes were when they disturbed a measurement."""

        def one() -> Run:
            before = process_cpu()
            result = fn()
            mine = {os.getpid(), *(c.pid for c in children.children)}
            if quiet.busy(result.foreign_s, result.wall_s):
                result.others = busiest(before, process_cpu(), result.wall_s, mine)
                print(f"    (other load from: {', '.join(result.others) or 'short-lived processes'})",
                      flush=True)
            return result

        return quiet.run(label, one)

    # (1) streaming ----------------------------------------------------------------------
    chat = "/v1/chat/completions"
    stream_paths = [
        Path_("direct", "direct (fake upstream)", ports["healthy"],
              http_request(ports["healthy"], chat, chat_body("chat", stream=True)), keel=False),
        Path_("keel", "Keel /v1/chat/completions", ports["keel"],
              http_request(ports["keel"], chat, chat_body("chat", stream=True)), keel=True),
    ]
    load_paths = [*stream_paths]
    if solo:
        load_paths.insert(1, Path_(
            "direct_solo", f"direct, fake alone on CPU {min(gateway_cpus or {1})}", ports["solo"],
            http_request(ports["solo"], chat, chat_body("chat", stream=True)), keel=False))

    def gateway_of(p: Path_) -> Child | None:
        return keel if p.keel else None

    def c1(p: Path_, n: int) -> Run:
        if p.keel:
            sent["chat"] += n
        return runner.run(streams_c1(p, n, meter(gateway_of(p))))

    def load(p: Path_, secs: float, measured: bool = True) -> Run:
        one = runner.run(streams_load(p, args.connections, secs,
                                      meter(gateway_of(p)) if measured else None))
        if p.keel:
            sent["chat"] += one.n
            one.upstream_conns = upstream_connections(keel.pid, ports["healthy"])
        return one

    print(f"(1) streaming, concurrency 1: warm-up {args.warmup}, then {args.streams} streams per "
          f"path in {rounds} round(s) ...", flush=True)
    for p in stream_paths:
        warm = c1(p, args.warmup)
        if warm.bad:
            raise SystemExit(f"{p.label}: warm-up streams were wrong: {warm.sample_error}")
    c1_runs: dict[str, list[Run]] = {p.key: [] for p in stream_paths}
    c1_window = [time.time(), 0.0]
    for i, n in enumerate(split(args.streams, rounds)):
        for p in order(i, stream_paths):
            c1_runs[p.key].append(measure(f"c=1 {p.label} round {i + 1}",
                                            lambda p=p, n=n: c1(p, n)))
    c1_window[1] = time.time()
    stream_c1 = {k: Summary.of(v, k == "keel") for k, v in c1_runs.items()}
    for p in stream_paths:
        s = stream_c1[p.key]
        print(f"  {p.label:<28} TTFT p50 {s.ttft_p50:.3f} ms  p99 {s.ttft_p99:.3f} ms  "
              f"total p50 {s.total_p50:.3f} ms", flush=True)

    secs = max(1.0, args.duration / rounds)
    print(f"(1) streaming, concurrency {args.connections}: {rounds} × {secs:g} s per path ...",
          flush=True)
    for p in load_paths:
        warm = load(p, 1.0 if args.quick else 2.0, measured=False)
        if warm.bad:
            raise SystemExit(f"{p.label}: warm-up streams were wrong: {warm.sample_error}")
    load_runs: dict[str, list[Run]] = {p.key: [] for p in load_paths}
    for i in range(rounds):
        for p in order(i, load_paths):
            load_runs[p.key].append(measure(f"c={args.connections} {p.label} round {i + 1}",
                                              lambda p=p: load(p, secs)))
    stream_load = {k: Summary.of(v, k == "keel") for k, v in load_runs.items()}
    for p in load_paths:
        s = stream_load[p.key]
        print(f"  {p.label:<28} {s.rps:,.0f} streams/s (rounds {s.rps_min:,.0f}–{s.rps_max:,.0f})"
              f"  TTFT p50 {s.ttft_p50:.2f} ms", flush=True)

    # (2) fallback ----------------------------------------------------------------------
    rows = [
        Row("direct", "direct (fake upstream)", "chat", None, requests=args.requests),
        Row("healthy", "Keel, healthy champion", "chat", "accepted", "primary", (None,),
            args.requests),
        Row("error", "Keel, champion 500 → fallback", "fb_error", "fallback", "backup",
            ("provider_unavailable", None), args.requests),
        Row("timeout", f"Keel, champion times out ({args.timeout_s:g} s) → fallback",
            "fb_timeout", "fallback", "backup", ("provider_timeout", None),
            args.timeout_requests),
        # control: the same idle gap as a timeout, without one (the machine's wake-up cost)
        Row("paused", f"Keel, healthy champion, {args.timeout_s:g} s pause before each call",
            "chat", "accepted", "primary", (None,), args.timeout_requests,
            pause_s=args.timeout_s),
        Row("open", "Keel, circuit open → fallback", "fb_open", "fallback", "backup",
            ("circuit_open", None), args.requests),
    ]
    by_key = {r.key: r for r in rows}
    print(f"(2) fallback, non-streamed, concurrency 1: {args.requests} requests per row "
          f"({args.timeout_requests} for the timeout and pause rows) in {rounds} round(s) ...",
          flush=True)
    # open the circuit: failure_threshold 3 consecutive 500s, then the champion is skipped
    opening: list[dict[str, Any]] = []
    opener = Row("opening", "", "fb_open", "fallback", "backup", ("provider_unavailable", None))
    client = RawClient(ports["keel"], chat, chat_body("fb_open", stream=False))
    try:
        for _ in range(10):
            t0 = clock()
            status, body = client.call()
            ms = (clock() - t0) / 1e6
            sent["fb_open"] += 1
            problem, failed, _ = check_answer(opener, status, body)
            if problem is not None:
                raise SystemExit(f"opening the circuit: unexpected answer: {problem}")
            opening.append({"latency_ms": round(ms, 3), "failed_attempt_ms": failed})
            circuits = control(ports["keel"], "GET", "/api/circuits")[1]["circuits"]
            dead = next(c for c in circuits if c["provider"] == "dead")
            if dead["state"] == "open":
                break
    finally:
        client.close()
    if dead["state"] != "open":
        raise SystemExit(f"the circuit did not open after {len(opening)} failures: {dead}")
    lat = ", ".join(f"{o['latency_ms']:.2f}" for o in opening)
    print(f"  circuit open after {len(opening)} failing calls ({lat} ms)", flush=True)

    def fallback_c1(row: Row, n: int) -> Run:
        watch = ports["broken"] if row.key == "open" else None
        port = ports["healthy"] if row.key == "direct" else ports["keel"]
        if row.key != "direct":
            sent[row.model] += n
        return answers_c1(row, port, n, meter(None if row.key == "direct" else keel), watch)

    for row in rows:  # warm-up (the timeout and pause rows: two calls)
        warm = fallback_c1(row, 2 if row.pause_s or row.key == "timeout" else args.warmup)
        if warm.bad:
            raise SystemExit(f"{row.label}: warm-up answers were wrong: {warm.sample_error}")
    fb_runs: dict[str, list[Run]] = {r.key: [] for r in rows}
    for i in range(rounds):
        for row in order(i, rows):
            n = split(row.requests, rounds)[i]
            fb_runs[row.key].append(measure(f"fallback {row.label} round {i + 1}",
                                              lambda row=row, n=n: fallback_c1(row, n)))
    fallback = {k: Summary.of(v, k != "direct") for k, v in fb_runs.items()}
    for row in rows:
        s = fallback[row.key]
        print(f"  {row.label:<46} p50 {s.total_p50:.3f} ms  p99 {s.total_p99:.3f} ms", flush=True)
    circuits = control(ports["keel"], "GET", "/api/circuits")[1]["circuits"]

    # every call recorded, with the right decision? SIGTERM drains Keel's event writer
    children.stop(keel)
    with contextlib.closing(sqlite3.connect(database)) as conn:
        recorded = {(f, d): c for f, d, c in conn.execute(
            "SELECT feature, decision, COUNT(*) FROM events GROUP BY feature, decision")}
        rows_c1 = conn.execute("SELECT timings FROM events WHERE feature = 'chat' AND ts "
                               "BETWEEN ? AND ?", c1_window).fetchall()
    expected = {("chat", "accepted"): sent["chat"], ("fb_error", "fallback"): sent["fb_error"],
                ("fb_timeout", "fallback"): sent["fb_timeout"],
                ("fb_open", "fallback"): sent["fb_open"]}
    events_ok = recorded == expected
    first_token = sorted(t["first_token"] for (raw,) in rows_c1
                         if "first_token" in (t := json.loads(raw)))
    keel_stages = {"events": len(first_token)}
    if first_token:
        keel_stages["first_token_p50_ms"] = round(percentile(first_token, 0.5), 3)

    report = tables(args, stream_c1, stream_load, fallback, by_key, opening, pin_note)
    print("\n" + report)
    if first_token:
        print(f"\nKeel's own time to the first upstream delta (its events, c=1 streams, median of "
              f"{len(first_token)}): {keel_stages['first_token_p50_ms']:.3f} ms")
    print(f"\nKeel recorded {sum(recorded.values()):,} events for {sum(sent.values()):,} calls "
          f"({'every one, with the expected decision' if events_ok else 'MISMATCH'}: "
          f"{dict(sorted((f'{f}/{d}', c) for (f, d), c in recorded.items()))})")
    bad = []
    for name, summaries in (("c=1 stream", stream_c1), (f"c={args.connections} stream",
                                                        stream_load), ("fallback", fallback)):
        for key, s in summaries.items():
            if s.bad or not s.ok:
                bad.append(f"{name} {key}: {s.bad} bad of {s.n} ({s.sample_error})")
    if fallback["open"].champion_calls:
        bad.append(f"the failing upstream got {fallback['open'].champion_calls} calls while its "
                   "circuit was open")
    if not events_ok:
        bad.append(f"Keel recorded {recorded}, expected {expected}")
    if quiet.discarded or quiet.kept_busy:
        print(f"{quiet.discarded} measurement(s) discarded and re-run because other processes "
              f"used the CPUs; {quiet.kept_busy} kept although disturbed (see 'other load')")

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "streaming.json").write_text(json.dumps({
        "machine": info, "source": source, "pinning": pin_note, "reply_words": REPLY_WORDS,
        "args": {k: str(v) for k, v in vars(args).items()},
        "streaming_c1": {k: asdict(v) for k, v in stream_c1.items()},
        "streaming_load": {k: asdict(v) for k, v in stream_load.items()},
        "fallback_c1": {k: asdict(v) for k, v in fallback.items()},
        "circuit_opening_calls": opening, "circuits_at_end": circuits,
        "keel_stages": keel_stages,
        "events": {"recorded": {f"{f}/{d}": c for (f, d), c in recorded.items()},
                   "sent": dict(sent)},
        "disturbed": {"discarded": quiet.discarded, "kept": quiet.kept_busy},
    }, indent=2, default=str))
    if source["changed"]:
        print(f"\nUncommitted changes in src/ (hash {source['diff_sha256']}): "
              + ", ".join(line[3:] for line in source["changed"]))
    print(f"OpenAI provider's HTTP client: {source['openai_provider_http_client']}")
    print(f"\nKeel at {info['keel_commit']}; machine: {info['nproc']} CPUs ({info['cpu_model']}), "
          f"Python {info['python']}, uvicorn {info.get('uvicorn')} + uvloop {info.get('uvloop')}"
          f", httpx {info.get('httpx')} (httpcore {info.get('httpcore')})")
    if not args.no_plot and plot(args, stream_c1, stream_load, fallback, by_key,
                                 args.out / "streaming.png",
                                 f"{info['nproc']} CPUs, Python {info['python']}"):
        print(f"plot: {args.out / 'streaming.png'}")
    print(f"results: {args.out / 'streaming.json'}; the run took "
          f"{time.monotonic() - started:.0f} s")
    runner.close()
    if bad:
        print("\nINVALID RUN: not every answer was right:\n  " + "\n  ".join(bad),
              file=sys.stderr)
        return 1
    return 0


# --- reporting -----------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 3) -> str:
    return report.fmt(value, digits, thousands=True)


def tables(args: argparse.Namespace, c1: dict[str, Summary], load: dict[str, Summary],
           fallback: dict[str, Summary], rows: dict[str, Row], opening: list[dict[str, Any]],
           pin_note: str) -> str:
    d, k = c1["direct"], c1["keel"]
    out = [f"Streaming, concurrency 1 — {args.streams} sequential streams per path on one "
           f"keep-alive connection, {args.rounds} interleaved round(s); a {REPLY_WORDS}-word "
           "reply:", "",
           "| path | TTFT p50 ms | TTFT p90 ms | TTFT p99 ms | total p50 ms | total p99 ms "
           "| Keel CPU µs/stream | other load | ok / bad |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for label, s in (("direct (fake upstream)", d), ("Keel /v1/chat/completions", k)):
        out.append(f"| {label} | {fmt(s.ttft_p50)} | {fmt(s.ttft_p90)} | {fmt(s.ttft_p99)} "
                   f"| {fmt(s.total_p50)} | {fmt(s.total_p99)} | {fmt(s.gateway_cpu_us, 0)} "
                   f"| {s.other_load_pct:.0f} % | {s.ok} / {s.bad} |")
    out.append(f"| **added by Keel** | **+{k.ttft_p50 - d.ttft_p50:.3f}** | "
               f"+{k.ttft_p90 - d.ttft_p90:.3f} | **+{k.ttft_p99 - d.ttft_p99:.3f}** "
               f"| +{k.total_p50 - d.total_p50:.3f} | +{k.total_p99 - d.total_p99:.3f} "
               f"| | | |")
    out += ["", f"The client's own cost: {d.client_cpu_us:.0f} µs of CPU per stream on the direct "
            f"path ({k.client_cpu_us:.0f} through Keel: one more event, and the chunks arrive "
            f"one by one from another CPU); the fake upstream's: {d.upstream_cpu_us:.0f} µs per "
            "stream.", "",
            f"Streaming, concurrency {args.connections} — {args.connections} keep-alive "
            f"connections streaming back to back, {args.duration:g} s per path in "
            f"{args.rounds} interleaved round(s):", "",
            "| path | streams/s (median round) | rounds min–max | vs direct | TTFT p50 ms "
            "| TTFT p99 ms | total p50 ms | Keel CPU | fakes CPU | client CPU | other load "
            "| Keel CPU µs/stream | ok / bad |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    dl, keel = load["direct"], load["keel"]
    labels = {"direct": "direct (fake upstream; fake + client share a CPU)",
              "direct_solo": "direct, fake alone on Keel's CPU", "keel": "Keel /v1/chat/completions"}
    for key, s in load.items():
        label = labels[key]
        ratio = "–" if s is not keel else f"**{s.rps / dl.rps:.2f}×**"
        if s is keel and "direct_solo" in load:
            ratio += f" ({s.rps / load['direct_solo'].rps:.2f}× alone)"
        gw = "–" if s.gateway_cpu_pct is None else f"{s.gateway_cpu_pct:.0f} %"
        out.append(f"| {label} | {s.rps:,.0f} | {s.rps_min:,.0f}–{s.rps_max:,.0f} | {ratio} "
                   f"| {fmt(s.ttft_p50, 2)} | {fmt(s.ttft_p99, 2)} | {fmt(s.total_p50, 2)} | {gw} "
                   f"| {s.upstream_cpu_pct:.0f} % | {s.client_cpu_pct:.0f} % "
                   f"| {s.other_load_pct:.0f} % | {fmt(s.gateway_cpu_us, 0)} | {s.ok} / {s.bad} |")
    conns = " ".join("–" if c is None else str(c) for c in load["keel"].upstream_conns)
    out += ["", f"Keel's open connections to the fake after each round: {conns}. CPU columns: % "
            f"of one CPU over the round (fakes: all of them; the one streaming does the work). "
            f"Pinning: {pin_note}.", "",
            f"Fallback, non-streamed, concurrency 1 — {args.requests} sequential requests per row "
            f"({args.timeout_requests} for the timeout and pause rows), {args.rounds} "
            "interleaved round(s); added = row − healthy champion (the timeout row: − the "
            "healthy champion after the same pause, the control row below it):", "",
            "| path | p50 ms | p99 ms | mean ms | added p50 ms | added p99 ms "
            "| failed champion attempt p50 ms | answering attempt p50 ms | Keel CPU µs/call "
            "| calls reaching the failing fake | ok / bad |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for key, row in rows.items():
        s = fallback[key]
        base = fallback["paused" if key == "timeout" else "healthy"]
        none = key in ("direct", "healthy", "paused")
        added = "–" if none else f"**{s.total_p50 - base.total_p50:+.3f}**"
        added99 = "–" if none else f"{s.total_p99 - base.total_p99:+.3f}"
        if key in ("error", "timeout"):
            reached = "every call"
        elif key == "open":
            reached = str(s.champion_calls)
        else:
            reached = "–"
        out.append(f"| {row.label} | {fmt(s.total_p50)} | {fmt(s.total_p99)} | {fmt(s.mean)} "
                   f"| {added} | {added99} | {fmt(s.failed_attempt_p50)} "
                   f"| {fmt(s.answering_attempt_p50)} "
                   f"| {fmt(s.gateway_cpu_us, 0)} | {reached} | {s.ok} / {s.bad} |")
    t, h, c = fallback["timeout"], fallback["healthy"], fallback["paused"]
    lat = ", ".join(f"{o['latency_ms']:.2f} ms" for o in opening)
    out += ["", f"Attempt columns: Keel's own record (`keel.attempts[].latency_ms`). The timeout "
            f"row against the healthy champion without a pause: {t.total_p50 - h.total_p50:+.3f} "
            f"ms at p50; {args.timeout_s * 1000:g} ms of it is timeout_s, and "
            f"{c.total_p50 - h.total_p50:+.3f} ms is what any call pays after "
            f"{args.timeout_s:g} s of idling on this machine (the control row)."]
    out += ["", f"The circuit opened after {len(opening)} failing calls ({lat}: each paid for the "
            f"500 like the 'champion 500' row); every later call skipped the champion "
            f"(attempt 'circuit_open', 0 ms) and went straight to the fallback."]
    return "\n".join(out)


def plot(args: argparse.Namespace, c1: dict[str, Summary], load: dict[str, Summary],
         fallback: dict[str, Summary], rows: dict[str, Row], path: Path, subtitle: str) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 5),
                                        gridspec_kw={"width_ratios": [4, 3, 5]})
    # concurrency 1: TTFT and total
    groups = ["TTFT p50", "TTFT p99", "total p50", "total p99"]
    w = 0.38
    for j, (key, label, color) in enumerate((("direct", "direct", "#4a7"),
                                             ("keel", "Keel", "#37c"))):
        s = c1[key]
        values = [s.ttft_p50, s.ttft_p99, s.total_p50, s.total_p99]
        xs = [i + (j - 0.5) * w for i in range(len(groups))]
        ax1.bar(xs, values, w, label=label, color=color)
        for x, v in zip(xs, values, strict=True):
            ax1.text(x, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    ax1.set_xticks(range(len(groups)), groups, fontsize=8)
    ax1.set_ylabel("ms")
    added = c1["keel"].ttft_p50 - c1["direct"].ttft_p50
    ax1.set_title(f"Streams at concurrency 1 ({REPLY_WORDS}-word reply)\n"
                  f"added TTFT p50: +{added:.2f} ms", fontsize=9)
    ax1.legend(fontsize=8)
    # concurrency N: streams/s
    names = {"direct": "direct\n(fake + client\non CPU 0)", "direct_solo": "direct\n(fake alone\non CPU 1)",
             "keel": "Keel\n(alone on CPU 1)"}
    keys = list(load)
    rps = [load[k].rps for k in keys]
    xs = list(range(len(keys)))
    ax2.bar(xs, rps, 0.6, color=["#37c" if k == "keel" else "#4a7" for k in keys])
    ax2.errorbar(xs, rps, yerr=[[load[k].rps - load[k].rps_min for k in keys],
                                [load[k].rps_max - load[k].rps for k in keys]],
                 fmt="none", ecolor="black", capsize=3, lw=1)
    for i, v in enumerate(rps):
        ax2.text(i, v / 2, f"{v:,.0f}", ha="center", va="center", fontsize=8, color="white",
                 fontweight="bold")
    ax2.set_xticks(xs, [names[k] for k in keys], fontsize=7)
    ax2.set_ylabel("completed streams / s (median round; bars: min–max)")
    alone = (f", {load['keel'].rps / load['direct_solo'].rps:.2f}× the fake alone"
             if "direct_solo" in load else "")
    ax2.set_title(f"Streams at concurrency {args.connections}\nKeel = "
                  f"{load['keel'].rps / load['direct'].rps:.2f}× direct{alone}", fontsize=9)
    # fallback
    t = args.timeout_s
    labels = {"healthy": "healthy\nchampion", "error": "champion 500\n→ fallback",
              "open": "circuit open\n→ fallback", "paused": f"healthy champion\nafter {t:g} s idle"
              "\n(control)", "timeout": f"champion times\nout ({t:g} s)\n→ fallback"}
    keys = [k for k in labels if k in rows]
    p50 = [fallback[k].total_p50 for k in keys]
    p99 = [fallback[k].total_p99 for k in keys]
    xs3 = list(range(len(keys)))
    ax3.bar([x - w / 2 for x in xs3], p50, w, label="p50", color="#37c")
    ax3.bar([x + w / 2 for x in xs3], p99, w, label="p99", color="#9bd")
    for x, k, v in zip(xs3, keys, p50, strict=True):
        base = fallback["paused" if k == "timeout" else "healthy"].total_p50
        text = f"{v:.2f}" if k in ("healthy", "paused") else f"{v:.2f}\n({v - base:+.2f})"
        ax3.text(x - w / 2, v, text, ha="center", va="bottom", fontsize=7)
    ax3.set_yscale("log")
    ax3.set_ylim(top=max(p99 + p50) * 2.5)  # room for the labels
    ax3.set_xticks(xs3, [labels[k] for k in keys], fontsize=7)
    ax3.set_ylabel("ms per call (log scale)")
    ax3.set_title("Fallback path, non-streamed, concurrency 1\n(in brackets: added p50 vs the "
                  "healthy champion; the timeout: vs the control)", fontsize=9)
    ax3.legend(fontsize=8)
    fig.suptitle(f"Keel streaming and fallback, fake upstream — {subtitle}", fontsize=10)
    save_figure(fig, path)
    return True


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Streaming and fallback through Keel.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=(__doc__ or "").split("\n\n", 1)[1])
    add_common_args(parser, "streaming", retry_budget=60,
                    pin_help="split: Keel alone on one CPU, the fakes + the client on another")
    parser.add_argument("--streams", type=int, help="streams per path at concurrency 1 [1000]")
    parser.add_argument("--warmup", type=int, help="warm-up calls per path [100]")
    parser.add_argument("--connections", type=int, default=64,
                        help="concurrency of the streaming throughput test [64]")
    parser.add_argument("--duration", type=float,
                        help="seconds of streaming load per path, split over the rounds [15]")
    parser.add_argument("--requests", type=int,
                        help="non-streamed requests per fallback row [1000]")
    parser.add_argument("--timeout-requests", type=int,
                        help="requests of the timeout row (each waits --timeout-s) [50]")
    parser.add_argument("--timeout-s", type=float, default=0.2,
                        help="timeout_s of the champion that times out [0.2]")
    parser.add_argument("--wait-other", type=float, default=1200,
                        help="seconds to wait for another benchmark (bench/overhead.py, "
                             "bench/streaming.py) to finish before the start [1200]")
    args = parser.parse_args(argv)
    quick = args.quick
    args.streams = args.streams or (200 if quick else 1000)
    args.warmup = args.warmup if args.warmup is not None else (20 if quick else 100)
    args.duration = args.duration or (2.0 if quick else 15.0)
    args.requests = args.requests or (200 if quick else 1000)
    args.timeout_requests = args.timeout_requests or (10 if quick else 50)
    args.rounds = max(1, args.rounds or (1 if quick else 5))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def others() -> int | None:
        if not wait_for_other_benchmarks(args.wait_other):
            print("another benchmark is still running: its numbers and these would disturb "
                  "each other. Try later.", file=sys.stderr)
            return 3
        return None

    # children get SIGTERM from the kernel too if this process dies (harness._preexec)
    return run_main(args, run, "keel-bench-streaming-", before=others)


if __name__ == "__main__":
    sys.exit(main())
