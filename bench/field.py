"""Keel in the field: throughput and added latency against direct, a bare pass-through and
LiteLLM's proxy, side by side in one run — non-streamed and streamed, at concurrency 1, 16
and 64, Keel and LiteLLM each with one worker process and with two.

The paths (every server its own process, all pointed at the same fake upstreams):

  direct          the fake upstream (``python -m keel.testing``): "billing" for plain calls,
                  a 40-word answer streamed in ~60 token-sized chunks for streamed ones
  pass-through    bench/passthrough.py: uvicorn + one httpx.AsyncClient (``--stream`` relays
                  the streamed answer chunk by chunk), one process
  Keel ×1, ×2     ``keel serve --workers 1|2``: plain calls on feature ``triage`` with every
                  stage on (overhead.py's: input schema + checks, champion + fallback, logprobs
                  → confidence, three validators, policy, price, events recorded in SQLite);
                  streamed calls on feature ``chat`` (output kind chat, events recorded)
  LiteLLM ×1, ×2  ``litellm --config ... --num_workers 1|2`` (LiteLLM's proxy, installed from
                  PyPI into a throwaway virtual environment by this script, never a project
                  dependency), no database, no master key (Keel's loopback default: no keys),
                  the same two models as ``openai/...`` on the same fakes

All calls are ``POST /v1/chat/completions``. Load: ``wrk -t1 -cN`` (N = 1, 16, 64) with a
Lua script that checks every answer (200 and the expected body: the reply, Keel's
``"decision":"accepted"``, a streamed answer's ``finish_reason`` and ``data: [DONE]``).
Each (mode, concurrency) group warms every path up, then measures ``--rounds`` rounds
interleaved across the paths with a rotating order; req/s is the median round, p50/p99
wrk's over the median rounds. Added p50 = path p50 − direct p50 (streamed: the whole
stream; bench/streaming.py measures time to first token).

Pinning (``--pin split``, 2 CPUs): one-process gateways (pass-through, Keel ×1, LiteLLM ×1)
alone on CPU 1, the fakes and wrk on CPU 0; two-worker gateways on both CPUs (sharing CPU 0
with the fakes and wrk: on two CPUs there is no other way to give them two). Gateway CPU is
the whole process tree's (supervisor + workers). A measurement during which other
processes used more than ``--max-background`` CPUs is re-run (within ``--retry-budget``).

    .venv/bin/python bench/field.py            # ~12 min (+ ~1.5 min once: LiteLLM's venv)
    .venv/bin/python bench/field.py --quick    # ~4 min smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness import (  # the shared benchmark harness (bench/harness.py)
    Child,
    Children,
    Quiet,
    _preexec,
    cpu_of,
    cpu_plan,
    free_port,
    machine,
    machine_busy_seconds,
    trees,
)
from overhead import FEATURE_YAML, PROVIDER_YAML  # the same feature as overhead.py
from report import (
    add_common_args,
    fmt,
    md_table,
    pyplot,
    run_main,
    save_figure,
    write_json,
)

HERE = Path(__file__).resolve().parent
TEXT = "I was charged twice for my order last week, please refund one of the payments"
REPLY = "billing"
ASK = "My card was charged twice for the same order. What happens now?"
STREAM_REPLY = ("Your refund for the duplicate charge has been approved and will reach the card "
                "you paid with within three to five business days, and we will email you a "
                "confirmation as soon as your bank has fully processed the payment.")
LITELLM_VENV = Path("/tmp/keel-bench-litellm")
GOAL_VS_LITELLM = 25.0  # Keel's throughput per worker ≥ 25× LiteLLM's
GOAL_ADDED_P50_MS = 1.0
GOAL_VS_PASSTHROUGH = 0.8

CHAT_FEATURE_YAML = """\
  chat:
    description: Free-text answers, streamed (field benchmark).
    output: {kind: chat}
    versions:
      gpt: {provider: fake_stream, model: gpt-4o-mini}
    aliases: {champion: gpt}
"""

LITELLM_YAML = """\
# written by bench/field.py: the same fakes as Keel's providers, no database
model_list:
  - model_name: triage
    litellm_params:
      model: openai/fake-model
      api_base: http://127.0.0.1:{plain}/v1
      api_key: sk-bench
  - model_name: chat
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: http://127.0.0.1:{stream}/v1
      api_key: sk-bench
litellm_settings:
  telemetry: false
