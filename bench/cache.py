"""Cache lookup speed at 1k / 10k / 100k entries, exact and semantic, side by side (issue #9).

The goal: a lookup's p50 at most 1 ms at 100k entries, not counting the embedding. Each
cell times the cache stage's real lookup (``CacheStage.lookup``: key digest, backend,
index search, the cached answer decoded into an Outcome) for queries that hit and queries
that miss, with the embedding replaced by a table of precomputed vectors:

  exact                 in-process memory backend
  semantic (HNSW)       memory backend, vectors in voyager graphs (the `cache` extra)
  semantic (numpy)      memory backend without voyager: exhaustive numpy search
  exact (Redis)         Redis backend: one GET
  semantic (Redis)      Redis backend: XREAD of new log entries, local HNSW mirror, one GET

Vectors are synthetic: 384-d unit vectors in clusters (an item's cosine to its cluster's
centre ~0.64, to another item of its cluster ~0.4, like sentence embeddings of one
topic); a hit query is an entry moved to cosine 0.97 of it (threshold 0.95), a miss query
a fresh item. Every entry is in one partition (one tenant, one version): the worst case
for the index. The Redis mirror is filled the way a starting process fills it: by
reading the log that other processes wrote (its load time is printed too).

    .venv/bin/python bench/cache.py                 # ~5 min on 2 CPUs
    .venv/bin/python bench/cache.py --quick         # 1k and 10k only
    .venv/bin/python bench/cache.py --no-redis      # memory backends only

Redis: KEEL_BENCH_REDIS_URL (default redis://127.0.0.1:6379/0); its keys are removed.
Results: bench/results/cache.json and cache.md (git-ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from harness import background_load, machine_busy_seconds, percentile

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

from keel.feature import Feature  # noqa: E402
from keel.providers import build_provider  # noqa: E402
from keel.spec import parse_spec  # noqa: E402
from keel.stages.cache import CacheStage, Lookup, encode  # noqa: E402
from keel.stages.cache_index import ann_available  # noqa: E402
from keel.stages.cache_memory import MemoryBackend  # noqa: E402
from keel.stages.circuit import Circuits  # noqa: E402
from keel.types import Call, Decision, Outcome, Usage  # noqa: E402

DIM = 384
THRESHOLD = 0.95
GOAL_MS = 1.0
SPEC = {
    "providers": {"up": {"type": "openai", "base_url": "http://127.0.0.1:9/v1"}},
    "features": {
        name: {"output": {"kind": "label", "labels": ["a", "b"]},
               "versions": {"v1": {"provider": "up", "model": "m"}},
               "aliases": {"champion": "v1"}, "cache": cache}
        for name, cache in (
            ("exact", {"exact": {"ttl_s": 86400}, "max_entries": 200_000}),
            ("semantic", {"semantic": {"threshold": THRESHOLD, "ttl_s": 86400},
                          "max_entries": 200_000}))},
}


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def clustered(rng: np.random.Generator, n: int, centres: np.ndarray) -> np.ndarray:
    noise = unit(rng.standard_normal((n, DIM)).astype(np.float32))
    return unit(centres[rng.integers(0, len(centres), n)] + 1.2 * noise)


def near(rng: np.random.Generator, v: np.ndarray, cos: float) -> np.ndarray:
    other = unit(rng.standard_normal(v.shape).astype(np.float32))
    other = unit(other - np.sum(other * v, axis=-1, keepdims=True) * v)
    return unit(cos * v + np.sqrt(1 - cos**2) * other)


class Table:
    """Vectors for texts: the embedding, precomputed (the bench does not time the model)."""

    def __init__(self) -> None:
        self.vectors: dict[str, np.ndarray] = {}

    async def embed(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.vectors[t] for t in texts])


def make_stage(backend: Any, table: Table) -> tuple[CacheStage, dict[str, Feature]]:
    spec = parse_spec(SPEC)
    providers = {"up": build_provider("up", spec.providers["up"], {})}
    features = {name: Feature(name, f, spec, providers, Circuits())
                for name, f in spec.features.items()}
    return CacheStage(features, backend, table.embed), features


def call(feature: str, text: str, i: int) -> Call:
    c = Call(feature, {"text": text}, f"{i:032x}", key="bench-key")
    c.routed = "v1"
    return c


def answer(feature: str, i: int) -> Outcome:
    return Outcome(trace_id=f"{i:032x}", feature=feature, version="v1", output={"label": "a"},
                   decision=Decision.ACCEPTED, confidence=0.9, timings_ms={}, cost_usd=2e-5,
                   usage=Usage(120, 3), attempts=[], validations=[])


async def fill_exact(stage: CacheStage, features: dict[str, Feature], n: int) -> None:
    feature = features["exact"]
    for i in range(n):
        lookup = await stage.lookup(feature, call("exact", f"exact text {i}", i), None, {})
        assert lookup is not None and lookup.hit is None
        await lookup.save(answer("exact", i))


async def partition_of(stage: CacheStage, features: dict[str, Feature], table: Table) -> bytes:
    table.vectors["probe"] = unit(np.ones(DIM, dtype=np.float32))
    lookup = await stage.lookup(features["semantic"], call("semantic", "probe", 0), None, {})
    assert lookup is not None and lookup.partition is not None
    return lookup.partition


async def time_lookups(stage: CacheStage, feature: Feature, texts: list[str],
                       expect: str) -> dict[str, Any]:
    times: list[float] = []
    right = 0
    for i, text in enumerate(texts):
        c = call(feature.name, text, i)
        t0 = time.perf_counter()
        lookup = await stage.lookup(feature, c, None, {})
        times.append((time.perf_counter() - t0) * 1000)
        assert isinstance(lookup, Lookup)
        right += lookup.status == expect
    times.sort()
    return {"p50_ms": percentile(times, 0.5), "p95_ms": percentile(times, 0.95),
            "n": len(times), "as_expected": right / len(texts)}


async def measure(name: str, stage: CacheStage, features: dict[str, Feature],
                  kind: str, hits: list[str], misses: list[str]) -> dict[str, Any]:
    feature = features[kind]
    expect = "hit-exact" if kind == "exact" else "hit-semantic"
    for text in hits[:50] + misses[:50]:  # warm up
        await stage.lookup(feature, call(kind, text, 0), None, {})
    hit = await time_lookups(stage, feature, hits, expect)
    miss = await time_lookups(stage, feature, misses, "miss")
    print(f"  {name:<18} hit p50 {hit['p50_ms']:.3f} ms  p95 {hit['p95_ms']:.3f} ms  "
          f"(found {hit['as_expected']:.1%})   miss p50 {miss['p50_ms']:.3f} ms  "
          f"p95 {miss['p95_ms']:.3f} ms", flush=True)
    return {"hit": hit, "miss": miss}


async def run_size(n: int, args: argparse.Namespace, rng: np.random.Generator,
                   centres: np.ndarray) -> dict[str, Any]:
    print(f"{n:,} entries", flush=True)
    out: dict[str, Any] = {}
    vectors = clustered(rng, n, centres)
    q = args.queries
    picks = rng.choice(n, q, replace=False)
    table = Table()
    hit_texts = [f"near {i}" for i in range(q)]
    miss_texts = [f"new {i}" for i in range(q)]
    for t, v in zip(hit_texts, near(rng, vectors[picks], 0.97), strict=True):
        table.vectors[t] = v
    for t, v in zip(miss_texts, clustered(rng, q, centres), strict=True):
        table.vectors[t] = v
    exact_hits = [f"exact text {i}" for i in picks.tolist()]
    exact_misses = [f"exact other {i}" for i in range(q)]
    data = encode(answer("semantic", 0))

    for label, ann in (("semantic (HNSW)", True), ("semantic (numpy)", False)):
        if ann and not ann_available():
            print("  voyager is not installed (pip install keel[cache]): no HNSW row")
            continue
        backend = MemoryBackend(dim=DIM, ann=ann)
        stage, features = make_stage(backend, table)
        await stage.start()
        partition = await partition_of(stage, features, table)
        t0 = time.perf_counter()
        for v in vectors:
            await backend.add("semantic", partition, v, data, 86400)
        fill = time.perf_counter() - t0
        many = ann or n <= 10_000
        result = await measure(label, stage, features, "semantic",
                               hit_texts if many else hit_texts[:200],
                               miss_texts if many else miss_texts[:200])
        out[label] = {**result, "fill_s": fill}
        if ann:  # the exact cache on the same kind of backend
            await fill_exact(stage, features, n)
            out["exact"] = await measure("exact", stage, features, "exact",
                                         exact_hits, exact_misses)
        await stage.close()

    if args.redis:
        out.update(await redis_rows(n, args, table, vectors, data, hit_texts, miss_texts,
                                    exact_hits, exact_misses))
    return out


async def redis_rows(n: int, args: argparse.Namespace, table: Table, vectors: np.ndarray,
                     data: bytes, hit_texts: list[str], miss_texts: list[str],
                     exact_hits: list[str], exact_misses: list[str]) -> dict[str, Any]:
    import redis.asyncio

    from keel.stages.cache_redis import RedisBackend

    prefix = f"keel-bench:{uuid.uuid4().hex[:8]}:"
    out: dict[str, Any] = {}
    writer = RedisBackend(args.redis_url, prefix)
    stage, features = make_stage(writer, table)
    await stage.start()
    try:
        await fill_exact(stage, features, n)
        out["exact (Redis)"] = await measure("exact (Redis)", stage, features, "exact",
                                             exact_hits, exact_misses)
        # the semantic log as other processes would have written it, in pipelined batches
        partition = await partition_of(stage, features, table)
        r = writer.redis
        log = writer._key("log", "semantic")
        expires = repr(time.time() + 86400)
        for start in range(0, n, 1000):
            pipe = r.pipeline(transaction=False)
            for i in range(start, min(n, start + 1000)):
                pipe.set(writer._key("s", "semantic", f"{i + 1:x}"), data, px=86_400_000)
                pipe.xadd(log, {"k": str(i + 1), "p": partition, "g": "0", "e": expires,
                                "v": vectors[i].tobytes()})
            await pipe.execute()
        reader = RedisBackend(args.redis_url, prefix)
        stage2, features2 = make_stage(reader, table)
        t0 = time.perf_counter()
        await stage2.start()  # reads the log and builds its mirror, in the background
        await stage2.ready()
        load = time.perf_counter() - t0
        print(f"  semantic (Redis) mirror of {n:,} entries loaded from the log in {load:.1f} s",
              flush=True)
        out["semantic (Redis)"] = {
            **await measure("semantic (Redis)", stage2, features2, "semantic", hit_texts,
                            miss_texts), "load_s": load}
        await stage2.close()
    finally:
        client = redis.asyncio.Redis.from_url(args.redis_url)
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=10_000)]
        for i in range(0, len(keys), 10_000):
            await client.delete(*keys[i:i + 10_000])
        await client.aclose()
        await stage.close()
    return out


def markdown(results: dict[str, Any]) -> str:
    sizes = list(results["sizes"])
    rows = ["exact", "semantic (HNSW)", "semantic (numpy)", "exact (Redis)", "semantic (Redis)"]
    lines = []
    for which in ("hit", "miss"):
        lines.append(f"\nLookups that {which} (p50 / p95 ms):\n")
        lines.append("| backend | " + " | ".join(f"{int(s):,} entries" for s in sizes) + " |")
        lines.append("|---|" + "---:|" * len(sizes))
        for row in rows:
            cells = []
            for s in sizes:
                cell = results["sizes"][s].get(row)
                cells.append("–" if cell is None else
                             f"{cell[which]['p50_ms']:.3f} / {cell[which]['p95_ms']:.3f}")
            if any(c != "–" for c in cells):
                lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--queries", type=int, default=1000, help="per cell, hits and misses each")
    parser.add_argument("--quick", action="store_true", help="1k and 10k entries only")
    parser.add_argument("--no-redis", dest="redis", action="store_false")
    parser.add_argument("--redis-url", default=os.environ.get("KEEL_BENCH_REDIS_URL",
                                                              "redis://127.0.0.1:6379/0"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = [1000, 10_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    rng = np.random.default_rng(args.seed)
    centres = unit(rng.standard_normal((2000, DIM)).astype(np.float32))
    load = background_load()
    print(f"other processes use {load:.2f} CPUs at the start", flush=True)
    busy0, t0 = machine_busy_seconds(), time.monotonic()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    results: dict[str, Any] = {"goal_ms": GOAL_MS, "threshold": THRESHOLD,
                               "background_cpus_at_start": load, "sizes": {}}

    async def go() -> None:
        for n in sizes:
            results["sizes"][str(n)] = await run_size(n, args, rng, centres)

    asyncio.run(go())
    wall = time.monotonic() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    own = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    results["machine_busy_cpus"] = (machine_busy_seconds() - busy0) / wall
    results["other_processes_cpus"] = max(0.0, machine_busy_seconds() - busy0 - own) / wall
    table = markdown(results)
    print(table)
    largest = results["sizes"][str(max(sizes))]
    verdicts: list[str] = []
    check: Callable[[str], None] = lambda row: verdicts.append(  # noqa: E731
        f"{row}: p50 {largest[row]['hit']['p50_ms']:.3f} ms hit / "
        f"{largest[row]['miss']['p50_ms']:.3f} ms miss at {max(sizes):,} entries: "
        + ("met" if max(largest[row]['hit']['p50_ms'], largest[row]['miss']['p50_ms'])
           <= GOAL_MS else "NOT met") + f" (goal p50 <= {GOAL_MS} ms)")
    for row in ("exact", "semantic (HNSW)", "exact (Redis)", "semantic (Redis)"):
        if row in largest:
            check(row)
    print("\n".join(verdicts))
    print(f"the whole machine was {results['machine_busy_cpus']:.2f} CPUs busy during the run, "
          f"other processes (Redis included) "
          f"{results['other_processes_cpus']:.2f}")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "cache.json").write_text(json.dumps(results, indent=2))
    (out / "cache.md").write_text(table + "\n\n" + "\n".join(verdicts) + "\n")


if __name__ == "__main__":
    main()
