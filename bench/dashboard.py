"""Dashboard queries on a big store, and event ingest with the rollups on.

1. **Build** (cached): a SQLite database holding ``--events`` events (10M) over ``--days``
   days of synthetic traffic (bench/dashboard_data.py), in Keel's schema: the migrations
   applied, the events inserted in big transactions with their indexes built afterwards,
   then the rollups and the ledger filled by :func:`keel.store.rollups.backfill` — the
   writer's own aggregation, as an upgrade runs it. The file is kept under
   ``/tmp/keel-bench-dashboard/`` named by the generator's parameters; reruns reuse it.
2. **Queries**: ``keel serve`` on that database (a subprocess, as people run it), and every
   data call the dashboard's pages make, timed ``--repeat`` times each through HTTP on a
   keep-alive connection (after one untimed call, whose time is reported as "first"):
   p50 / p95 / max per call and p95 against the 0.5 s goal. Ranges end at the newest
   event (the traffic is synthetic and fixed in time).
3. **Ingest**: events per second through the real :class:`~keel.stages.record.EventWriter`
   (its thread, batches of 512) into a fresh database, before (migrations up to 005 and
   the plain ``INSERT OR IGNORE`` the writer did before rollups) and after (every
   migration; events, rollups and ledger in one transaction), interleaved rounds.

    .venv/bin/python bench/dashboard.py                  # ~9 min the first time, ~3 min after
    .venv/bin/python bench/dashboard.py --quick          # 1M events, fewer repeats
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dashboard_data as data
from harness import (
    Children,
    cpu_seconds,
    free_port,
    machine,
    machine_busy_seconds,
    percentile,
    wait_for_quiet,
)

from keel.stages.record import EventWriter
from keel.store import SQLiteStore, rollups
from keel.store import sqlite as sqlite_module
from keel.store.migrations import MIGRATIONS
from keel.types import Event

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CACHE = Path(tempfile.gettempdir()) / "keel-bench-dashboard"
GOAL_S = 0.5
DAY = 86400.0


# --- 1. build ------------------------------------------------------------------------------


def build(p: data.Params) -> Path:
    """The database for these parameters, built once (to a temporary name, renamed when
    complete, so a build cut short is never reused)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"events-{p.events}-{p.key()}.db"
    if path.exists():
        print(f"reusing {path} ({path.stat().st_size / 1e9:.1f} GB)", flush=True)
        return path
    for old in CACHE.glob("*.building*"):
        old.unlink()
    tmp = CACHE / f"{path.name}.building"
    t0 = time.monotonic()
    SQLiteStore(tmp).migrate()
    conn = sqlite3.connect(tmp)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-2000000")  # 2 GB: the primary key stays in memory
    conn.execute("PRAGMA temp_store=MEMORY")
    indexes = [r[0] for r in conn.execute(
        "SELECT sql FROM sqlite_master WHERE type='index' AND tbl_name='events' AND sql IS NOT NULL")]
    for name in [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='index' AND tbl_name='events' AND sql IS NOT NULL")]:
        conn.execute(f"DROP INDEX {name}")
    done = 0
    for chunk in data.chunks(p):
        with conn:
            conn.executemany(sqlite_module._INSERT_EVENT, data.rows(chunk))
        done += len(chunk["ts"])
        print(f"\r  events: {done:,} / {p.events:,} ({time.monotonic() - t0:.0f} s)", end="",
              flush=True)
    print()
    for i, sql in enumerate(indexes, 1):
        conn.execute(sql)
        print(f"\r  indexes: {i} / {len(indexes)} ({time.monotonic() - t0:.0f} s)", end="",
              flush=True)
    print()
    t1 = time.monotonic()
    with conn:
        rollups.backfill(conn)
    backfill_s = time.monotonic() - t1
    print(f"  rollups and ledger (the upgrade's backfill): {backfill_s:.0f} s", flush=True)
    counts = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
              for t in ("events", "rollup_minute", "rollup_hour", "rollup_day", "latency_minute",
                        "latency_hour", "latency_day", "ledger", "ledger_user", "ledger_key")}
    conn.close()
    tmp.rename(path)
    meta = {"params": asdict(p), "build_s": time.monotonic() - t0, "backfill_s": backfill_s,
            "rows": counts, "bytes": path.stat().st_size}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    print(f"built {path} in {meta['build_s']:.0f} s: {counts}", flush=True)
    return path


