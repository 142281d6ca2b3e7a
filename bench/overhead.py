"""Keel's gateway overhead: added latency and throughput against a bare pass-through.

Four paths are measured side by side in one run, every server its own process:

  direct        client -> fake upstream (``python -m keel.testing --reply billing``)
  pass-through  client -> bench/passthrough.py (uvicorn + one httpx.AsyncClient) -> fake
  keel chat     client -> ``keel serve`` POST /v1/chat/completions -> fake
  keel feature  client -> ``keel serve`` POST /v1/features/triage  -> fake

Keel's feature has every stage on: input JSON Schema + text checks, a champion and a
fallback version on the ``openai`` provider, allowed_labels + regex + length validators,
confidence thresholds (the version asks for logprobs), cost, and event recording into
its own temporary SQLite database (counted at the end).

Concurrency 1: ``--requests`` sequential requests on one keep-alive connection, sent by a
lean blocking-socket HTTP/1.1 client (its own CPU cost per request is printed), after
``--warmup`` requests. Added latency = path p50 - direct p50.
Concurrency 64: ``wrk -t1 -c64`` for ``--duration`` seconds after a short warm-up.
Every response is checked (status 200 and the expected body); a run with errors fails.

CPU pinning (``--pin split``, the default, on 2 CPUs): the gateway under test (pass-through
or Keel) gets CPU 1 to itself; the fake upstream and the load generator share CPU 0.
``--pin none`` lets the scheduler place everything on all CPUs.

    .venv/bin/python bench/overhead.py            # ~1.5 min; needs wrk (apt-get install wrk)
    .venv/bin/python bench/overhead.py --quick    # ~25 s smoke run
    .venv/bin/python bench/overhead.py --profile  # + py-spy profile of Keel under c=64 load
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import platform
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
FEATURE = "triage"
REPLY = "billing"
TEXT = "I was charged twice for my order last week, please refund one of the payments"

CHAT_BODY = json.dumps({"model": FEATURE, "messages": [{"role": "user", "content": TEXT}]},
                       separators=(",", ":")).encode()
FEATURE_BODY = json.dumps({"input": {"text": TEXT}}, separators=(",", ":")).encode()

KEEL_YAML = """\
# written by bench/overhead.py: one feature with every stage of the pipeline on
providers:
  fake:
    type: openai
    base_url: "http://127.0.0.1:{port}/v1"
    api_key: "${{KEEL_BENCH_KEY}}"
    timeout_s: 5
features:
  {feature}:
    description: Route a support message (overhead benchmark).
    input:
      schema:
        type: object
        required: [text]
        properties:
          text: {{type: string, minLength: 1, maxLength: 2000}}
        additionalProperties: false
      text_field: text
      max_chars: 2000
    output:
      kind: label
      labels: [billing, shipping, refund, account, other]
      label_descriptions:
        billing: charges, invoices, payment methods
        shipping: delivery, parcels, tracking
    versions:
      gpt:
        provider: fake
        model: fake-model
        params: {{logprobs: true, temperature: 0}}
        price: {{input: 0.15, output: 0.6}}
      backup:
        provider: fake
        model: fake-model-backup
        params: {{logprobs: true}}
    aliases: {{champion: gpt}}
    fallbacks: [backup]
    retry: {{max_retries: 1, backoff_s: 0.01, max_backoff_s: 0.05}}
    validators:
      - {{type: allowed_labels, on_fail: fallback}}
      - {{type: regex, pattern: "^[a-z_]+$", field: label, on_fail: refuse}}
      - {{type: length, min_chars: 1, max_chars: 32, field: label, on_fail: refuse}}
    policy: {{accept_at: 0.5, refuse_below: 0.1}}
    safe_default: {{label: other}}
