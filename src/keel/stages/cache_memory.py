"""The embedded cache backend: entries in this process's memory.

Exact entries are a dict per feature in insertion order, so the oldest go first when a
feature holds ``max_entries`` (and, the TTL being one per feature, the first to expire
are at the front too). Semantic entries are a :class:`~keel.stages.cache_index.VectorIndex`
per feature and their answers by entry id.

With ``path`` (``KEEL_CACHE_PATH``) the live entries are saved there at shutdown (one
``.npz`` file: the vectors, and the rest as JSON; no pickle) and loaded at start, minus
those expired meanwhile and those of a generation that is no longer current.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from keel.stages.cache_index import VectorIndex

if TYPE_CHECKING:
    from keel.stages.cache import CacheStage, Vector

log = logging.getLogger("keel.cache")
DIM = 384
_FORMAT = 1


class _Feature:
    __slots__ = ("answers", "exact", "generation", "index", "max_entries")

    def __init__(self, max_entries: int, ttl_s: float, generation: int, dim: int,
                 ann: bool | None) -> None:
        self.max_entries = max_entries
        self.generation = generation
        self.exact: dict[bytes, tuple[float, bytes]] = {}
        self.index = VectorIndex(dim, max_entries, ttl_s, ann)
        self.answers: dict[int, tuple[float, bytes]] = {}


class MemoryBackend:
    def __init__(self, path: Path | None = None, dim: int = DIM, ann: bool | None = None) -> None:
        """``ann``: HNSW graphs for large partitions (default: when voyager is installed)."""
        self.path = path
        self.dim = dim
        self.ann = ann
        self._features: dict[str, _Feature] = {}
        self._ids = itertools.count(1)
        self._stage: CacheStage | None = None

    def _feature(self, name: str) -> _Feature:
        feature = self._features.get(name)
        if feature is None:
            stage = self._stage
            cache = stage.features.get(name) if stage is not None else None
            spec = cache.spec if cache is not None else None
            ttl = spec.semantic.ttl_s if spec is not None and spec.semantic is not None else 3600.0
            feature = _Feature(spec.max_entries if spec is not None else 100_000, ttl,
                               stage.generation(name) if stage is not None else 0, self.dim,
                               self.ann)
            self._features[name] = feature
        return feature

    async def start(self, stage: CacheStage) -> None:
        self._stage = stage
        if self.path is not None and self.path.is_file():
            try:
                loaded = await asyncio.to_thread(self._load, self.path)
            except (OSError, ValueError, KeyError) as exc:
                log.warning("cache snapshot %s not loaded: %s", self.path, exc)
            else:
                log.info("cache snapshot %s: %d entries loaded", self.path, loaded)

    async def ready(self) -> None:
        pass  # the snapshot is loaded by start()

    async def get(self, feature: str, key: bytes) -> bytes | None:
        f = self._features.get(feature)
        if f is None:
            return None
        item = f.exact.get(key)
        if item is None:
            return None
        if item[0] <= time.time():
            del f.exact[key]
            return None
        return item[1]

    async def put(self, feature: str, key: bytes, data: bytes, ttl_s: float) -> None:
        self._put(self._feature(feature), key, data, time.time() + ttl_s, time.time())

    def _put(self, f: _Feature, key: bytes, data: bytes, expires: float, now: float) -> None:
        exact = f.exact
        exact.pop(key, None)  # a refreshed entry moves to the back
        exact[key] = (expires, data)
        while exact:
            first = next(iter(exact))
            if len(exact) <= f.max_entries and exact[first][0] > now:
                break
            del exact[first]

    async def nearest(self, feature: str, partition: bytes, vector: Vector,
                      threshold: float) -> tuple[bytes, float] | None:
        f = self._features.get(feature)
        if f is None:
            return None
        match = f.index.search(partition, vector, threshold, time.time())
        if match is None:
            return None
        return f.answers[match.entry_id][1], match.similarity

    async def add(self, feature: str, partition: bytes, vector: Vector, data: bytes,
                  ttl_s: float) -> None:
        now = time.time()
        self._add(self._feature(feature), partition, next(self._ids), vector, now + ttl_s,
                  data, now)

    def _add(self, f: _Feature, partition: bytes, entry_id: int, vector: Vector,
             expires: float, data: bytes, now: float) -> None:
        f.answers[entry_id] = (expires, data)
        for gone in f.index.add(partition, entry_id, vector, expires, now):
            f.answers.pop(gone, None)

    def invalidate(self, feature: str, generation: int) -> None:
        f = self._features.pop(feature, None)
        if f is not None:
            f.index.clear()

    def sizes(self, feature: str) -> tuple[int, int]:
        f = self._features.get(feature)
        return (0, 0) if f is None else (len(f.exact), len(f.index))

    async def close(self) -> None:
        if self.path is not None and self._features:
            try:
                saved = await asyncio.to_thread(self._save, self.path)
            except OSError as exc:
                log.warning("cache snapshot %s not saved: %s", self.path, exc)
            else:
                log.info("cache snapshot %s: %d entries saved", self.path, saved)
        self._features.clear()

    # --- snapshots ------------------------------------------------------------------

    def _save(self, path: Path) -> int:
        now = time.time()
        meta: dict[str, Any] = {"format": _FORMAT, "saved": now, "features": {}}
        arrays: dict[str, Any] = {}
        count = 0
        for i, (name, f) in enumerate(self._features.items()):
            exact = [[k.hex(), e, d.decode()] for k, (e, d) in f.exact.items() if e > now]
            semantic, vectors = [], []
            for partition, entry_id, expires, vector in f.index.entries(now):
                semantic.append([partition.hex(), expires, f.answers[entry_id][1].decode()])
                vectors.append(vector)
            meta["features"][name] = {"generation": f.generation, "exact": exact,
                                      "semantic": semantic, "vectors": f"v{i}"}
            arrays[f"v{i}"] = (np.stack(vectors) if vectors
                               else np.empty((0, self.dim), dtype=np.float32))
            count += len(exact) + len(semantic)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, meta=np.frombuffer(orjson.dumps(meta), dtype=np.uint8), **arrays)
        tmp.replace(path)
        return count

    def _load(self, path: Path) -> int:
        now = time.time()
        with np.load(path, allow_pickle=False) as npz:
            meta = orjson.loads(npz["meta"].tobytes())
            if meta.get("format") != _FORMAT:
                raise ValueError(f"unknown snapshot format {meta.get('format')!r}")
            count = 0
            stage = self._stage
            for name, saved in meta["features"].items():
                if stage is None or name not in stage.features:
                    continue
                if saved["generation"] != stage.generation(name):
                    continue  # promoted since: these answers are not served any more
                f = self._feature(name)
                for key, expires, data in saved["exact"]:
                    if expires > now:
                        self._put(f, bytes.fromhex(key), data.encode(), expires, now)
                        count += 1
                vectors = np.asarray(npz[saved["vectors"]], dtype=np.float32)
                groups: dict[str, list[int]] = {}  # partition -> rows, oldest first
                for row, (partition, expires, _) in enumerate(saved["semantic"]):
                    if expires > now:
                        groups.setdefault(partition, []).append(row)
                for partition, rows in groups.items():  # a batch per partition: all cores
                    ids = [next(self._ids) for _ in rows]
                    expiries = [saved["semantic"][r][1] for r in rows]
                    for entry_id, r, expires in zip(ids, rows, expiries, strict=True):
                        f.answers[entry_id] = (expires, saved["semantic"][r][2].encode())
                    for gone in f.index.add_many(bytes.fromhex(partition), ids, vectors[rows],
                                                 expiries, now):
                        f.answers.pop(gone, None)
                    count += len(rows)
        return count