# --- 2. queries ----------------------------------------------------------------------------


KEEL_YAML_HEAD = """providers:
  nowhere:
    type: openai
    base_url: http://127.0.0.1:9/v1
    api_key: unused
features:
"""


def keel_yaml() -> str:
    out = [KEEL_YAML_HEAD]
    for f in data.FEATURES:
        out.append(f"  {f}:\n    output: {{kind: text}}\n    versions:\n"
                   + "".join(f"      {f}-v{i}: {{provider: nowhere, model: m}}\n" for i in (1, 2, 3))
                   + f"    aliases: {{champion: {f}-v2}}\n")
    return "".join(out)


@dataclass
class Call:
    name: str
    path: str
    params: dict[str, Any]
    times: list[float]
    first: float = 0.0
    status: int = 0
    size: int = 0

    def summary(self) -> dict[str, Any]:
        t = sorted(self.times)
        return {"name": self.name, "url": self.url, "n": len(t), "first_s": self.first,
                "p50_s": percentile(t, 0.5), "p95_s": percentile(t, 0.95), "max_s": t[-1],
                "bytes": self.size}

    @property
    def url(self) -> str:
        return self.path + ("?" + urllib.parse.urlencode(self.params) if self.params else "")


def get(conn: http.client.HTTPConnection, url: str) -> tuple[int, bytes]:
    conn.request("GET", url)
    r = conn.getresponse()
    return r.status, r.read()


def calls(p: data.Params, conn: http.client.HTTPConnection) -> list[Call]:
    end = p.end
    f = data.FEATURES[2]  # summarize: a mid-sized feature with three versions at the end
    ev = {"since": end - 7 * DAY, "until": end}
    status, body = get(conn, "/api/events?" + urllib.parse.urlencode({**ev, "limit": 50}))
    assert status == 200, body
    first_page = json.loads(body)
    cursor = first_page["next"]
    trace = first_page["events"][7]["trace_id"]
    user = "user-0007"  # a rare user: 8 calls in the last 7 days (found by index, not scan)
    out = [
        Call("overview, 24 h (by hour)", "/api/stats/overview", {"since": end - DAY, "until": end}, []),
        Call("overview, 24 h by minute", "/api/stats/overview",
             {"since": end - DAY, "until": end, "bucket": "minute"}, []),
        Call("overview, 7 d (by hour)", "/api/stats/overview", {"since": end - 7 * DAY, "until": end}, []),
        Call("overview, 30 d (by day)", "/api/stats/overview", {"since": end - 30 * DAY, "until": end}, []),
        Call(f"feature page, 7 d ({f})", f"/api/stats/features/{f}", {"since": end - 7 * DAY, "until": end}, []),
        Call(f"feature page, 30 d ({f})", f"/api/stats/features/{f}", {"since": end - 30 * DAY, "until": end}, []),
        Call("costs by day, 30 d", "/api/stats/costs", {"group": "day", "since": end - 30 * DAY, "until": end}, []),
        Call("costs by user, 7 d", "/api/stats/costs", {"group": "user", "since": end - 7 * DAY, "until": end}, []),
        Call("costs by user, 30 d", "/api/stats/costs", {"group": "user", "since": end - 30 * DAY, "until": end}, []),
        Call("costs by key, 30 d", "/api/stats/costs", {"group": "key", "since": end - 30 * DAY, "until": end}, []),
        Call("explorer, first page", "/api/events", {**ev, "limit": 50}, []),
        Call("explorer, next page (cursor)", "/api/events", {**ev, "limit": 50, "cursor": cursor}, []),
        Call(f"explorer, {f} + review", "/api/events", {**ev, "feature": f, "decision": "review"}, []),
        Call("explorer, decision=error", "/api/events", {**ev, "decision": "error"}, []),
        Call(f"explorer, user={user}", "/api/events", {**ev, "user": user}, []),
        Call("explorer, trace id prefix", "/api/events", {"trace": trace[:6]}, []),
        Call("one event by trace id", f"/api/events/{trace}", {}, []),
    ]
    return out