"""


# overhead.py's checks, plus a steady-state window: answers completed in the first `skip`
# seconds are not counted in the rate (each run opens fresh connections, so a slow server's
# first answers all arrive after one full latency; a short run would undercount it)
WRK_LUA = """\
local ffi = require("ffi")
ffi.cdef[[
typedef struct {{ long tv_sec; long tv_nsec; }} keelbench_timespec;
int clock_gettime(int clk, keelbench_timespec *tp);
]]
local ts = ffi.new("keelbench_timespec")
local function now()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) / 1e9
end
wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
local expect = {{{expect}}}
local skip = {skip}
local threads = {{}}
function setup(thread) table.insert(threads, thread) end
function init(args) ok = 0; late = 0; non200 = 0; badbody = 0; sample = ""; t0 = now() end
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
  if now() - t0 >= skip then late = late + 1 end
end
function done(summary, latency, requests)
  local o, l, n, b, s = 0, 0, 0, 0, ""
  for _, t in ipairs(threads) do
    o = o + t:get("ok"); l = l + t:get("late"); n = n + t:get("non200")
    b = b + t:get("badbody")
    if s == "" then s = t:get("sample") end
  end
  local e = summary.errors
  io.write(string.format(
    "KEELBENCH {{\\"requests\\":%d,\\"duration_us\\":%d,\\"ok\\":%d,\\"late\\":%d," ..
    "\\"non200\\":%d,\\"badbody\\":%d,\\"socket_errors\\":%d,\\"p50_us\\":%d," ..
    "\\"p99_us\\":%d}}\\n",
    summary.requests, summary.duration, o, l, n, b, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
  io.write("KEELBENCH_SAMPLE " .. string.gsub(s, "\\n", " ") .. "\\n")
end
"""


def keel_yaml(plain: int, stream: int) -> str:
    text = "# written by bench/field.py\nproviders:\n"
    text += PROVIDER_YAML.format(name="fake", port=plain)
    text += PROVIDER_YAML.format(name="fake_stream", port=stream)
    text += "features:\n" + FEATURE_YAML.format(feature="triage", provider="fake")
    return text + CHAT_FEATURE_YAML


def body(stream: bool) -> bytes:
    if not stream:
        data: dict[str, Any] = {"model": "triage",
                                "messages": [{"role": "user", "content": TEXT}]}
    else:
        data = {"model": "chat", "messages": [{"role": "user", "content": ASK}], "stream": True,
                "stream_options": {"include_usage": True}}
    return json.dumps(data, separators=(",", ":")).encode()


# --- LiteLLM, in a throwaway virtual environment ------------------------------------------------


def ensure_litellm(venv: Path, spec: str) -> str:
    """LiteLLM's proxy installed in ``venv`` (made with ``python -m venv`` + pip from PyPI on
    first use, reused after); returns its version."""
    exe = venv / "bin" / "litellm"
    python = venv / "bin" / "python"
    if not exe.exists():
        print(f"installing LiteLLM's proxy ({spec!r}) into a throwaway venv at {venv} "
              "(once; ~1.5 min) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        log = venv / "pip-install.log"
        with log.open("w") as out:
            done = subprocess.run([str(python), "-m", "pip", "install", spec], stdout=out,
                                  stderr=subprocess.STDOUT, check=False)
        if done.returncode != 0 or not exe.exists():
            raise SystemExit(f"pip install {spec} failed; see {log}")
    version = subprocess.run([str(python), "-c", "import importlib.metadata as m; "
                              "print(m.version('litellm'))"], capture_output=True, text=True,
                             check=True).stdout.strip()
    return version


LITELLM_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no download of the price list at start
    "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",  # no keys, as Keel here
    "LITELLM_LOG": "ERROR",
}


# --- CPU of process trees ---------------------------------------------------------------------


class TreeMeter:
    """CPU during one measurement: the gateway's process tree, the fakes, the client (this
    script + wrk), every other server this script runs (idle, but counted as its own), and
    everything else on the machine (other people's jobs)."""

    def __init__(self, gateway: Child | None, upstreams: list[Child], servers: list[Child]):
        self.gateway, self.upstreams, self.servers = gateway, upstreams, servers

    def _snap(self) -> tuple[float, ...]:
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once it has exited
        tree = trees([s.pid for s in self.servers])
        gateway = cpu_of(tree[self.gateway.pid]) if self.gateway else 0.0
        upstream = sum(cpu_of(tree[u.pid]) for u in self.upstreams)
        mine = sum(cpu_of(members) for members in tree.values())
        return (time.monotonic(), machine_busy_seconds(), gateway, upstream, mine,
                time.process_time() + kids.ru_utime + kids.ru_stime)

    def __enter__(self) -> TreeMeter:
        self.start = self._snap()
        return self

    def __exit__(self, *exc: object) -> None:
        d = [b - a for a, b in zip(self.start, self._snap(), strict=True)]
        self.wall, busy, self.gateway_s, self.upstream_s, mine, self.client_s = d
        self.foreign_s = max(0.0, busy - mine - self.client_s)


# --- paths and measurements ---------------------------------------------------------------------


@dataclass
class Server:
    key: str
    label: str
    kind: str  # direct | passthrough | keel | litellm
    workers: int
    child: Child | None  # None: direct (the fake itself is the upstream)
    port: int
    stream_port: int  # where streamed calls go (the same server except for direct / pass-through)
    stream_child: Child | None = None


@dataclass
class WrkRun:
    duration_s: float  # the whole run (CPU columns are over it)
    wall_s: float
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
class Cell:
    """One path at one (mode, concurrency): the rounds and their summary."""

    server: str
    mode: str
    concurrency: int
    skip_s: float = 0.0  # not counted at the start of each round (see WRK_LUA)
    rounds: list[WrkRun] = field(default_factory=list)
    rps: float = 0.0
    rps_min: float = 0.0
    rps_max: float = 0.0
    p50: float = 0.0
    p99: float = 0.0
    requests: int = 0
    ok: int = 0
    bad: int = 0
    socket_errors: int = 0
    sample_error: str = ""
    gateway_cpu_us: float | None = None  # per request
    gateway_cpu_pct: float | None = None  # of one CPU
    other_load_pct: float = 0.0

    def finish(self, has_gateway: bool) -> None:
        runs = self.rounds
        dur = sum(r.duration_s for r in runs) or 1e-9
        self.requests = sum(r.requests for r in runs)
        self.ok = sum(r.ok for r in runs)
        self.bad = sum(r.non200 + r.bad_body for r in runs)
        self.socket_errors = sum(r.socket_errors for r in runs)
        self.sample_error = next((r.sample_error for r in runs if r.sample_error), "")
        self.rps = statistics.median(r.rps for r in runs)
        self.rps_min, self.rps_max = min(r.rps for r in runs), max(r.rps for r in runs)
        self.p50 = statistics.median(r.p50 for r in runs)
        self.p99 = statistics.median(r.p99 for r in runs)
        gateway = sum(r.gateway_s for r in runs)
        if has_gateway:
            self.gateway_cpu_us = gateway / max(1, self.requests) * 1e6
            self.gateway_cpu_pct = 100 * gateway / dur
        self.other_load_pct = 100 * sum(r.foreign_s for r in runs) / dur


def expect_for(server: Server, stream: bool) -> tuple[str, ...]:
    if stream:
        out: tuple[str, ...] = ('"finish_reason":"stop"', "data: [DONE]")
    else:
        out = (f'"content":"{REPLY}"',)
    return (*out, '"decision":"accepted"') if server.kind == "keel" else out


def target(server: Server, stream: bool) -> tuple[int, Child | None]:
    return (server.stream_port, server.stream_child) if stream else (server.port, server.child)


def lua_script(server: Server, stream: bool, skip: float, workdir: Path) -> Path:
    expect = ", ".join(f"[==[{s}]==]" for s in expect_for(server, stream))
    script = workdir / f"wrk-{server.key}-{'stream' if stream else 'plain'}-{skip:g}.lua"
    if not script.exists():
        script.write_text(WRK_LUA.format(body=body(stream).decode(), expect=expect, skip=skip))
    return script


def run_wrk(server: Server, stream: bool, connections: int, secs: int, skip: float,
            workdir: Path, cpus: set[int] | None, meter: TreeMeter | None) -> WrkRun:
    """wrk for `secs` s; the rate counts the answers completed after the first `skip` s."""
    port, _ = target(server, stream)
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{secs}s", "--timeout", "30s", "-s",
           str(lua_script(server, stream, skip, workdir)),
           f"http://127.0.0.1:{port}/v1/chat/completions"]
    with meter or contextlib.nullcontext():
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=secs + 90,
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
    scale = dur / meter.wall if meter else 1.0
    m = meter
    return WrkRun(
        duration_s=dur, wall_s=dur, requests=stats["requests"], ok=stats["ok"],
        non200=stats["non200"], bad_body=stats["badbody"], socket_errors=stats["socket_errors"],
        p50=stats["p50_us"] / 1000, p99=stats["p99_us"] / 1000,
        rps=stats["late"] / (dur - skip) if dur > skip else 0.0, sample_error=sample,
        gateway_s=m.gateway_s * scale if m else 0.0, upstream_s=m.upstream_s * scale if m else 0.0,
        client_s=m.client_s * scale if m else 0.0, foreign_s=m.foreign_s * scale if m else 0.0)


