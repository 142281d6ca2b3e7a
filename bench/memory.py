"""Memory of a ``keel serve`` worker across many calls: its RSS sampled while ``--calls``
(1,000,000) calls go through it, plotted over calls. Issue #8's goal: flat, at most 150 MB.

The feature is overhead.py's ``triage`` with every stage on (input schema + checks, a
champion and a fallback, logprobs → confidence, three validators, policy, price) and its
events recorded as usual into a SQLite file; the upstream is the fake
(``python -m keel.testing --reply billing``). Load: ``wrk -t1 -c{--connections}`` in runs of
``--chunk`` seconds until the fake has answered ``--calls`` calls (its own request counter:
every Keel call is one upstream call). Every answer is checked (200, the reply,
``"decision":"accepted"``); at the end Keel is stopped (its event writer drains) and its
events are counted.

A sampler reads, every ``--interval`` seconds: the fake's counter, VmRSS and RssAnon of each
Keel process (with ``--workers N``: each worker, and the supervisor apart) and the database's
size. Pinning (``--pin split``): Keel alone on CPU 1, the fake and wrk on CPU 0 (two workers:
both CPUs).

    .venv/bin/python bench/memory.py                  # 1M calls: ~10 min at ~1,800 calls/s
    .venv/bin/python bench/memory.py --calls 200000   # ~2 min
    .venv/bin/python bench/memory.py --quick          # 20k calls, a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from harness import (  # the shared benchmark harness (bench/harness.py)
    Child,
    Children,
    _preexec,
    cpu_plan,
    free_port,
    machine,
    trees,
)
from overhead import FEATURE, REPLY, WRK_LUA, chat_body, keel_yaml
from report import add_common_args, md_table, pyplot, run_main, save_figure, write_json

GOAL_MB = 150.0


def fake_requests(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/_fake/stats")
        return int(json.loads(conn.getresponse().read())["requests"])
    finally:
        conn.close()


def status_kb(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def workers_of(keel: Child, n: int) -> list[int]:
    """The processes that serve calls: Keel itself (one worker), or its worker processes
    (uvicorn's spawned children that are Python interpreters running the app)."""
    if n == 1:
        return [keel.pid]
    members = trees([keel.pid])[keel.pid][1:]
    out = []
    for pid in members:
        with contextlib.suppress(OSError):
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"multiprocessing" in cmd and b"resource_tracker" not in cmd:
                out.append(pid)
    return out


def imported(pid: int) -> dict[str, bool]:
    """Whether big optional libraries are mapped into a process (their shared objects)."""
    with open(f"/proc/{pid}/maps") as f:
        maps = f.read()
    return {name: f"/{name}/" in maps for name in ("scipy", "onnxruntime", "sklearn")}


class Sampler(threading.Thread):
    def __init__(self, keel: Child, workers: int, fake_port: int, database: Path,
                 interval: float) -> None:
        super().__init__(daemon=True)
        self.keel, self.n, self.fake_port, self.database = keel, workers, fake_port, database
        self.interval = interval
        self.samples: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.t0 = time.monotonic()

    def sample(self) -> dict[str, Any]:
        calls = fake_requests(self.fake_port)
        row: dict[str, Any] = {"t": round(time.monotonic() - self.t0, 2), "calls": calls,
                               "workers": {}}
        for pid in workers_of(self.keel, self.n):
            with contextlib.suppress(OSError):
                row["workers"][pid] = status_kb(pid)
        if self.n > 1:
            with contextlib.suppress(OSError):
                row["supervisor"] = status_kb(self.keel.pid)
        size = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                size += Path(str(self.database) + suffix).stat().st_size
        row["db_mb"] = round(size / 1e6, 1)
        return row

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            with contextlib.suppress(OSError, ValueError, KeyError, http.client.HTTPException):
                self.samples.append(self.sample())


def run_wrk(port: int, script: Path, connections: int, secs: int,
            cpus: set[int] | None) -> dict[str, Any]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{secs}s", "--timeout", "10s", "-s",
           str(script), f"http://127.0.0.1:{port}/v1/chat/completions"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=secs + 60,
                         preexec_fn=_preexec(cpus), check=False)
    for line in out.stdout.splitlines():
        if line.startswith("KEELBENCH "):
            stats: dict[str, Any] = json.loads(line.split(" ", 1)[1])
            stats["sample"] = next((ln[17:] for ln in out.stdout.splitlines()
                                    if ln.startswith("KEELBENCH_SAMPLE")), "")
            return stats
    raise SystemExit(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")


def rss_mb(row: dict[str, Any]) -> float:
    """The largest worker's VmRSS in the sample, MB."""
    return max((w["VmRSS"] for w in row["workers"].values()), default=0) * 1024 / 1e6


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (x, y)."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


def run(args: argparse.Namespace, children: Children, workdir: Path) -> int:
    started = time.monotonic()
    info = machine()
    every_cpu = set(os.sched_getaffinity(0))
    client_cpus, upstream_cpus, gateway_cpus, _ = cpu_plan(args.pin)
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    py = sys.executable
    up_port, keel_port = free_port(), free_port()
    upstream = children.start("upstream", [py, "-m", "keel.testing", "--port", str(up_port),
                                           "--reply", REPLY], upstream_cpus)
    config = workdir / "keel.yaml"
    config.write_text(keel_yaml(up_port, 0))
    database = args.db or workdir / "keel.db"
    if args.launcher == "keel":
        cmd = [py, "-m", "keel", "serve", "--config", str(config), "--db", str(database),
               "--port", str(keel_port), "--workers", str(args.workers)]
    else:  # Keel's app without its CLI, as `keel serve --workers N` runs each worker
        cmd = [py, "-m", "uvicorn", "keel.server.workers:app", "--factory", "--host",
               "127.0.0.1", "--port", str(keel_port), "--workers", str(args.workers), "--loop",
               "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"]
    keel = children.start("keel", cmd, gateway_cpus if args.workers == 1 else every_cpu,
                          env={"KEEL_BENCH_KEY": "sk-bench", "KEEL_CONFIG": str(config),
                               "KEEL_DATABASE": str(database)})
    deadline = time.monotonic() + 120
    while True:
        for child in (upstream, keel):
            if child.proc.poll() is not None:
                raise SystemExit(f"{child.name} exited:\n{child.output()}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", keel_port, timeout=10)
            conn.request("POST", "/v1/chat/completions", body=chat_body(FEATURE),
                         headers={"content-type": "application/json"})
            answer = conn.getresponse()
            text = answer.read()
            conn.close()
            if answer.status == 200 and b'"decision":"accepted"' in text:
                break
        if time.monotonic() > deadline:
            raise SystemExit(f"Keel not ready:\n{keel.output()}")
        time.sleep(0.3)
    script = workdir / "wrk.lua"
    expect = f'[==["content":"{REPLY}"]==], [==["decision":"accepted"]==]'
    script.write_text(WRK_LUA.format(body=chat_body(FEATURE).decode(), expect=expect))

    sampler = Sampler(keel, args.workers, up_port, database, args.interval)
    first = sampler.sample()
    sampler.samples.append(first)
    libraries = imported(workers_of(keel, args.workers)[0])
    print(f"Keel up ({args.workers} worker(s), {' '.join(cmd[2:4])}), RSS {rss_mb(first):.1f} MB "
          f"before any load (mapped: {', '.join(k for k, v in libraries.items() if v) or 'none'}"
          f" of scipy, onnxruntime, sklearn); {args.calls:,} calls at c={args.connections} ...",
          flush=True)
    sampler.start()
    totals = {"requests": 0, "ok": 0, "non200": 0, "badbody": 0, "socket_errors": 0}
    sample_error = ""
    rate = 1000.0
    load_started = time.monotonic()
    while True:
        done = fake_requests(up_port)
        left = args.calls - done
        if left <= 0:
            break
        secs = max(1, min(args.chunk, round(left / rate + 0.5)))
        t0 = time.monotonic()
        stats = run_wrk(keel_port, script, args.connections, secs, client_cpus)
        rate = max(50.0, stats["requests"] / (time.monotonic() - t0))
        for key in totals:
            totals[key] += stats[key]
        sample_error = sample_error or stats["sample"]
        last = sampler.samples[-1]
        print(f"  {last['calls']:>9,} calls  RSS {rss_mb(last):6.1f} MB  db {last['db_mb']:7.1f} "
              f"MB  {rate:6,.0f} calls/s  {time.monotonic() - load_started:5.0f} s", flush=True)
    load_s = time.monotonic() - load_started
    time.sleep(args.interval * 1.5)
    sampler.stop.set()
    sampler.join()
    final = sampler.sample()
    sampler.samples.append(final)
    children.stop(keel)
    with contextlib.closing(sqlite3.connect(database)) as conn:
        events = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    samples = sampler.samples
    points = [(s["calls"], rss_mb(s)) for s in samples if s["workers"]]
    peak = max(mb for _, mb in points)
    half = [p for p in points if p[0] >= final["calls"] / 2]
    per_100k = slope(half) * 100_000
    per_100k_all = slope([p for p in points if p[0] >= min(10_000, final["calls"] / 10)]) * 100_000
    checkpoints = []
    for mark in (0, 1_000, 10_000, 100_000, 250_000, 500_000, 750_000, 1_000_000):
        if mark <= final["calls"]:
            near = min(points, key=lambda p, m=mark: abs(p[0] - m))
            checkpoints.append([f"{mark:,}", f"{near[0]:,}", f"{near[1]:.1f}"])
    report = "\n".join([
        f"{final['calls']:,} calls through `{' '.join(cmd[2:4])} --workers {args.workers}` in "
        f"{load_s:.0f} s ({final['calls'] / load_s:,.0f} calls/s, wrk -c{args.connections}); "
        f"{len(samples)} samples every {args.interval:g} s.", "",
        md_table(["calls (target)", "calls (sample)", "RSS MB (largest worker)"], checkpoints),
        "",
        f"- peak RSS: **{peak:.1f} MB** (goal ≤ {GOAL_MB:g} MB: "
        f"**{'met' if peak <= GOAL_MB else 'missed'}**)",
        f"- slope over the second half: **{per_100k:+.2f} MB per 100k calls** "
        f"(from 10k calls on: {per_100k_all:+.2f} MB per 100k)",
        f"- answers: {totals['ok']:,} ok of {totals['requests']:,} counted by wrk, "
        f"{totals['non200']} non-200, {totals['badbody']} bad bodies, "
        f"{totals['socket_errors']} socket errors; Keel recorded {events:,} events for "
        f"{final['calls']:,} upstream calls; database {final['db_mb']:,.0f} MB",
        f"- before any load: {rss_mb(first):.1f} MB; libraries mapped: "
        + (", ".join(k for k, v in libraries.items() if v) or "none of scipy, onnxruntime, "
           "sklearn"),
    ])
    print("\n" + report)
    write_json(args.out / f"{args.name}.json", {
        "machine": info, "args": {k: str(v) for k, v in vars(args).items()},
        "command": cmd, "libraries": libraries, "load_s": load_s, "peak_mb": peak, "slope_mb_per_100k_second_half": per_100k,
        "slope_mb_per_100k_from_10k": per_100k_all, "events": events, "wrk": totals,
        "samples": samples,
    })
    (args.out / f"{args.name}.md").write_text(report + "\n")
    if not args.no_plot and plot(samples, args, args.out / f"{args.name}.png",
                                 f"{info['nproc']} CPUs, Python {info['python']}"):
        print(f"plot: {args.out / f'{args.name}.png'}")
    print(f"results: {args.out / f'{args.name}.json'}; the run took {time.monotonic() - started:.0f} s")
    bad = totals["non200"] + totals["badbody"] + totals["socket_errors"]
    if bad or sample_error or events < final["calls"] - 10:
        print(f"\nINVALID RUN: {bad} bad answers ({sample_error}); {events} events for "
              f"{final['calls']} calls", file=sys.stderr)
        return 1
    return 0


def plot(samples: list[dict[str, Any]], args: argparse.Namespace, path: Path,
         subtitle: str) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(9, 4.8))
    series = [(samples, "keel serve" if args.launcher == "keel" else "uvicorn keel.server")]
    for other in args.overlay:  # earlier runs' samples, drawn alongside
        data = json.loads(other.read_text())
        command = data.get("command") or ["", "", "keel", "serve"]
        series.append((data["samples"], " ".join(command[2:4]).replace(
            "uvicorn keel.server.workers:app", "uvicorn keel.server")))
    i = 0
    for rows, name in series:
        pids = sorted({pid for s in rows for pid in s["workers"]})
        for k, pid in enumerate(pids):
            xs = [s["calls"] for s in rows if pid in s["workers"]]
            rss = [s["workers"][pid]["VmRSS"] * 1024 / 1e6 for s in rows if pid in s["workers"]]
            anon = [s["workers"][pid]["RssAnon"] * 1024 / 1e6 for s in rows
                    if pid in s["workers"]]
            label = f"{name}, worker {k + 1}" if len(pids) > 1 else name
            ax.plot(xs, rss, color=f"C{i}", lw=1.5, label=f"{label}: RSS")
            ax.plot(xs, anon, color=f"C{i}", lw=1, ls=":", label=f"{label}: anonymous (heap)")
            i += 1
    ax.axhline(GOAL_MB, color="#c33", ls="--", lw=1, label=f"goal ≤ {GOAL_MB:g} MB")
    ax.set_ylim(0, max(GOAL_MB * 1.15, ax.get_ylim()[1]))
    ax.set_xlabel("calls served")
    ax.set_ylabel("MB")
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v / 1e3:,.0f}k"))
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"Memory of a Keel worker over {samples[-1]['calls']:,} calls "
                 f"(feature with every stage on, events recorded) — {subtitle}", fontsize=9)
    ax.grid(alpha=0.3)
    save_figure(fig, path)
    return True


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="RSS of a keel serve worker over 1M calls.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=(__doc__ or "").split("\n\n", 1)[1])
    add_common_args(parser, "memory",
                    pin_help="split: Keel alone on one CPU, the fake and wrk on another")
    parser.add_argument("--calls", type=int, help="calls to send [1000000]")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections [16]")
    parser.add_argument("--workers", type=int, default=1, help="keel serve --workers [1]")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between samples [2]")
    parser.add_argument("--chunk", type=int, default=30, help="seconds per wrk run [30]")
    parser.add_argument("--db", type=Path, help="Keel's database (default: a temporary file)")
    parser.add_argument("--launcher", choices=("keel", "uvicorn"), default="keel",
                        help="keel: `keel serve` (the CLI); uvicorn: `uvicorn --factory "
                             "keel.server.workers:app`, Keel's app without the CLI's imports")
    parser.add_argument("--name", default="memory", help="results/<name>.{json,md,png}")
    parser.add_argument("--overlay", type=Path, nargs="*", default=[],
                        help="earlier runs' JSON files to draw in the same plot")
    # a long soak on a shared machine: it does not wait for a quiet one
    parser.set_defaults(max_background=0)
    args = parser.parse_args(argv)
    args.calls = args.calls or (20_000 if args.quick else 1_000_000)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench/memory.py needs wrk: sudo apt-get install -y wrk", file=sys.stderr)
        return 2
    return run_main(args, run, "keel-bench-memory-")


if __name__ == "__main__":
    sys.exit(main())
