"""The harness the benchmarks share: child processes pinned to CPUs and stopped with
the benchmark, CPU accounting per process and thread, waiting for a quiet machine, a
lean keep-alive HTTP client, and a description of the machine.

Used by ``bench/overhead.py``, ``bench/streaming.py``, ``bench/field.py`` and ``bench/memory.py``.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import platform
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

HERE = Path(__file__).resolve().parent


class Measured(Protocol):
    @property
    def foreign_s(self) -> float: ...
    @property
    def wall_s(self) -> float: ...


R = TypeVar("R", bound=Measured)


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


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """utime + stime of a process (all its threads), or of one of its threads."""
    with open(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat") as f:
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
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once it has exited
        return (time.monotonic(), machine_busy_seconds(),
                cpu_seconds(self.gateway.pid) if self.gateway else 0.0,
                cpu_seconds(self.upstream.pid),
                time.process_time() + kids.ru_utime + kids.ru_stime)

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


def wait_for_quiet(limit: float, max_wait: float) -> bool:
    """Wait until other processes use at most `limit` CPUs; False if they still do."""
    deadline = time.monotonic() + max_wait
    while (load := background_load()) > limit:
        if time.monotonic() > deadline:
            return False
        print(f"  other processes use {load:.2f} CPUs; waiting for the machine to calm down",
              flush=True)
        time.sleep(2)
    return True


class Quiet:
    """Discards and re-runs a measurement during which other processes (other people's
    jobs on a shared machine) used more than `limit` CPUs, within a time budget."""

    def __init__(self, limit: float, budget_s: float, retries: int = 3) -> None:
        self.limit, self.budget_s, self.retries = limit, budget_s, retries
        self.deadline = time.monotonic() + budget_s
        self.discarded = 0
        self.kept_busy = 0

    def busy(self, foreign_s: float, wall_s: float) -> bool:
        # /proc/stat counts 10 ms ticks: allow a few of them on short measurements
        return self.limit > 0 and foreign_s > self.limit * wall_s + 0.03

    def run(self, label: str, measure: Callable[[], R]) -> R:
        for attempt in range(self.retries + 1):
            result = measure()
            foreign, wall = result.foreign_s, result.wall_s
            if not self.busy(foreign, wall):
                return result
            left = self.deadline - time.monotonic()
            if attempt == self.retries or left <= 0:
                self.kept_busy += 1
                print(f"  {label}: other processes used {foreign / wall:.2f} CPUs; kept "
                      "(out of retries): this row is contaminated", flush=True)
                return result
            self.discarded += 1
            print(f"  {label}: discarded, other processes used {foreign / wall:.2f} CPUs; "
                  "measuring again", flush=True)
            wait_for_quiet(self.limit, min(30.0, left))
        raise AssertionError("unreachable")


def upstream_connections(pid: int, port: int) -> int:
    """Established TCP connections of process `pid` to 127.0.0.1:`port` (its upstream pool)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    count = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            cols = line.split()
            if cols[3] == "01" and int(cols[2].split(":")[1], 16) == port and cols[9] in inodes:
                count += 1
    return count


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


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    idx = max(0, math.ceil(q * len(sorted_values)) - 1)
    return sorted_values[min(idx, len(sorted_values) - 1)]


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds per thread of a process."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            out[int(tid)] = cpu_seconds(pid, int(tid))
    return out


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for mod in ("uvicorn", "uvloop", "httptools", "httpx", "httpcore", "fastapi", "starlette"):
        with contextlib.suppress(Exception):
            versions[mod] = __import__(mod).__version__
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    git = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(HERE), "status", "--porcelain", "--", "../src"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return {"keel_commit": git + (" + uncommitted changes in src/" if dirty else ""),"nproc": os.cpu_count(), "cpus_allowed": sorted(os.sched_getaffinity(0)),
            "cpu_model": model, "python": platform.python_version(),
            "kernel": platform.release(),
            "wrk": ((wrk.stdout + wrk.stderr).strip().splitlines() or [""])[0], **versions}


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


# --- process trees (servers with worker processes: `keel serve --workers N`, LiteLLM) -------


def trees(roots: list[int]) -> dict[int, list[int]]:
    """Each root pid with its live descendants (a supervisor and its workers), from one scan
    of /proc."""
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError), \
                    open(f"/proc/{entry}/stat") as f:
                kids.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    out = {}
    for root in roots:
        members, todo = [root], [root]
        while todo:
            for child in kids.get(todo.pop(), []):
                members.append(child)
                todo.append(child)
        out[root] = members
    return out


def cpu_of(pids: list[int]) -> float:
    """CPU seconds of these processes together (the ones gone meanwhile count 0)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += cpu_seconds(pid)
    return total


def rss_mb(pid: int) -> float:
    """Resident set size of one process (VmRSS), in MB (10^6 bytes)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e6
    return 0.0