def run_queries(path: Path, p: data.Params, repeat: int, children: Children,
                workdir: Path) -> dict[str, Any]:
    config = workdir / "keel.yaml"
    config.write_text(keel_yaml())
    port = free_port()
    keel = children.start("keel", [sys.executable, "-m", "keel", "serve", "--config", str(config),
                                   "--db", str(path), "--port", str(port)], None,
                          env={"KEEL_CONTROL_INTERVAL_S": "0"})
    deadline = time.monotonic() + 120
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            if get(conn, "/healthz")[0] == 200:
                break
        except OSError:
            pass
        if keel.proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"keel serve did not start:\n{keel.output()}")
        time.sleep(0.2)
    todo = calls(p, conn)
    busy0, cpu0, wall0 = machine_busy_seconds(), cpu_seconds(keel.pid), time.monotonic()
    client0 = time.process_time()
    for c in todo:  # the first call of each, untimed in the percentiles
        t = time.perf_counter()
        c.status, body = get(conn, c.url)
        c.first = time.perf_counter() - t
        c.size = len(body)
        if c.status != 200:
            raise SystemExit(f"{c.url}: {c.status} {body[:500]!r}")
    for _ in range(repeat):  # round robin, so a slow moment of the machine hits every call
        for c in todo:
            t = time.perf_counter()
            status, _ = get(conn, c.url)
            c.times.append(time.perf_counter() - t)
            assert status == 200
    wall = time.monotonic() - wall0
    keel_cpu = cpu_seconds(keel.pid) - cpu0
    other = max(0.0, machine_busy_seconds() - busy0 - keel_cpu - (time.process_time() - client0))
    conn.close()
    children.stop(keel)
    return {"calls": [c.summary() for c in todo], "other_load_cpus": other / wall}


# --- 3. ingest -----------------------------------------------------------------------------


class BeforeStore(SQLiteStore):
    """Keel's store as it was before the rollups: events only."""

    def migrate(self) -> list[str]:
        saved = sqlite_module.MIGRATIONS
        sqlite_module.MIGRATIONS = MIGRATIONS[:[n for n, _ in MIGRATIONS].index("006_rollups")]
        try:
            return super().migrate()
        finally:
            sqlite_module.MIGRATIONS = saved

    @staticmethod
    def write_events(conn: sqlite3.Connection, events: Any) -> None:
        with conn:
            conn.executemany(sqlite_module._INSERT_EVENT, map(sqlite_module._event_row, events))


def ingest_once(store_cls: type[SQLiteStore], events: list[Event], workdir: Path) -> dict[str, float]:
    path = workdir / f"ingest-{store_cls.__name__}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    store = store_cls(path)
    store.migrate()
    writer = EventWriter(store, batch_size=512)
    writer.start()
    tid = writer._thread.native_id
    assert tid is not None

    async def submit() -> None:  # as the server does: many calls per loop turn
        for i in range(0, len(events), 256):
            for e in events[i:i + 256]:
                writer.submit(e)
            await asyncio.sleep(0)

    cpu0, busy0, own0 = cpu_seconds(os.getpid(), tid), machine_busy_seconds(), time.process_time()
    t0 = time.perf_counter()
    asyncio.run(submit())
    writer.flush(timeout=600)
    wall = time.perf_counter() - t0
    cpu = cpu_seconds(os.getpid(), tid) - cpu0
    other = max(0.0, machine_busy_seconds() - busy0 - (time.process_time() - own0)) / wall
    writer.close()
    assert store.count_events() == len(events), "events lost"
    return {"events_per_s": len(events) / wall, "writer_cpu_us_per_event": cpu / len(events) * 1e6,
            "other_load_cpus": other}


