"""What recording costs a call on the event loop: sanitizing (secrets, privacy policy) and
the write-ahead journal's one os.write, per call, in microseconds (docs/resilience.md).

Two measurements, each over interleaved rounds so drift on a shared machine hits every
variant alike:

1. ``submit``: ``EventWriter.submit`` alone, on an event loop, for an event like the
   triage feature's (input ~200 chars, label output, two attempts, two validations):
   plain (what the writer did before), + sanitize, + sanitize + journal.
2. ``call``: a whole in-process ``Keel.call`` (scripted provider, SQLite store) with the
   journal off and on; the difference of the p50s is the journal's added latency.

    .venv/bin/python bench/journal.py [--calls 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import basic_feature, spec_with

from keel.gateway import Keel
from keel.settings import Settings
from keel.stages.privacy import Policy, Sanitizer
from keel.stages.record import EventWriter
from keel.stages.scrub import Scrubber
from keel.store import SQLiteStore
from keel.types import Attempt, Decision, Event, OnFail, ValidationResult

TEXT = ("Hi, I was charged twice for my subscription this month and the second charge "
        "still shows as pending on my card. Could you refund it and tell me why it happened? "
        "Order 88213.")


def event(i: int) -> Event:
    return Event(
        trace_id=f"{i:032x}", ts=time.time(), feature="f", version="v1",
        decision=Decision.ACCEPTED, confidence=0.93, latency_ms=1.2,
        timings_ms={"checks": 0.01, "route": 0.002, "invoke": 1.0, "validate": 0.02,
                    "decide": 0.001, "total": 1.2},
        input_tokens=41, output_tokens=1, cost_usd=0.0000451,
        attempts=[Attempt("v1", "p1", False, 0.4, 0, "provider_timeout", "read timed out"),
                  Attempt("v1", "p1", True, 0.6, 1)],
        validations=[ValidationResult("allowed_labels", True, OnFail.REFUSE),
                     ValidationResult("regex", True, OnFail.REPAIR)],
        input={"text": TEXT}, output={"label": "billing"}, user="u-17", key="k-1",
        routed="v1")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def time_submits(writer: EventWriter, n: int, start: int) -> list[float]:
    out = []
    clock = time.perf_counter_ns
    for i in range(n):
        e = event(start + i)
        t = clock()
        writer.submit(e)
        out.append((clock() - t) / 1000)
        if i % 64 == 63:
            await asyncio.sleep(0)  # let the hand-over to the writer run, as under load
    return out


def bench_submit(tmp: Path, calls: int, rounds: int) -> dict[str, list[float]]:
    store = SQLiteStore(tmp / "submit.db")
    store.migrate()
    sanitize = Sanitizer(Scrubber(["sk-provider-key-0123456789"]), {"f": Policy()})
    variants = {
        "plain": EventWriter(store, spill_dir=tmp / "s1"),
        "sanitize": EventWriter(store, spill_dir=tmp / "s2", sanitize=sanitize),
        "sanitize+journal": EventWriter(store, spill_dir=tmp / "s3", sanitize=sanitize,
                                        journal=True),
    }
    for w in variants.values():
        w.start()
    samples: dict[str, list[float]] = {k: [] for k in variants}
    n = 0
    for _ in range(rounds):
        for name, writer in variants.items():
            samples[name] += asyncio.run(time_submits(writer, calls // rounds, n))
            n += calls
            writer.flush(60)
    for w in variants.values():
        w.close()
    return samples


async def time_calls(keel: Keel, n: int) -> list[float]:
    out = []
    clock = time.perf_counter_ns
    for i in range(n):
        t = clock()
        await keel.call("f", {"text": TEXT}, user=f"u{i % 50}")
        out.append((clock() - t) / 1000)
    return out


def bench_call(tmp: Path, calls: int, rounds: int) -> dict[str, list[float]]:
    spec = spec_with(basic_feature())
    base = Settings(extra_provider_types={"scripted": "tests.conftest:ScriptedProvider"},
                    control_interval_s=0, metrics=False)
    samples: dict[str, list[float]] = {"journal off": [], "journal on": []}

    async def run() -> None:
        keels = {
            "journal off": Keel(spec, dataclasses.replace(base, database=tmp / "off.db",
                                                          journal=False)),
            "journal on": Keel(spec, dataclasses.replace(base, database=tmp / "on.db")),
        }
        for k in keels.values():
            await k.start()
            await time_calls(k, 500)  # warm up
        for _ in range(rounds):
            for name, k in keels.items():
                samples[name] += await time_calls(k, calls // rounds)
        for k in keels.values():
            await k.close()

    asyncio.run(run())
    return samples


def report(title: str, samples: dict[str, list[float]]) -> None:
    print(f"\n{title}")
    print(f"{'variant':<20} {'n':>7} {'p50 µs':>8} {'p90 µs':>8} {'p99 µs':>8}")
    for name, values in samples.items():
        print(f"{name:<20} {len(values):>7} {statistics.median(values):>8.1f} "
              f"{pct(values, 0.9):>8.1f} {pct(values, 0.99):>8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        submit = bench_submit(tmp, args.calls, args.rounds)
        report("EventWriter.submit, per call", submit)
        p50 = {k: statistics.median(v) for k, v in submit.items()}
        print(f"added by sanitize: {p50['sanitize'] - p50['plain']:.1f} µs p50; "
              f"by the journal: {p50['sanitize+journal'] - p50['sanitize']:.1f} µs p50")
        call = bench_call(tmp, args.calls // 2, args.rounds)
        report("Keel.call in-process (scripted provider), per call", call)
        diff = statistics.median(call["journal on"]) - statistics.median(call["journal off"])
        print(f"journal on - off: {diff:+.1f} µs p50")


if __name__ == "__main__":
    main()