def probe(port: int, stream: bool, expect: tuple[str, ...]) -> str | None:
    """One call; None when the answer is right, else what is wrong."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/v1/chat/completions", body=body(stream),
                     headers={"content-type": "application/json"})
        response = conn.getresponse()
        text = response.read().decode(errors="replace")
    finally:
        conn.close()
    if response.status != 200:
        return f"HTTP {response.status}: {text[:300]}"
    missing = [s for s in expect if s not in text]
    return f"lacks {missing}: {text[:300]}" if missing else None


def wait_ready(servers: list[Server], children: list[Child], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    for server in servers:
        for stream in (False, True):
            port, _ = target(server, stream)
            last = ""
            while True:
                for child in children:
                    if child.proc.poll() is not None:
                        raise SystemExit(f"{child.name} exited ({child.proc.returncode}):\n"
                                         f"{child.output()}")
                try:
                    problem = probe(port, stream, expect_for(server, stream))
                    if problem is None:
                        break
                    last = problem
                except (OSError, http.client.HTTPException) as exc:
                    last = str(exc)
                if time.monotonic() > deadline:
                    raise SystemExit(f"{server.label} not ready after {timeout:.0f} s: {last}")
                time.sleep(0.3)


# --- the run ------------------------------------------------------------------------------------


def run(args: argparse.Namespace, children: Children, workdir: Path) -> int:
    started = time.monotonic()
    litellm_version = ensure_litellm(args.litellm_venv, args.litellm) if args.litellm else None
    info = machine()
    every_cpu = set(os.sched_getaffinity(0))
    client_cpus, upstream_cpus, gateway_cpus, _ = cpu_plan(args.pin)
    pin_note = ("none: every process on every CPU" if gateway_cpus is None else
                f"one-process gateways alone on CPU {min(gateway_cpus)}; two-worker gateways on "
                f"CPUs {sorted(every_cpu)}; the fakes and wrk on CPU {min(client_cpus or {0})}")
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    py = sys.executable
    ports = {k: free_port() for k in ("plain", "stream", "pt", "pt_stream")}
    up_plain = children.start("fake-plain", [py, "-m", "keel.testing", "--port",
                                             str(ports["plain"]), "--reply", REPLY],
                              upstream_cpus)
    up_stream = children.start("fake-stream", [py, "-m", "keel.testing", "--port",
                                               str(ports["stream"]), "--reply", STREAM_REPLY],
                               upstream_cpus)
    upstreams = [up_plain, up_stream]
    chat = "/v1/chat/completions"
    pt = children.start("passthrough", [py, str(HERE / "passthrough.py"), "--port",
                                        str(ports["pt"]), "--upstream",
                                        f"http://127.0.0.1:{ports['plain']}{chat}"], gateway_cpus)
    pt_stream = children.start("passthrough-stream", [
        py, str(HERE / "passthrough.py"), "--port", str(ports["pt_stream"]), "--upstream",
        f"http://127.0.0.1:{ports['stream']}{chat}", "--stream"], gateway_cpus)
    servers = [
        Server("direct", "direct (fake upstream)", "direct", 0, None, ports["plain"],
               ports["stream"]),
        Server("passthrough", "bare pass-through (httpx)", "passthrough", 1, pt, ports["pt"],
               ports["pt_stream"], pt_stream),
    ]
    config = workdir / "keel.yaml"
    config.write_text(keel_yaml(ports["plain"], ports["stream"]))
    databases: dict[str, Path] = {}
    for n in args.workers:
        port = free_port()
        databases[f"keel{n}"] = workdir / f"keel-{n}.db"
        child = children.start(f"keel-{n}", [py, "-m", "keel", "serve", "--config", str(config),
                                             "--db", str(databases[f"keel{n}"]), "--port",
                                             str(port), "--workers", str(n)],
                               gateway_cpus if n == 1 else every_cpu,
                               env={"KEEL_BENCH_KEY": "sk-bench"})
        servers.append(Server(f"keel{n}", f"Keel ×{n} worker{'s' * (n > 1)}", "keel", n, child,
                              port, port, child))
    if args.litellm:
        ll_config = workdir / "litellm.yaml"
        ll_config.write_text(LITELLM_YAML.format(plain=ports["plain"], stream=ports["stream"]))
        for n in args.workers:
            port = free_port()
            child = children.start(f"litellm-{n}", [
                str(args.litellm_venv / "bin" / "litellm"), "--config", str(ll_config),
                "--host", "127.0.0.1", "--port", str(port), "--num_workers", str(n)],
                gateway_cpus if n == 1 else every_cpu, env=LITELLM_ENV)
            servers.append(Server(f"litellm{n}", f"LiteLLM ×{n} worker{'s' * (n > 1)}",
                                  "litellm", n, child, port, port, child))
    all_children = list(children.children)
    wait_ready(servers, all_children)
    print(f"servers up in {time.monotonic() - started:.0f} s; pinning: {pin_note}", flush=True)

    quiet = Quiet(args.max_background, args.retry_budget)
    secs = max(1, round(args.duration))
    cells: dict[tuple[str, str, int], Cell] = {}
    answered: dict[str, int] = {s.key: 0 for s in servers}  # verified 200s, incl. warm-ups

    def measure(server: Server, stream: bool, conns: int, seconds: int, skip: float,
                measured: bool = True) -> WrkRun:
        _, gateway = target(server, stream)
        meter = TreeMeter(gateway, upstreams, all_children) if measured else None
        one = run_wrk(server, stream, conns, seconds, skip, workdir, client_cpus, meter)
        answered[server.key] += one.ok
        return one

    def warm_up(server: Server, stream: bool, conns: int) -> float:
        """Warm a path up; returns the `skip` for its rounds: 1.5× its p99 latency (a slow
        server's first answers arrive one latency after the start of a run)."""
        seconds = 1 if args.quick else 2
        while True:
            one = measure(server, stream, conns, seconds, 0.0, measured=False)
            if one.ok >= 2 * conns or seconds >= 32:
                return round(min(30.0, max(0.2, 1.5 * one.p99 / 1000)), 1)
            seconds *= 2  # too slow to answer every connection twice yet: a longer warm-up

    for stream in args.modes:
        mode = "streamed" if stream else "plain"
        for conns in args.concurrency:
            print(f"{mode}, concurrency {conns}: warm-up, then {args.rounds} × {secs} s per path "
                  "(after a skip of 1.5× the path's p99)", flush=True)
            skips = {}
            for s in servers:
                skips[s.key] = warm_up(s, stream, conns)
                cells[(s.key, mode, conns)] = Cell(s.key, mode, conns, skip_s=skips[s.key])
            for i in range(args.rounds):
                k = i % len(servers)
                for s in servers[k:] + servers[:k]:
                    total = math.ceil(skips[s.key] + secs)
                    one = quiet.run(f"{mode} c={conns} {s.label} round {i + 1}",
                                    lambda s=s, st=stream, c=conns, t=total, sk=skips[s.key]:
                                    measure(s, st, c, t, sk))
                    cells[(s.key, mode, conns)].rounds.append(one)
            for s in servers:
                cell = cells[(s.key, mode, conns)]
                cell.finish(s.child is not None)
                print(f"  {s.label:<28} {cell.rps:9,.1f} req/s (rounds {cell.rps_min:,.1f}–"
                      f"{cell.rps_max:,.1f})  p50 {cell.p50:8.3f} ms  p99 {cell.p99:8.2f} ms  "
                      f"gateway {fmt(cell.gateway_cpu_us, 0)} µs/req  bad {cell.bad}  "
                      f"skip {cell.skip_s:g} s", flush=True)

    profiles = {}
    for key in args.profile:
        server = next((s for s in servers if s.key == key and s.child is not None), None)
        if server is None:
            print(f"--profile {key}: no such gateway (keys: "
                  f"{', '.join(s.key for s in servers if s.child)})")
            continue
        profiles[key] = profile(server, args, workdir, client_cpus, all_children)
        answered[key] += profiles[key].get("ok", 0)

    # every answered Keel call recorded? SIGTERM drains the event writers (of every worker)
    events: dict[str, int] = {}
    for s in servers:
        if s.kind == "keel" and s.child is not None:
            children.stop(s.child)
            with contextlib.closing(sqlite3.connect(databases[s.key])) as conn:
                events[s.key] = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    report, verdicts = tables(args, servers, cells, pin_note, events, answered)
    print("\n" + report)
    out = args.out
    write_json(out / "field.json", {
        "machine": info, "litellm": litellm_version, "pinning": pin_note,
        "args": {k: str(v) for k, v in vars(args).items()},
        "servers": [{"key": s.key, "label": s.label, "workers": s.workers} for s in servers],
        "cells": [asdict(c) for c in cells.values()], "goals": verdicts,
        "events": {"recorded": events, "answered_200": answered},
        "disturbed": {"discarded": quiet.discarded, "kept": quiet.kept_busy},
        "profiles": profiles,
    })
    (out / "field.md").write_text(report + "\n")
    print(f"\nKeel at {info['keel_commit']}; LiteLLM {litellm_version}; {info['nproc']} CPUs "
          f"({info['cpu_model']}), Python {info['python']}, uvicorn {info.get('uvicorn')}, "
          f"{info['wrk'].split(' [')[0]}")
    if quiet.discarded or quiet.kept_busy:
        print(f"{quiet.discarded} measurement(s) discarded and re-run because other processes "
              f"used the CPUs; {quiet.kept_busy} kept although disturbed (see 'other load')")
    if not args.no_plot and plot(args, servers, cells, out / "field.png",
                                 f"{info['nproc']} CPUs, LiteLLM {litellm_version}"):
        print(f"plot: {out / 'field.png'}")
    print(f"results: {out / 'field.json'}, {out / 'field.md'}; the run took "
          f"{time.monotonic() - started:.0f} s")
    bad = [f"{c.server} {c.mode} c={c.concurrency}: {c.bad} bad, {c.socket_errors} socket "
           f"errors ({c.sample_error})" for c in cells.values() if c.bad or c.socket_errors]
    for key, n in events.items():
        if n < answered[key]:
            bad.append(f"{key} recorded {n} events for {answered[key]} verified answers")
    if bad:
        print("\nINVALID RUN: not every answer was right:\n  " + "\n  ".join(bad),
              file=sys.stderr)
        return 1
    return 0


def profile(server: Server, args: argparse.Namespace, workdir: Path, cpus: set[int] | None,
            servers: list[Child]) -> dict[str, Any]:
    """py-spy (non-blocking, every thread) on each process of a gateway for 10 s under plain
    load at the highest concurrency; hot spots as overhead.py reports them."""
    from overhead import hot_spots

    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        print("--profile: py-spy not found (make install-bench)")
        return {"error": "py-spy not installed"}
    assert server.child is not None
    conns, secs = max(args.concurrency), 10
    pids = trees([server.child.pid])[server.child.pid]
    pids = [p for p in pids if p != server.child.pid] or pids if server.workers > 1 else pids
    print(f"\nprofiling {server.label} (pids {pids}) for {secs} s under plain c={conns} ...",
          flush=True)
    out = args.out / f"field-{server.key}-profile"
    spies = []
    for pid in pids:
        raw = out.with_name(f"{out.name}-{pid}.txt")
        spies.append((raw, subprocess.Popen(
            [pyspy, "record", "--pid", str(pid), "--rate", "250", "--nonblocking", "--threads",
             "--duration", str(secs + 1), "--format", "raw", "-o", str(raw)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
    time.sleep(0.5)
    meter = TreeMeter(server.child, [], servers)
    load = run_wrk(server, False, conns, secs, 0.0, workdir, cpus, meter)
    reports = []
    for raw, spy in spies:
        _, err = spy.communicate(timeout=60)
        if spy.returncode != 0 or not raw.exists():
            reports.append(f"py-spy failed: {err.decode(errors='replace')[-400:]}")
            continue
        reports.append(f"{raw.name}:\n\n" + hot_spots(raw)[0])
    cpu_us = load.gateway_s / max(1, load.requests) * 1e6
    text = (f"{server.label}: {load.requests / load.duration_s:,.0f} req/s while sampled, "
            f"{cpu_us:,.0f} µs of CPU per request (whole process tree)\n\n" + "\n\n".join(reports))
    out.with_suffix(".md").write_text(text + "\n")
    print(text)
    return {"label": server.label, "rps": load.requests / load.duration_s, "cpu_us": cpu_us,
            "ok": load.ok, "report": str(out.with_suffix(".md"))}


# --- reporting ---------------------------------------------------------------------------------


def tables(args: argparse.Namespace, servers: list[Server], cells: dict[tuple[str, str, int], Cell],
           pin_note: str, events: dict[str, int], answered: dict[str, int]
           ) -> tuple[str, dict[str, Any]]:
    out: list[str] = []
    by = {s.key: s for s in servers}
    for mode in ("plain", "streamed"):
        if (servers[0].key, mode, args.concurrency[0]) not in cells:
            continue
        what = ("plain calls (`triage`, every stage on)" if mode == "plain" else
                "streamed calls (`chat`, a 40-word answer in ~60 chunks; latency = whole stream)")
        for conns in args.concurrency:
            d = cells[("direct", mode, conns)]
            rows = []
            for s in servers:
                c = cells[(s.key, mode, conns)]
                added = "–" if s.kind == "direct" else f"{c.p50 - d.p50:+.3f}"
                per_worker = "–" if not s.workers else f"{c.rps / s.workers:,.0f}"
                rows.append([s.label, f"{c.rps:,.0f}", f"{c.rps_min:,.0f}–{c.rps_max:,.0f}",
                             per_worker, fmt(c.p50), added, fmt(c.p99, 2),
                             fmt(c.gateway_cpu_us, 0),
                             "–" if c.gateway_cpu_pct is None else f"{c.gateway_cpu_pct:.0f} %",
                             f"{c.other_load_pct:.0f} %", f"{c.ok} / {c.bad} / {c.socket_errors}"])
            out += [f"**{mode.capitalize()}, concurrency {conns}** — {what}; `wrk -t1 -c{conns}`, "
                    f"{args.rounds} × {args.duration:g} s per path:", "",
                    md_table(["path", "req/s", "rounds", "req/s per worker", "p50 ms",
                              "added p50 ms", "p99 ms", "gateway CPU µs/req", "gateway CPU",
                              "other load", "ok / bad / socket err"], rows), ""]
    out.append(f"Pinning: {pin_note}. Gateway CPU: the whole process tree, % of one CPU.")
    if events:
        out.append("Keel's events: " + ", ".join(
            f"{by[k].label} recorded {n:,} for {answered[k]:,} verified answers" for k, n in
            events.items()) + " (wrk does not count the calls in flight when a run ends).")
    lines, verdicts = goals(args, servers, cells)
    return "\n".join([*out, "", *lines]), verdicts


def goals(args: argparse.Namespace, servers: list[Server], cells: dict[tuple[str, str, int], Cell]
          ) -> tuple[list[str], dict[str, Any]]:
    keys = {s.key for s in servers}
    rows, verdicts = [], {}
    loaded = [c for c in args.concurrency if c > 1]
    for mode in ("plain", "streamed"):
        if ("direct", mode, args.concurrency[0]) not in cells:
            continue
        for n in args.workers:
            if f"keel{n}" in keys and f"litellm{n}" in keys:
                for conns in args.concurrency:
                    k, ll = cells[(f"keel{n}", mode, conns)], cells[(f"litellm{n}", mode, conns)]
                    ratio = k.rps / ll.rps if ll.rps else float("inf")
                    cpu = (ll.gateway_cpu_us / k.gateway_cpu_us
                           if ll.gateway_cpu_us and k.gateway_cpu_us else None)
                    what = (f"{ratio:,.1f}× ({k.rps:,.0f} vs {ll.rps:,.1f} req/s); CPU per "
                            f"request {fmt(cpu, 1)}× less ({fmt(k.gateway_cpu_us, 0)} vs "
                            f"{fmt(ll.gateway_cpu_us, 0)} µs)")
                    if conns == 1:  # one call at a time: a ratio of latencies, not of capacity
                        rows.append([f"(for scale) Keel ×{n} / LiteLLM ×{n}, {mode}, c=1",
                                     what, "latency-bound"])
                        continue
                    met = ratio >= GOAL_VS_LITELLM
                    verdicts[f"{mode}_c{conns}_keel{n}_vs_litellm{n}"] = {
                        "value": round(ratio, 2), "cpu_ratio": cpu and round(cpu, 2), "met": met}
                    rows.append([f"Keel ×{n} ≥ {GOAL_VS_LITELLM:g}× LiteLLM ×{n}, {mode}, c={conns}",
                                 what, "**met**" if met else "**missed**"])
        if 1 in args.concurrency and "keel1" in keys:
            d = cells[("direct", mode, 1)]
            added = cells[("keel1", mode, 1)].p50 - d.p50
            met = added <= GOAL_ADDED_P50_MS
            verdicts[f"{mode}_keel1_added_p50_ms"] = {"value": round(added, 3), "met": met}
            pt = cells[("passthrough", mode, 1)].p50 - d.p50 if "passthrough" in keys else None
            rows.append([f"Keel ×1 added p50 ≤ {GOAL_ADDED_P50_MS:g} ms, {mode}, c=1",
                         f"{added:+.3f} ms (pass-through {fmt(pt)} ms)",
                         "**met**" if met else "**missed**"])
        if "passthrough" in keys and "keel1" in keys:
            for conns in loaded:
                k, pt = cells[("keel1", mode, conns)], cells[("passthrough", mode, conns)]
                ratio = k.rps / pt.rps
                met = ratio >= GOAL_VS_PASSTHROUGH
                verdicts[f"{mode}_c{conns}_keel1_vs_passthrough"] = {"value": round(ratio, 2),
                                                                     "met": met}
                rows.append([f"Keel ×1 ≥ {GOAL_VS_PASSTHROUGH:g}× pass-through, {mode}, c={conns}",
                             f"{ratio:.2f}× ({k.rps:,.0f} vs {pt.rps:,.0f} req/s)",
                             "**met**" if met else "**missed**"])
    return ["Goals:", "", md_table(["goal", "measured", ""], rows, [False, True, False])], verdicts


def plot(args: argparse.Namespace, servers: list[Server], cells: dict[tuple[str, str, int], Cell],
         path: Path, subtitle: str) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    modes = [m for m in ("plain", "streamed") if ("direct", m, args.concurrency[0]) in cells]
    fig, axes = plt.subplots(1, len(modes) + 1, figsize=(6 * len(modes) + 5, 5),
                             gridspec_kw={"width_ratios": [5] * len(modes) + [4]})
    colors = {"direct": "#999", "passthrough": "#4a7", "keel1": "#37c", "keel2": "#14a",
              "litellm1": "#e93", "litellm2": "#b50"}
    gs = [s for s in servers]
    width = 0.8 / len(gs)
    for ax, mode in zip(axes, modes, strict=False):
        for j, s in enumerate(gs):
            xs = [i + (j - (len(gs) - 1) / 2) * width for i in range(len(args.concurrency))]
            values = [cells[(s.key, mode, c)].rps for c in args.concurrency]
            ax.bar(xs, values, width, label=s.label, color=colors.get(s.key, "#777"))
            for x, v in zip(xs, values, strict=True):
                ax.text(x, v, f"{v:,.0f}" if v >= 10 else f"{v:.1f}", ha="center",
                        va="bottom", fontsize=5.5, rotation=90)
        ax.set_yscale("log")
        ax.set_xticks(range(len(args.concurrency)), [f"c={c}" for c in args.concurrency])
        ax.set_ylabel("requests / s (log scale; median round)")
        ax.set_title(f"{mode} calls: throughput", fontsize=10)
        ax.set_ylim(top=ax.get_ylim()[1] * 2)
    ax = axes[-1]
    if 1 in args.concurrency:
        rows = [s for s in gs if s.kind != "direct"]
        for j, mode in enumerate(modes):
            d = cells[("direct", mode, 1)].p50
            values = [cells[(s.key, mode, 1)].p50 - d for s in rows]
            xs = [i + (j - 0.5) * 0.4 for i in range(len(rows))]
            ax.bar(xs, values, 0.4, label=mode, color="#37c" if mode == "plain" else "#9bd")
            for x, v in zip(xs, values, strict=True):
                ax.text(x, v, f"{v:.2f}", ha="center", va="bottom", fontsize=6)
        ax.axhline(GOAL_ADDED_P50_MS, color="#c33", ls="--", lw=1,
                   label=f"goal {GOAL_ADDED_P50_MS:g} ms")
        ax.set_yscale("log")
        ax.set_xticks(range(len(rows)), [s.label.replace(" ×", "\n×") for s in rows], fontsize=7)
        ax.set_ylabel("added p50 ms vs direct (log scale)")
        ax.set_title("concurrency 1: added latency (p50)", fontsize=10)
        ax.legend(fontsize=7)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(f"Keel vs a bare pass-through vs LiteLLM's proxy, fake upstream — {subtitle}",
                 fontsize=10)
    save_figure(fig, path, rect=(0, 0.05, 1, 1))
    return True


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Keel vs direct vs pass-through vs LiteLLM.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=(__doc__ or "").split("\n\n", 1)[1])
    add_common_args(parser, "field", retry_budget=120)
    parser.add_argument("--duration", type=float, help="seconds per round per path [3]")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64],
                        help="wrk connections [1 16 64]")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="worker processes of Keel and LiteLLM [1 2]")
    parser.add_argument("--modes", nargs="+", choices=("plain", "streamed"),
                        default=["plain", "streamed"])
    parser.add_argument("--litellm", default="litellm[proxy]",
                        help="what to pip install for LiteLLM; '' leaves it out "
                             "['litellm[proxy]']")
    parser.add_argument("--profile", nargs="*", default=[], metavar="KEY",
                        help="then profile these gateways with py-spy, 10 s each under plain "
                             "load (keys: passthrough keel1 keel2 litellm1 litellm2)")
    parser.add_argument("--from-json", type=Path,
                        help="no measurement: the tables and plot again from a field.json")
    parser.add_argument("--litellm-venv", type=Path, default=LITELLM_VENV,
                        help=f"the throwaway venv for LiteLLM [{LITELLM_VENV}]")
    args = parser.parse_args(argv)
    args.rounds = max(1, args.rounds or (1 if args.quick else 3))
    args.duration = args.duration or (2.0 if args.quick else 3.0)
    args.modes = [m == "streamed" for m in args.modes]
    return args


def rerender(args: argparse.Namespace) -> int:
    """Tables, goals and plot again from a run's field.json (no measurement)."""
    data = json.loads(args.from_json.read_text())
    servers = [Server(s["key"], s["label"], "direct" if s["key"] == "direct" else
                      s["key"].rstrip("0123456789"), s["workers"], None, 0, 0)
               for s in data["servers"]]
    cells = {}
    for c in data["cells"]:
        rounds = [WrkRun(**r) for r in c.pop("rounds")]
        cells[(c["server"], c["mode"], c["concurrency"])] = Cell(**c, rounds=rounds)
    saved = data["args"]
    args.concurrency = sorted({c[2] for c in cells})
    args.workers = sorted({s.workers for s in servers if s.kind == "keel"})
    args.rounds, args.duration = int(saved["rounds"]), float(saved["duration"])
    events = data["events"]["recorded"]
    report, _ = tables(args, servers, cells, data["pinning"], events,
                       data["events"]["answered_200"])
    print(report)
    (args.out / "field.md").write_text(report + "\n")
    info = data["machine"]
    if not args.no_plot and plot(args, servers, cells, args.out / "field.png",
                                 f"{info['nproc']} CPUs, LiteLLM {data['litellm']}"):
        print(f"plot: {args.out / 'field.png'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        return rerender(args)
    if shutil.which("wrk") is None:
        print("bench/field.py needs wrk (the load generator): sudo apt-get install -y wrk",
              file=sys.stderr)
        return 2
    return run_main(args, run, "keel-bench-field-")


if __name__ == "__main__":
    sys.exit(main())