def run_ingest(n: int, rounds: int, workdir: Path) -> dict[str, Any]:
    p = data.Params(events=n)
    now = time.time()
    events = data.events(data.columns(p, 0, n, now - n / 10_000, now))  # 10k calls/s of traffic
    out: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for r in range(rounds):
        order: list[tuple[str, type[SQLiteStore]]] = [("before", BeforeStore), ("after", SQLiteStore)]
        for label, cls in order if r % 2 == 0 else order[::-1]:
            out[label].append(ingest_once(cls, events, workdir))
            last = out[label][-1]
            print(f"  ingest round {r + 1} {label}: {last['events_per_s']:,.0f} events/s "
                  f"(other processes: {last['other_load_cpus']:.2f} CPUs)", flush=True)
    med: Callable[[str, str], float] = lambda k, m: statistics.median(x[m] for x in out[k])  # noqa: E731
    return {"events": n, "rounds": rounds, "raw": out,
            **{k: {m: med(k, m) for m in ("events_per_s", "writer_cpu_us_per_event",
                                          "other_load_cpus")} for k in out}}


# --- report --------------------------------------------------------------------------------


def report(q: dict[str, Any] | None, ingest: dict[str, Any] | None, meta: dict[str, Any]) -> str:
    lines = []
    if q:
        lines += ["| call | first s | p50 s | p95 s | max s | p95 / 0.5 s goal | response KB |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for c in q["calls"]:
            lines.append(f"| {c['name']} | {c['first_s']:.3f} | {c['p50_s']:.3f} | "
                         f"{c['p95_s']:.3f} | {c['max_s']:.3f} | {c['p95_s'] / GOAL_S:.2f} | "
                         f"{c['bytes'] / 1024:.0f} |")
        lines.append(f"\nother processes used {q['other_load_cpus']:.2f} CPUs during the queries")
    if ingest:
        b, a = ingest["before"], ingest["after"]
        lines += ["", "| ingest (EventWriter, batches of 512, fresh file) | events/s | writer CPU µs/event |",
                  "|---|---:|---:|",
                  f"| before: events only (migrations to 005) | {b['events_per_s']:,.0f} | {b['writer_cpu_us_per_event']:.1f} |",
                  f"| after: events + rollups + ledger, one transaction | {a['events_per_s']:,.0f} | {a['writer_cpu_us_per_event']:.1f} |",
                  f"| after / before | {a['events_per_s'] / b['events_per_s']:.2f} | {a['writer_cpu_us_per_event'] / b['writer_cpu_us_per_event']:.2f} |",
                  f"\nother processes used {b['other_load_cpus']:.2f} / {a['other_load_cpus']:.2f} "
                  "CPUs during the before / after runs (medians)"]
    if meta:
        lines.append(f"\ndatabase: {meta['rows']['events']:,} events, "
                     f"{meta['bytes'] / 1e9:.1f} GB; rows: " + ", ".join(
                         f"{k} {v:,}" for k, v in meta["rows"].items() if k != "events")
                     + f"; built in {meta['build_s']:.0f} s, of which the backfill "
                     f"{meta['backfill_s']:.0f} s")
    return "\n".join(lines)


def plot(q: dict[str, Any] | None, ingest: dict[str, Any] | None, events: int, out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install '.[bench]')")
        return
    fig, axes = plt.subplots(1, 2, figsize=(13, 6), gridspec_kw={"width_ratios": [3, 1]})
    if q:
        ax = axes[0]
        names = [c["name"] for c in q["calls"]][::-1]
        p50 = [c["p50_s"] * 1000 for c in q["calls"]][::-1]
        p95 = [c["p95_s"] * 1000 for c in q["calls"]][::-1]
        y = range(len(names))
        ax.barh([i + 0.2 for i in y], p95, height=0.4, label="p95", color="#d9822b")
        ax.barh([i - 0.2 for i in y], p50, height=0.4, label="p50", color="#2b6cd9")
        ax.axvline(GOAL_S * 1000, color="red", linestyle="--", label="goal: p95 ≤ 500 ms")
        ax.set_yticks(list(y), names, fontsize=8)
        ax.set_xlabel("ms per call (HTTP, keel serve)")
        ax.set_title(f"Dashboard data calls, {events:,} events stored")
        ax.legend(loc="lower right")
    if ingest:
        ax = axes[1]
        vals = [ingest["before"]["events_per_s"], ingest["after"]["events_per_s"]]
        ax.bar(["before\n(events only)", "after\n(+ rollups, ledger)"], vals,
               color=["#999999", "#2b6cd9"])
        ax.axhline(10_000, color="red", linestyle="--", label="goal: 10k events/s")
        ax.set_ylabel("events/s into SQLite (EventWriter)")
        ax.set_title("Ingest")
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"plot: {out}")


