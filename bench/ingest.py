"""Event ingest into SQLite and PostgreSQL, side by side in one run.

The events go through the real path: :class:`keel.stages.record.EventWriter` (one
writer thread, batches of 512) into ``store.write_events``, rollups and ledger
included, as a server writes them. SQLite: a fresh file (WAL). PostgreSQL: a fresh
schema in ``--postgres`` (COPY into a temporary table, then one
``INSERT ... ON CONFLICT DO NOTHING RETURNING``). The rounds alternate the order of
the two stores. Goal (#7): at least 10,000 events/s into PostgreSQL.

    .venv/bin/python bench/ingest.py [--events 200000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import dashboard_data as data
from harness import cpu_seconds, machine, machine_busy_seconds

from keel.stages.record import EventWriter
from keel.store import SQLiteStore
from keel.store.db import Store
from keel.store.postgres import PostgresStore
from keel.types import Event

HERE = Path(__file__).resolve().parent
SCHEMA = "keel_bench_ingest"


def fresh_store(kind: str, workdir: Path, postgres: str) -> Store:
    if kind == "sqlite":
        path = workdir / "ingest.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        store: Store = SQLiteStore(path)
    else:
        import psycopg

        with psycopg.connect(postgres, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')
        store = PostgresStore(f"{postgres}?schema={SCHEMA}")
    store.migrate()
    return store


def ingest_once(kind: str, events: list[Event], workdir: Path, postgres: str) -> dict[str, float]:
    store = fresh_store(kind, workdir, postgres)
    writer = EventWriter(store, batch_size=512, buffer_max=len(events) + 1,
                         spill_dir=workdir / "spill")
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
    assert writer.flush(timeout=900), "the writer did not catch up"
    wall = time.perf_counter() - t0
    cpu = cpu_seconds(os.getpid(), tid) - cpu0
    other = max(0.0, machine_busy_seconds() - busy0 - (time.process_time() - own0)) / wall
    writer.close()
    stored = store.count_events()
    store.close()
    assert stored == len(events), f"{kind}: {stored} of {len(events)} events stored"
    return {"events_per_s": len(events) / wall, "writer_cpu_us_per_event": cpu / len(events) * 1e6,
            "other_load_cpus": other}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--postgres", default=os.environ.get("KEEL_BENCH_POSTGRES_URL",
                                                         "postgresql://127.0.0.1:5432/test"))
    args = ap.parse_args()
    p = data.Params(events=args.events)
    now = time.time()
    events = data.events(data.columns(p, 0, args.events, now - args.events / 10_000, now))
    out: dict[str, list[dict[str, float]]] = {"sqlite": [], "postgresql": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = ["sqlite", "postgresql"] if r % 2 == 0 else ["postgresql", "sqlite"]
            for kind in order:
                out[kind].append(ingest_once(kind, events, Path(tmp), args.postgres))
                last = out[kind][-1]
                print(f"round {r + 1} {kind:>10}: {last['events_per_s']:>8,.0f} events/s, writer "
                      f"{last['writer_cpu_us_per_event']:.1f} µs CPU/event (other processes: "
                      f"{last['other_load_cpus']:.2f} CPUs)", flush=True)
    med = {k: {m: statistics.median(x[m] for x in v) for m in v[0]} for k, v in out.items()}
    print(f"\n{args.events:,} events, {args.rounds} rounds, median:")
    for kind, m in med.items():
        print(f"  {kind:>10}: {m['events_per_s']:>8,.0f} events/s "
              f"({m['writer_cpu_us_per_event']:.1f} µs writer CPU per event)")
    ratio = med["postgresql"]["events_per_s"] / med["sqlite"]["events_per_s"]
    goal = med["postgresql"]["events_per_s"] >= 10_000
    print(f"  PostgreSQL / SQLite: {ratio:.2f}x; goal >= 10,000 events/s into PostgreSQL: "
          f"{'met' if goal else 'MISSED'}")
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / "ingest.json").write_text(json.dumps(
        {"machine": machine(), "events": args.events, "rounds": args.rounds, "raw": out,
         "median": med}, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
