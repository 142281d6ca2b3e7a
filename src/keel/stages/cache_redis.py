"""The shared cache backend: entries in Redis (``KEEL_REDIS_URL``), for several Keel
processes. ``redis`` (the ``scale`` extra) is imported only when this backend is used.

Keys, under the prefix (``KEEL_CACHE_PREFIX``, default ``keel:cache:``):

=============================  ==========================================================
``x:<feature>:<digest>``       an exact entry: the encoded answer, expiring with its TTL
``s:<feature>:<id>``           a semantic entry's answer, expiring with its TTL
``log:<feature>``              a stream of the semantic entries: id, partition, generation,
                               expiry and vector (float32); capped at ``max_entries``
=============================  ==========================================================

Redis has no vector search here (plain Redis, no modules), so each process keeps a
*mirror* of the semantic entries in a local :class:`~keel.stages.cache_index.VectorIndex`.
At start the log is read and the mirror built in a worker thread, in the background: the
process serves meanwhile (its semantic lookups miss until the mirror is in). A lookup
searches the mirror; when nothing there is close enough it catches up with one
non-blocking ``XREAD`` (what other processes saved since) and searches again. The answer
of a match is read with one ``GET`` (an answer gone from Redis is a miss, and its entry
is dropped from the mirror). So a lookup is one round trip to Redis, hit or miss.

Entries of a generation older than the feature's current one are skipped; newer ones
(written by a process that saw a promotion first) wait in the mirror until this process
sees it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from keel.stages.cache_index import VectorIndex

if TYPE_CHECKING:
    from keel.stages.cache import CacheStage, Vector

DIM = 384
_BATCH = 5000  # stream entries read per round trip
_Entry = tuple[int, bytes, int, "Vector", float]  # generation, partition, id, vector, expires


class RedisBackend:
    def __init__(self, url: str, prefix: str = "keel:cache:", dim: int = DIM) -> None:
        self.url = url
        self.prefix = prefix
        self.dim = dim
        self._redis: Any = None
        self._stage: CacheStage | None = None
        self._mirrors: dict[str, dict[int, VectorIndex]] = {}
        self._cursors: dict[str, bytes] = {}
        self._loading: dict[str, asyncio.Task[None]] = {}
        self._rng = random.Random()

    def _key(self, kind: str, feature: str, tail: str = "") -> str:
        return f"{self.prefix}{kind}:{feature}{':' + tail if tail else ''}"

    @property
    def redis(self) -> Any:
        if self._redis is None:
            import redis.asyncio  # the scale extra: only when Redis is configured

            self._redis = redis.asyncio.Redis.from_url(self.url)
        return self._redis

    async def start(self, stage: CacheStage) -> None:
        self._stage = stage
        loop = asyncio.get_running_loop()
        for name, cache in stage.features.items():
            if cache.spec.semantic is not None:
                self._cursors[name] = b"0-0"
                self._loading[name] = loop.create_task(self._load(name))

    async def ready(self) -> None:
        """Wait for the mirrors being built at start (tests; a readiness probe)."""
        if self._loading:
            await asyncio.gather(*self._loading.values(), return_exceptions=True)

    # --- exact ----------------------------------------------------------------------

    async def get(self, feature: str, key: bytes) -> bytes | None:
        data = await self.redis.get(self._key("x", feature, key.hex()))
        return bytes(data) if data is not None else None

    async def put(self, feature: str, key: bytes, data: bytes, ttl_s: float) -> None:
        await self.redis.set(self._key("x", feature, key.hex()), data, px=max(1, int(ttl_s * 1000)))

    # --- semantic -------------------------------------------------------------------

    def _generation(self, feature: str) -> int:
        return self._stage.generation(feature) if self._stage is not None else 0

    def _new_index(self, feature: str) -> VectorIndex:
        cache = self._stage.features.get(feature) if self._stage is not None else None
        spec = cache.spec if cache is not None else None
        ttl = spec.semantic.ttl_s if spec is not None and spec.semantic is not None else 3600.0
        return VectorIndex(self.dim, spec.max_entries if spec is not None else 100_000, ttl)

    def _mirror(self, feature: str, generation: int) -> VectorIndex:
        mirrors = self._mirrors.setdefault(feature, {})
        index = mirrors.get(generation)
        if index is None:
            index = mirrors[generation] = self._new_index(feature)
        return index

    async def nearest(self, feature: str, partition: bytes, vector: Vector,
                      threshold: float) -> tuple[bytes, float] | None:
        index = self._mirror(feature, self._generation(feature))
        match = index.search(partition, vector, threshold, time.time())
        if match is None:  # what other processes saved since may match: catch up, look again
            if feature in self._loading or not await self._sync(feature):
                return None
            index = self._mirror(feature, self._generation(feature))
            match = index.search(partition, vector, threshold, time.time())
            if match is None:
                return None
        data = await self.redis.get(self._key("s", feature, f"{match.entry_id:x}"))
        if data is None:  # expired or evicted in Redis
            index.discard(match.entry_id)
            return None
        return bytes(data), match.similarity

    async def add(self, feature: str, partition: bytes, vector: Vector, data: bytes,
                  ttl_s: float) -> None:
        generation = self._generation(feature)
        index = self._mirror(feature, generation)
        entry_id = self._rng.getrandbits(63)
        now = time.time()
        expires = now + ttl_s
        ms = max(1, int(ttl_s * 1000))
        log = self._key("log", feature)
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self._key("s", feature, f"{entry_id:x}"), data, px=ms)
        pipe.xadd(log, {"k": str(entry_id), "p": partition, "g": str(generation),
                        "e": repr(expires), "v": np.asarray(vector, dtype=np.float32).tobytes()},
                  maxlen=index.max_entries, approximate=True)
        pipe.pexpire(log, 2 * ms)  # an idle feature's log goes too
        await pipe.execute()
        index.add(partition, entry_id, vector, expires, now)

    async def _read(self, feature: str, cursor: bytes) -> tuple[list[Any], bytes]:
        """Every log entry after ``cursor``, and the new cursor."""
        log = self._key("log", feature)
        entries: list[Any] = []
        while True:
            reply = await self.redis.xread({log: cursor}, count=_BATCH)
            batch = reply[0][1] if reply else []
            if batch:
                entries += batch
                cursor = batch[-1][0]
            if len(batch) < _BATCH:
                return entries, cursor

    def _parse(self, entries: Iterable[Any], current: int, now: float) -> list[_Entry]:
        out: list[_Entry] = []
        for _, fields in entries:
            generation, expires = int(fields[b"g"]), float(fields[b"e"])
            if generation < current or expires <= now:
                continue
            vector = np.frombuffer(fields[b"v"], dtype=np.float32)
            if vector.shape == (self.dim,):
                out.append((generation, bytes(fields[b"p"]), int(fields[b"k"]), vector, expires))
        return out

    async def _sync(self, feature: str) -> int:
        """Index the log's entries this process has not seen yet; how many."""
        entries, self._cursors[feature] = await self._read(
            feature, self._cursors.get(feature, b"0-0"))
        now = time.time()
        added = 0
        for generation, partition, entry_id, vector, expires in self._parse(
                entries, self._generation(feature), now):
            index = self._mirror(feature, generation)
            if entry_id not in index:  # this process's own entries are indexed already
                index.add(partition, entry_id, vector, expires, now)
                added += 1
        return added

    async def _load(self, feature: str) -> None:
        """The mirror at start: the whole log, indexed in a worker thread, then swapped in
        (entries this process saves meanwhile are in the log: a later catch-up has them)."""
        try:
            entries, cursor = await self._read(feature, b"0-0")
            mirrors = await asyncio.to_thread(self._build, feature, entries,
                                              self._generation(feature))
            current = self._generation(feature)  # it may have moved during the build
            self._mirrors[feature] = {g: m for g, m in mirrors.items() if g >= current}
            self._cursors[feature] = cursor
        except Exception as exc:  # Redis down: lookups catch up from the start later
            if self._stage is not None and feature in self._stage.features:
                self._stage.failed(self._stage.features[feature], "load", exc)
        finally:
            self._loading.pop(feature, None)

    def _build(self, feature: str, entries: list[Any], current: int) -> dict[int, VectorIndex]:
        now = time.time()
        groups: dict[tuple[int, bytes], list[_Entry]] = {}
        for entry in self._parse(entries, current, now):
            groups.setdefault((entry[0], entry[1]), []).append(entry)
        mirrors: dict[int, VectorIndex] = {}
        for (generation, partition), group in groups.items():
            index = mirrors.get(generation)
            if index is None:
                index = mirrors[generation] = self._new_index(feature)
            index.add_many(partition, [e[2] for e in group], np.stack([e[3] for e in group]),
                           [e[4] for e in group], now)
        return mirrors

    def invalidate(self, feature: str, generation: int) -> None:
        mirrors = self._mirrors.get(feature, {})
        for old in [g for g in mirrors if g < generation]:
            mirrors.pop(old).clear()

    def sizes(self, feature: str) -> tuple[int, int]:
        index = self._mirrors.get(feature, {}).get(self._generation(feature))
        return -1, 0 if index is None else len(index)  # exact entries: Redis knows

    async def close(self) -> None:
        for task in list(self._loading.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        redis, self._redis = self._redis, None
        if redis is not None:
            await redis.aclose()
        self._mirrors.clear()