def quiet(limit: float) -> None:
    if limit > 0 and not wait_for_quiet(limit, 120):
        print(f"  the machine stays busy (other processes use more than {limit:g} CPUs): "
              "measuring anyway, see 'other processes' in the results", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--events", type=int, default=10_000_000, help="events stored [10M]")
    parser.add_argument("--days", type=float, default=30.0, help="days they span [30]")
    parser.add_argument("--repeat", type=int, default=30, help="timed calls per query [30]")
    parser.add_argument("--ingest-events", type=int, default=100_000,
                        help="events per ingest run [100k]")
    parser.add_argument("--ingest-rounds", type=int, default=3, help="ingest rounds [3]")
    parser.add_argument("--skip", choices=("queries", "ingest"), action="append", default=[])
    parser.add_argument("--quick", action="store_true", help="1M events, 10 repeats, 1 ingest round")
    parser.add_argument("--max-background", type=float, default=0.5,
                        help="wait (up to 2 min) until other processes use at most this many "
                             "CPUs before each measurement [0.5]; 0: don't wait")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.repeat, args.ingest_rounds = 1_000_000, 10, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
    workdir = Path(tempfile.mkdtemp(prefix="keel-bench-dashboard-"))
    children = Children(workdir)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        info = machine()
        p = data.Params(events=args.events, days=args.days)
        q = ingest = None
        meta: dict[str, Any] = {}
        if "queries" not in args.skip:
            path = build(p)
            meta = json.loads(path.with_suffix(".json").read_text())
            quiet(args.max_background)
            print(f"timing {args.repeat} calls of each query ...", flush=True)
            q = run_queries(path, p, args.repeat, children, workdir)
        if "ingest" not in args.skip:
            quiet(args.max_background)
            print(f"ingest: {args.ingest_events:,} events per run ...", flush=True)
            ingest = run_ingest(args.ingest_events, args.ingest_rounds, workdir)
        text = report(q, ingest, meta)
        print("\n" + text)
        (args.out / "dashboard.json").write_text(json.dumps(
            {"machine": info, "params": asdict(p), "queries": q, "ingest": ingest, "db": meta},
            indent=2))
        (args.out / "dashboard.md").write_text(text + "\n")
        plot(q, ingest, p.events, args.out / "dashboard.png")
        slow = [c["name"] for c in (q or {}).get("calls", []) if c["p95_s"] > GOAL_S]
        if slow:
            print(f"over the goal: {', '.join(slow)}", file=sys.stderr)
        return 1 if slow else 0
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        children.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