"""

GOAL_ADDED_P50_MS = 1.0
GOAL_THROUGHPUT_RATIO = 0.8


# --- child processes ----------------------------------------------------------------------


def _preexec(cpus: set[int] | None) -> Any:
    """Runs in the child before exec: pin it, and have it killed if this script dies."""

    def run() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return run


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


class Children:
    """Every process this script starts; stopped on exit, Ctrl-C or error."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.children: list[Child] = []

    def start(self, name: str, cmd: list[str], cpus: set[int] | None,
              env: dict[str, str] | None = None) -> Child:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
                                    preexec_fn=_preexec(cpus), start_new_session=True)
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    def stop(self, child: Child, timeout: float = 40.0) -> int | None:
        proc = child.proc
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def stop_all(self) -> None:
        for child in reversed(self.children):
            self.stop(child, timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads included."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU-seconds every CPU of the machine spent not idle, since boot."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest* are inside user)
    busy = sum(values[:8]) - values[3] - values[4]
    return busy / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU used during one measurement: by the gateway, the upstream, the client (this
    script + wrk) and by everything else on the machine (other people's jobs)."""

    def __init__(self, gateway: Child | None, upstream: Child) -> None:
        self.gateway, self.upstream = gateway, upstream

    def _snap(self) -> tuple[float, ...]:
        own = os.times()
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (time.monotonic(), machine_busy_seconds(),
                cpu_seconds(self.gateway.pid) if self.gateway else 0.0,
                cpu_seconds(self.upstream.pid),
                own.user + own.system + kids.ru_utime + kids.ru_stime)

    def __enter__(self) -> CpuMeter:
        self.start = self._snap()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._snap()
        d = [b - a for a, b in zip(self.start, end, strict=True)]
        self.wall, busy, self.gateway_s, self.upstream_s, self.client_s = d
        # clock ticks are 10 ms: tiny negative noise is clamped away
        self.foreign_s = max(0.0, busy - self.gateway_s - self.upstream_s - self.client_s)


def background_load(seconds: float = 1.0) -> float:
    """CPUs' worth of load on the machine right now (1.0 = one CPU fully busy)."""
    t0, b0 = time.monotonic(), machine_busy_seconds()
    time.sleep(seconds)
    return (machine_busy_seconds() - b0) / (time.monotonic() - t0)


# --- a lean HTTP/1.1 keep-alive client for concurrency 1 ------------------------------------


class BadResponse(Exception):
    pass


class RawClient:
    """One keep-alive connection, blocking sockets, no parsing beyond Content-Length."""

    def __init__(self, port: int, path: str, body: bytes) -> None:
        self.port = port
        self.request = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self.sock: socket.socket | None = None

    def connect(self) -> None:
        self.close()
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def call(self) -> tuple[int, bytes]:
        if self.sock is None:
            self.connect()
        sock = self.sock
        assert sock is not None
        sock.sendall(self.request)
        buf = b""
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            chunk = sock.recv(65536)
            if not chunk:
                self.close()
                raise BadResponse("connection closed before the response headers")
            buf += chunk
        head = buf[:end].decode("latin-1")
        status = int(head[9:12])
        length = None
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if length is None:
            self.close()
            raise BadResponse(f"no Content-Length in: {head!r}")
        body = buf[end + 4:]
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                self.close()
                raise BadResponse("connection closed mid-body")
            body += chunk
        return status, body


# --- the paths ------------------------------------------------------------------------------


@dataclass
class Endpoint:
    key: str
    label: str
    port: int
    path: str
    body: bytes
    expect: tuple[str, ...]  # substrings every 200 body must contain
    server: Child | None = None  # the gateway process (None for direct)


@dataclass
class Latency:
    """Concurrency 1, pooled over every round."""

    n: int = 0
    ok: int = 0
    non200: int = 0
    bad_body: int = 0
    p50: float = 0.0
    p90: float = 0.0
    p99: float = 0.0
    mean: float = 0.0
    max: float = 0.0
    client_cpu_us: float = 0.0  # the socket client's own CPU per request
    gateway_cpu_us: float | None = None  # the gateway process's CPU per request
    other_load_pct: float = 0.0  # other processes' CPU during the measurement, % of one CPU
    sample_error: str = ""
    times: list[float] = field(default_factory=list, repr=False)
    wall_s: float = 0.0
    client_s: float = 0.0
    gateway_s: float = 0.0
    foreign_s: float = 0.0

    def finish(self, has_gateway: bool) -> None:
        times = sorted(self.times)
        self.n = len(times)
        self.p50, self.p90 = percentile(times, 0.50), percentile(times, 0.90)
        self.p99, self.max = percentile(times, 0.99), times[-1]
        self.mean = sum(times) / self.n
        self.client_cpu_us = self.client_s / self.n * 1e6
        self.gateway_cpu_us = self.gateway_s / self.n * 1e6 if has_gateway else None
        self.other_load_pct = 100 * self.foreign_s / self.wall_s


@dataclass
class WrkRun:
    duration_s: float
    requests: int
    ok: int
    non200: int
    bad_body: int
    socket_errors: int
    p50: float
    p99: float
    rps: float
    sample_error: str
    gateway_s: float
    upstream_s: float
    client_s: float
    foreign_s: float


@dataclass
class Throughput:
    """Concurrency 64, summed over every round (latency: the median round's)."""

    rounds: list[WrkRun] = field(default_factory=list)
    rps: float = 0.0
    rps_min: float = 0.0
    rps_max: float = 0.0
    requests: int = 0
    ok: int = 0
    non200: int = 0
    bad_body: int = 0
    socket_errors: int = 0
    p50: float = 0.0
    p99: float = 0.0
    gateway_cpu_pct: float | None = None
    gateway_cpu_us: float | None = None
    upstream_cpu_pct: float = 0.0
    client_cpu_pct: float = 0.0  # wrk, and this script's few µs
    other_load_pct: float = 0.0
    sample_error: str = ""

    def finish(self, has_gateway: bool) -> None:
        runs = self.rounds
        dur = sum(r.duration_s for r in runs)
        self.requests = sum(r.requests for r in runs)
        self.ok = sum(r.ok for r in runs)
        self.non200 = sum(r.non200 for r in runs)
        self.bad_body = sum(r.bad_body for r in runs)
        self.socket_errors = sum(r.socket_errors for r in runs)
        self.rps = self.requests / dur
        self.rps_min = min(r.rps for r in runs)
        self.rps_max = max(r.rps for r in runs)
        self.p50 = statistics.median(r.p50 for r in runs)
        self.p99 = statistics.median(r.p99 for r in runs)
        gateway = sum(r.gateway_s for r in runs)
        self.gateway_cpu_pct = 100 * gateway / dur if has_gateway else None
        self.gateway_cpu_us = gateway / max(1, self.requests) * 1e6 if has_gateway else None
        self.upstream_cpu_pct = 100 * sum(r.upstream_s for r in runs) / dur
        self.client_cpu_pct = 100 * sum(r.client_s for r in runs) / dur
        self.other_load_pct = 100 * sum(r.foreign_s for r in runs) / dur
        self.sample_error = next((r.sample_error for r in runs if r.sample_error), "")


@dataclass
class Result:
    key: str
    label: str
    c1: Latency = field(default_factory=Latency)
    c64: Throughput = field(default_factory=Throughput)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    idx = max(0, math.ceil(q * len(sorted_values)) - 1)
    return sorted_values[min(idx, len(sorted_values) - 1)]


def check_body(p: Endpoint, status: int, body: bytes) -> str | None:
    if status != 200:
        return f"HTTP {status}: {body[:300]!r}"
    text = body.decode("utf-8", "replace")
    for s in p.expect:
        if s not in text:
            return f"body lacks {s!r}: {body[:300]!r}"
    return None


def wait_ready(p: Endpoint, children: list[Child], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        for child in children:
            if child.proc.poll() is not None:
                raise SystemExit(f"{child.name} exited ({child.proc.returncode}):\n{child.output()}")
        client = RawClient(p.port, p.path, p.body)
        try:
            status, body = client.call()
            problem = check_body(p, status, body)
            if problem is None:
                return
            last = problem
        except (OSError, BadResponse) as exc:
            last = str(exc)
        finally:
            client.close()
        time.sleep(0.1)
    raise SystemExit(f"{p.label} not ready after {timeout:.0f} s: {last}")


def warm_up(p: Endpoint, n: int) -> int:
    client = RawClient(p.port, p.path, p.body)
    try:
        for _ in range(n):
            status, body = client.call()
            if (problem := check_body(p, status, body)) is not None:
                raise SystemExit(f"{p.label}: warm-up got a bad response: {problem}")
    finally:
        client.close()
    return n


def run_c1(p: Endpoint, n: int, into: Latency, upstream: Child) -> None:
    """n sequential requests on one keep-alive connection; adds to `into`."""
    client = RawClient(p.port, p.path, p.body)
    client.connect()
    clock = time.perf_counter_ns
    times = into.times
    with CpuMeter(p.server, upstream) as cpu:
        for _ in range(n):
            t0 = clock()
            status, body = client.call()
            t1 = clock()
            times.append((t1 - t0) / 1e6)
            if status != 200:
                into.non200 += 1
            problem = check_body(p, status, body)
            if problem is None:
                into.ok += 1
            else:
                into.bad_body += status == 200
                into.sample_error = into.sample_error or problem
    client.close()
    into.wall_s += cpu.wall
    into.client_s += cpu.client_s
    into.gateway_s += cpu.gateway_s
    into.foreign_s += cpu.foreign_s


WRK_LUA = """\
wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
local expect = {{{expect}}}
local threads = {{}}
function setup(thread) table.insert(threads, thread) end
function init(args) ok = 0; non200 = 0; badbody = 0; sample = "" end
function response(status, headers, body)
  if status ~= 200 then
    non200 = non200 + 1
    if sample == "" then sample = "HTTP " .. status .. ": " .. string.sub(body, 1, 300) end
    return
  end
  for _, s in ipairs(expect) do
    if not string.find(body, s, 1, true) then
      badbody = badbody + 1
      if sample == "" then sample = "body lacks " .. s .. ": " .. string.sub(body, 1, 300) end
      return
    end
  end
  ok = ok + 1
end
function done(summary, latency, requests)
  local o, n, b, s = 0, 0, 0, ""
  for _, t in ipairs(threads) do
    o = o + t:get("ok"); n = n + t:get("non200"); b = b + t:get("badbody")
    if s == "" then s = t:get("sample") end
  end
  local e = summary.errors
  io.write(string.format(
    "KEELBENCH {{\\"requests\\":%d,\\"duration_us\\":%d,\\"ok\\":%d,\\"non200\\":%d," ..
    "\\"badbody\\":%d,\\"socket_errors\\":%d,\\"p50_us\\":%d,\\"p99_us\\":%d}}\\n",
    summary.requests, summary.duration, o, n, b,
    e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
  io.write("KEELBENCH_SAMPLE " .. string.gsub(s, "\\n", " ") .. "\\n")
end
"""


def lua_script(p: Endpoint, workdir: Path) -> Path:
    expect = ", ".join(f"[==[{s}]==]" for s in p.expect)
    script = workdir / f"wrk-{p.key}.lua"
    script.write_text(WRK_LUA.format(body=p.body.decode(), expect=expect))
    return script


def run_wrk(p: Endpoint, workdir: Path, duration: float, connections: int,
            cpus: set[int] | None, upstream: Child) -> WrkRun:
    script = lua_script(p, workdir)
    secs = max(1, round(duration))
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{secs}s", "--timeout", "10s", "-s", str(script),
           f"http://127.0.0.1:{p.port}{p.path}"]
    with CpuMeter(p.server, upstream) as cpu:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=secs + 60,
                             preexec_fn=_preexec(cpus), check=False)
    stats: dict[str, Any] | None = None
    sample = ""
    for line in out.stdout.splitlines():
        if line.startswith("KEELBENCH "):
            stats = json.loads(line.split(" ", 1)[1])
        elif line.startswith("KEELBENCH_SAMPLE"):
            sample = line[len("KEELBENCH_SAMPLE "):].strip()
    if out.returncode != 0 or stats is None:
        raise SystemExit(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    dur = stats["duration_us"] / 1e6
    # CPU shares are over the wall time of the wrk process (a few ms more than `dur`)
    scale = dur / cpu.wall
    return WrkRun(
        duration_s=dur, requests=stats["requests"], ok=stats["ok"], non200=stats["non200"],
        bad_body=stats["badbody"], socket_errors=stats["socket_errors"],
        p50=stats["p50_us"] / 1000, p99=stats["p99_us"] / 1000, rps=stats["requests"] / dur,
        sample_error=sample, gateway_s=cpu.gateway_s * scale, upstream_s=cpu.upstream_s * scale,
        client_s=cpu.client_s * scale, foreign_s=cpu.foreign_s * scale,
    )


# --- profile --------------------------------------------------------------------------------


def profile_keel(p: Endpoint, workdir: Path, duration: float, connections: int,
                 cpus: set[int] | None, upstream: Child, out: Path) -> dict[str, Any]:
    """py-spy (raw collapsed stacks) on the Keel process under wrk load; prints hot spots."""
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        print("\n--profile: py-spy not found; install it with .venv/bin/pip install py-spy")
        return {"error": "py-spy not installed", "wrk_ok": 0}
    assert p.server is not None
    secs = max(2, round(duration))
    raw = out.with_suffix(".txt")
    print(f"\nprofiling Keel (pid {p.server.pid}) for {secs} s under c={connections} load ...")
    # blocking sampling (py-spy pauses the process per sample): whole, consistent stacks,
    # at some cost in throughput, which is why the profile runs after the measurements
    spy = subprocess.Popen([pyspy, "record", "--pid", str(p.server.pid), "--rate", "100",
                            "--duration", str(secs + 1), "--format", "raw", "-o", str(raw)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)
    load = run_wrk(p, workdir, secs, connections, cpus, upstream)
    _, err = spy.communicate(timeout=60)
    if spy.returncode != 0 or not raw.exists():
        print(f"py-spy failed: {err.decode(errors='replace')[-800:]}")
        return {"error": err.decode(errors="replace")[-800:], "wrk_ok": load.ok}
    report = hot_spots(raw)
    print(f"{load.rps:,.0f} req/s while sampled\n{report}")
    (out.with_suffix(".md")).write_text(report + "\n")
    print(f"collapsed stacks: {raw}  (hot spots: {out.with_suffix('.md')})")
    return {"raw": str(raw), "hot_spots": report, "rps": load.rps, "wrk_ok": load.ok}


def _frame(frame: str) -> tuple[str, str]:
    """'func (path/to/file.py:12)' -> ('func', 'path/to/file.py')."""
    name, _, rest = frame.partition(" (")
    return name, rest.rsplit(":", 1)[0]


def _keel_file(file: str) -> str | None:
    """'keel/pipeline.py' (py-spy's short form) or '.../src/keel/pipeline.py' -> pipeline.py."""
    if "site-packages" in file:
        return None
    if file.startswith("keel/"):
        return file[5:]
    if "/keel/" in file:
        return file.split("/keel/", 1)[1]
    return None


AREAS = (("httpx", "httpx + httpcore + h11"), ("httpcore", "httpx + httpcore + h11"),
         ("h11/", "httpx + httpcore + h11"), ("http/cookiejar", "httpx + httpcore + h11"),
         ("uvicorn", "uvicorn"), ("fastapi", "fastapi + starlette"),
         ("starlette", "fastapi + starlette"), ("anyio", "anyio"), ("asyncio", "asyncio"),
         ("jsonschema", "jsonschema"), ("referencing", "jsonschema"), ("sqlite", "sqlite3"),
         ("pydantic", "pydantic"), ("dataclasses", "dataclasses"))


def hot_spots(raw: Path, top: int = 25) -> str:
    """Inclusive and self share of samples per function of Keel's own code, and where the
    leaf frames (the self time) are, by library."""
    total = 0
    inclusive: Counter[str] = Counter()
    self_: Counter[str] = Counter()
    by_area: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not count_s.isdigit():
            continue
        count = int(count_s)
        total += count
        frames = [_frame(f) for f in stack.split(";")]
        seen: set[str] = set()
        for name, file in frames:
            short = _keel_file(file)
            if short is not None and (key := f"{short}:{name}") not in seen:
                seen.add(key)
                inclusive[key] += count
        leaf_name, leaf_file = frames[-1]
        short = _keel_file(leaf_file)
        if short is not None:
            self_[f"{short}:{leaf_name}"] += count
            area = "keel (own code)"
        else:
            area = next((label for marker, label in AREAS if marker in leaf_file), "other")
        by_area[area] += count
    if not total:
        return "no samples"
    lines = [f"py-spy: {total} samples of running threads", "",
             "| Keel function | inclusive % | self % |", "|---|---:|---:|"]
    for key, count in inclusive.most_common(top):
        lines.append(f"| `{key}` | {100 * count / total:.1f} | {100 * self_[key] / total:.1f} |")
    lines += ["", "| self time in | % of samples |", "|---|---:|"]
    for area, count in by_area.most_common():
        lines.append(f"| {area} | {100 * count / total:.1f} |")
    return "\n".join(lines)


# --- reporting ------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def tables(results: list[Result], args: argparse.Namespace, pin_note: str) -> str:
    by = {r.key: r for r in results}
    d, pt = by["direct"].c1, by["passthrough"].c64
    out = [f"Concurrency 1 — {args.requests} sequential requests per path on one keep-alive "
           f"connection, in {args.rounds} interleaved rounds, after {args.warmup} warm-up:", "",
           "| path | p50 ms | p90 ms | p99 ms | mean ms | added p50 ms | gateway CPU µs/req "
           "| other load | ok / non-200 / bad body |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        c = r.c1
        added = "–" if r.key == "direct" else f"+{c.p50 - d.p50:.3f}"
        out.append(f"| {r.label} | {fmt(c.p50)} | {fmt(c.p90)} | {fmt(c.p99)} | {fmt(c.mean)} "
                   f"| {added} | {fmt(c.gateway_cpu_us, 0)} | {c.other_load_pct:.0f} % "
                   f"| {c.ok} / {c.non200} / {c.bad_body} |")
    out += ["", f"The socket client's own cost: {d.client_cpu_us:.0f} µs CPU per request (the "
            "same in every row, so it cancels out of 'added').", "",
            f"Concurrency {args.connections} — `wrk -t1 -c{args.connections}`, {args.duration:g} s "
            f"per path in {args.rounds} interleaved rounds, after a warm-up:", "",
            "| path | req/s | rounds min–max | vs pass-through | p50 ms | p99 ms "
            "| gateway CPU | gateway CPU µs/req | upstream CPU | wrk CPU | other load "
            "| ok / non-200 / bad body / socket err |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        t = r.c64
        gw = "–" if t.gateway_cpu_pct is None else f"{t.gateway_cpu_pct:.0f} %"
        out.append(f"| {r.label} | {t.rps:,.0f} | {t.rps_min:,.0f}–{t.rps_max:,.0f} "
                   f"| {t.rps / pt.rps:.2f}× | {fmt(t.p50, 2)} | {fmt(t.p99, 2)} | {gw} "
                   f"| {fmt(t.gateway_cpu_us, 0)} | {t.upstream_cpu_pct:.0f} % "
                   f"| {t.client_cpu_pct:.0f} % | {t.other_load_pct:.0f} % "
                   f"| {t.ok} / {t.non200} / {t.bad_body} / {t.socket_errors} |")
    out += ["", f"CPU columns: % of one CPU. Pinning: {pin_note}."]
    return "\n".join(out)


def goals(results: list[Result]) -> tuple[str, dict[str, Any]]:
    by = {r.key: r for r in results}
    d, pt = by["direct"], by["passthrough"]
    lines = [f"Goals (the bare pass-through's own added p50 is {pt.c1.p50 - d.c1.p50:.3f} ms: "
             "the floor of a Python gateway on uvicorn + httpx):", ""]
    verdicts: dict[str, Any] = {}
    for key in ("keel_chat", "keel_feature"):
        r = by[key]
        added = r.c1.p50 - d.c1.p50
        met = added <= GOAL_ADDED_P50_MS
        verdicts[f"{key}_added_p50_ms"] = {"value": round(added, 3), "met": met}
        lines.append(f"- {r.label}: added p50 {added:.3f} ms (goal ≤ {GOAL_ADDED_P50_MS:g} ms) "
                     f"→ **{'MET' if met else 'NOT MET'}**; above the pass-through: "
                     f"{r.c1.p50 - pt.c1.p50:+.3f} ms")
        ratio = r.c64.rps / pt.c64.rps
        met = ratio >= GOAL_THROUGHPUT_RATIO
        verdicts[f"{key}_throughput_ratio"] = {"value": round(ratio, 3), "met": met}
        lines.append(f"- {r.label}: throughput {ratio:.2f}× the pass-through's (goal ≥ "
                     f"{GOAL_THROUGHPUT_RATIO:g}×) → **{'MET' if met else 'NOT MET'}**")
    return "\n".join(lines), verdicts


def plot(results: list[Result], path: Path, subtitle: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no plot: matplotlib is not installed; .venv/bin/pip install matplotlib)")
        return False
    labels = [r.label.replace(" /", "\n/").replace(" (", "\n(") for r in results]
    x = list(range(len(results)))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.4))
    w = 0.38
    ax1.bar([i - w / 2 for i in x], [r.c1.p50 for r in results], w, label="p50", color="#37c")
    ax1.bar([i + w / 2 for i in x], [r.c1.p99 for r in results], w, label="p99", color="#9bd")
    for i, r in enumerate(results):
        ax1.text(i - w / 2, r.c1.p50, f"{r.c1.p50:.2f}", ha="center", va="bottom", fontsize=7)
    ax1.axhline(results[0].c1.p50 + GOAL_ADDED_P50_MS, color="#c33", ls="--", lw=1,
                label=f"goal: direct p50 + {GOAL_ADDED_P50_MS:g} ms")
    ax1.set_xticks(x, labels, fontsize=8)
    ax1.set_ylabel("ms per request")
    ax1.set_title("Concurrency 1: latency", fontsize=10)
    ax1.legend(fontsize=8)
    rps = [r.c64.rps for r in results]
    ax2.bar(x, rps, 0.6, color=["#999", "#4a7", "#37c", "#37c"])
    ax2.errorbar(x, rps, yerr=[[r.c64.rps - r.c64.rps_min for r in results],
                               [r.c64.rps_max - r.c64.rps for r in results]],
                 fmt="none", ecolor="black", capsize=3, lw=1)
    pt = next(r.c64.rps for r in results if r.key == "passthrough")
    ax2.axhline(pt * GOAL_THROUGHPUT_RATIO, color="#c33", ls="--", lw=1,
                label=f"goal: {GOAL_THROUGHPUT_RATIO:g}× pass-through")
    for i, v in enumerate(rps):
        ax2.text(i, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=8)
    ax2.set_yscale("log")
    ax2.set_xticks(x, labels, fontsize=8)
    ax2.set_ylabel("requests / s (log scale)")
    ax2.set_title("Concurrency 64: throughput (bars: rounds min–max)", fontsize=10)
    ax2.legend(fontsize=8)
    fig.suptitle(f"Keel gateway overhead, fake upstream, every stage on — {subtitle}",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for mod in ("uvicorn", "uvloop", "httptools", "httpx", "fastapi", "starlette"):
        with contextlib.suppress(Exception):
            versions[mod] = __import__(mod).__version__
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    return {"nproc": os.cpu_count(), "cpus_allowed": sorted(os.sched_getaffinity(0)),
            "cpu_model": model, "python": platform.python_version(),
            "kernel": platform.release(),
            "wrk": ((wrk.stdout + wrk.stderr).strip().splitlines() or [""])[0], **versions}


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Keel's added latency and throughput.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--quick", action="store_true",
                        help="a short run: 300 requests and 3 s of load per path")
    parser.add_argument("--requests", type=int, help="requests per path at concurrency 1 [2000]")
    parser.add_argument("--warmup", type=int, help="warm-up requests per path [200]")
    parser.add_argument("--duration", type=float,
                        help="seconds of wrk load per path, split over the rounds [15]")
    parser.add_argument("--rounds", type=int, help="interleaved rounds [3]")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections [64]")
    parser.add_argument("--pin", choices=("split", "none"), default="split",
                        help="split: the gateway alone on one CPU, upstream + client on another")
    parser.add_argument("--profile", action="store_true",
                        help="then profile Keel with py-spy under load (results/keel-profile.*)")
    parser.add_argument("--max-background", type=float, default=0.25,
                        help="refuse to start while other processes use more than this many "
                             "CPUs (0.25 = a quarter of one); 0 disables the check")
    parser.add_argument("--wait-idle", type=float, default=120,
                        help="seconds to wait for a busy machine to calm down [120]")
    parser.add_argument("--no-plot", action="store_true", help="skip results/overhead.png")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    quick = args.quick
    args.requests = args.requests or (300 if quick else 2000)
    args.warmup = args.warmup if args.warmup is not None else (50 if quick else 200)
    args.duration = args.duration or (3.0 if quick else 15.0)
    args.rounds = max(1, args.rounds or (1 if quick else 3))
    return args


def cpu_plan(mode: str) -> tuple[set[int] | None, set[int] | None, set[int] | None, str]:
    """(client, upstream, gateway) CPU sets and a sentence saying what was done."""
    cpus = sorted(os.sched_getaffinity(0))
    if mode == "none" or len(cpus) < 2:
        return None, None, None, (f"none, every process may run on CPUs {cpus} "
                                  "(the scheduler decides)")
    if len(cpus) == 2:
        a, b = {cpus[0]}, {cpus[1]}
        return a, a, b, (f"the gateway (pass-through or Keel) alone on CPU {cpus[1]}; the fake "
                         f"upstream and the client (socket client, wrk) share CPU {cpus[0]}")
    return ({cpus[0]}, {cpus[1]}, set(cpus[2:3]),
            f"client on CPU {cpus[0]}, fake upstream on CPU {cpus[1]}, gateway on CPU {cpus[2]}")


def wait_for_quiet(args: argparse.Namespace) -> None:
    if args.max_background <= 0:
        return
    deadline = time.monotonic() + args.wait_idle
    while True:
        load = background_load()
        if load <= args.max_background:
            return
        if time.monotonic() > deadline:
            raise SystemExit(
                f"the machine is busy: other processes use {load:.2f} CPUs (limit "
                f"{args.max_background:g}); the numbers would measure them. Wait, or pass "
                "--max-background 0 to run anyway (the tables show the load as 'other load').")
        print(f"other processes use {load:.2f} CPUs; waiting for the machine to calm down ...",
              flush=True)
        time.sleep(4)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench/overhead.py needs wrk for the concurrency-64 load (a Python load generator "
              "would be the bottleneck).\nInstall it: sudo apt-get install -y wrk   "
              "(macOS: brew install wrk)", file=sys.stderr)
        return 2
    # SIGTERM and SIGHUP end the run like Ctrl-C: the finally below stops every child
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
    workdir = Path(tempfile.mkdtemp(prefix="keel-bench-"))
    children = Children(workdir)
    try:
        wait_for_quiet(args)
        return run(args, children, workdir)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the servers", file=sys.stderr)
        return 130
    finally:
        children.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


def run(args: argparse.Namespace, children: Children, workdir: Path) -> int:
    started = time.monotonic()
    client_cpus, upstream_cpus, gateway_cpus, pin_note = cpu_plan(args.pin)
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)  # this script is the concurrency-1 client
    py = sys.executable
    up_port, pt_port, keel_port = free_port(), free_port(), free_port()
    upstream = children.start("upstream", [py, "-m", "keel.testing", "--port", str(up_port),
                                           "--reply", REPLY], upstream_cpus)
    passthrough = children.start(
        "passthrough", [py, str(HERE / "passthrough.py"), "--port", str(pt_port), "--upstream",
                        f"http://127.0.0.1:{up_port}/v1/chat/completions"], gateway_cpus)
    config = workdir / "keel.yaml"
    config.write_text(KEEL_YAML.format(port=up_port, feature=FEATURE))
    database = workdir / "keel.db"
    keel = children.start("keel", [py, "-m", "keel", "serve", "--config", str(config), "--db",
                                   str(database), "--port", str(keel_port)], gateway_cpus,
                          env={"KEEL_BENCH_KEY": "sk-bench"})
    reply = f'"content":"{REPLY}"'
    accepted = '"decision":"accepted"'
    paths = [
        Endpoint("direct", "direct (fake upstream)", up_port, "/v1/chat/completions", CHAT_BODY,
                 (reply,)),
        Endpoint("passthrough", "bare pass-through", pt_port, "/v1/chat/completions", CHAT_BODY,
                 (reply,), passthrough),
        Endpoint("keel_chat", "Keel /v1/chat/completions", keel_port, "/v1/chat/completions",
                 CHAT_BODY, (reply, accepted), keel),
        Endpoint("keel_feature", f"Keel /v1/features/{FEATURE}", keel_port,
                 f"/v1/features/{FEATURE}", FEATURE_BODY,
                 (f'"output":{{"label":"{REPLY}"}}', accepted), keel),
    ]
    everyone = [upstream, passthrough, keel]
    for p in paths:
        wait_ready(p, everyone)
    keel_answered = 2  # the readiness calls
    print(f"servers up in {time.monotonic() - started:.1f} s; pinning: {pin_note}", flush=True)

    results = [Result(p.key, p.label) for p in paths]
    rounds = args.rounds

    def order(round_: int) -> list[tuple[Endpoint, Result]]:
        pairs = list(zip(paths, results, strict=True))
        return pairs[round_ % len(pairs):] + pairs[:round_ % len(pairs)]

    print(f"concurrency 1: warm-up {args.warmup}, then {args.requests} requests per path ...",
          flush=True)
    for p in paths:
        n = warm_up(p, args.warmup)
        keel_answered += n if p.server is keel else 0
    per_round = [args.requests // rounds + (i < args.requests % rounds) for i in range(rounds)]
    for i in range(rounds):
        for p, r in order(i):
            run_c1(p, per_round[i], r.c1, upstream)
    for p, r in zip(paths, results, strict=True):
        r.c1.finish(p.server is not None)
        keel_answered += r.c1.ok if p.server is keel else 0
        print(f"  {p.label:<28} p50 {r.c1.p50:.3f} ms  p99 {r.c1.p99:.3f} ms", flush=True)

    secs = max(1.0, args.duration / rounds)
    print(f"concurrency {args.connections}: {rounds} × {secs:g} s per path ...", flush=True)
    warm = 1.0 if args.quick else 2.0
    for p in paths:
        w = run_wrk(p, workdir, warm, args.connections, client_cpus, upstream)
        keel_answered += w.ok if p.server is keel else 0
        if w.ok != w.requests:
            print(f"  warm-up of {p.label}: {w.requests - w.ok} bad responses: {w.sample_error}")
    for i in range(rounds):
        for p, r in order(i):
            one = run_wrk(p, workdir, secs, args.connections, client_cpus, upstream)
            r.c64.rounds.append(one)
            keel_answered += one.ok if p.server is keel else 0
    for p, r in zip(paths, results, strict=True):
        r.c64.finish(p.server is not None)
        print(f"  {p.label:<28} {r.c64.rps:,.0f} req/s  p50 {r.c64.p50:.2f} ms", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    profile = None
    if args.profile:
        profile = profile_keel(paths[2], workdir, 10.0, args.connections, client_cpus, upstream,
                               args.out / "keel-profile")
        keel_answered += profile["wrk_ok"]

    # every answered call recorded? SIGTERM drains Keel's event writer. wrk stops counting
    # at its deadline, so Keel may have answered (and recorded) up to `connections` more per run
    children.stop(keel)
    with contextlib.closing(sqlite3.connect(database)) as conn:
        events = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    wrk_runs = 2 * (1 + rounds) + (1 if args.profile else 0)
    events_ok = keel_answered <= events <= keel_answered + wrk_runs * args.connections

    info = machine()
    report = tables(results, args, pin_note)
    goal_text, verdicts = goals(results)
    print("\n" + report + "\n\n" + goal_text)
    print(f"\nKeel recorded {events:,} events for {keel_answered:,} verified 200 answers "
          f"({'consistent' if events_ok else 'MISMATCH'}: wrk may stop counting up to "
          f"{args.connections} in-flight requests per run)")
    bad = []
    for r in results:
        if r.c1.ok != r.c1.n:
            bad.append(f"{r.label} c=1: {r.c1.n - r.c1.ok} bad ({r.c1.sample_error})")
        if r.c64.ok != r.c64.requests or r.c64.socket_errors:
            bad.append(f"{r.label} c={args.connections}: {r.c64.requests - r.c64.ok} bad, "
                       f"{r.c64.socket_errors} socket errors ({r.c64.sample_error})")
    if not events_ok:
        bad.append(f"Keel recorded {events} events for {keel_answered} answers")

    (args.out / "overhead.json").write_text(json.dumps({
        "machine": info, "pinning": pin_note,
        "args": {k: str(v) for k, v in vars(args).items()},
        "results": [asdict(r) for r in results], "goals": verdicts,
        "events": {"recorded": events, "answered_200": keel_answered},
        "profile": profile,
    }, indent=2, default=str))
    print(f"\nmachine: {info['nproc']} CPUs ({info['cpu_model']}), Python {info['python']}, "
          f"uvicorn {info.get('uvicorn')} + uvloop {info.get('uvloop')} + httptools "
          f"{info.get('httptools')}, httpx {info.get('httpx')}, {info['wrk'].split(' [')[0]}")
    subtitle = f"{info['nproc']} CPUs, Python {info['python']}"
    if not args.no_plot and plot(results, args.out / "overhead.png", subtitle):
        print(f"plot: {args.out / 'overhead.png'}")
    print(f"results: {args.out / 'overhead.json'}; the run took {time.monotonic() - started:.0f} s")
    if bad:
        print("\nINVALID RUN: not every response was right:\n  " + "\n  ".join(bad),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
