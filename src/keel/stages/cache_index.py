"""The semantic cache's vectors: the nearest cached text of a partition, fast.

A *partition* holds the vectors that may answer for one another: the same feature,
version, generation, scope, other input fields and parameters (:mod:`keel.stages.cache`
makes its id). Its vectors live in *segments*, appended in time order, never edited:

* a segment is an HNSW graph (``voyager``, the ``cache`` extra: ~25 µs a search at
  1,000 vectors, ~0.2 ms at 100,000), or, when voyager is not installed, a numpy array
  searched exhaustively (exact, but ~15 ms at 100,000; see BENCHMARKS.md);
* a segment is closed when it holds half of ``max_entries`` or is ``ttl_s / 2`` old, and
  dropped whole when its last entry has expired, or when the feature holds more than
  ``max_entries`` (oldest segment first). An entry past its expiry is skipped where it
  stands. So nothing is ever deleted from a graph and nothing needs compacting.

Vectors are unit length (the local embedder's), so a dot product is the cosine.
Everything here is synchronous and runs on the event loop: a search is well under a
millisecond, an insert into a graph ~0.1-1 ms. (Graphs also keep BLAS off the hot path:
a numpy product this size wakes OpenBLAS's threads, which costs milliseconds on a
loaded machine.)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]
_TOP = 4  # candidates looked at per segment, so an expired nearest one hides no live one
_HNSW_M = 16
_HNSW_EF_CONSTRUCTION = 64
_HNSW_EF_SEARCH = 48


def ann_available() -> bool:
    try:
        import voyager  # noqa: F401
    except ImportError:
        return False
    return True


class _Segment:
    __slots__ = ("ann", "count", "created", "dim", "expires", "full", "ids", "last_expiry",
                 "partition", "vectors")

    def __init__(self, partition: bytes, dim: int, capacity: int, ann: bool, now: float) -> None:
        self.partition = partition
        self.dim = dim
        self.created = now
        self.full = capacity
        self.count = 0
        self.ids: list[int] = []
        self.expires: list[float] = []
        self.last_expiry = 0.0
        self.vectors: Vector | None = None
        self.ann: Any = None
        if ann:
            import voyager

            self.ann = voyager.Index(voyager.Space.InnerProduct, num_dimensions=dim,
                                     M=_HNSW_M, ef_construction=_HNSW_EF_CONSTRUCTION)
        else:
            self.vectors = np.empty((min(capacity, 64), dim), dtype=np.float32)

    def add(self, entry_ids: list[int], vectors: Vector, expires: list[float]) -> None:
        """Append entries (``vectors``: [n, dim]); at most ``full - count`` of them."""
        n = len(entry_ids)
        if self.ann is not None:
            positions = list(range(self.count, self.count + n))
            if n == 1:
                self.ann.add_item(vectors[0], id=positions[0])
            else:  # a batch is built on every core (a mirror's or a snapshot's load)
                self.ann.add_items(vectors, ids=positions, num_threads=-1)
        else:
            assert self.vectors is not None
            if self.count + n > len(self.vectors):  # grow by doubling, up to the capacity
                size = min(self.full, max(2 * len(self.vectors), self.count + n))
                grown = np.empty((size, self.dim), dtype=np.float32)
                grown[: self.count] = self.vectors[: self.count]
                self.vectors = grown
            self.vectors[self.count : self.count + n] = vectors
        self.ids += entry_ids
        self.expires += expires
        self.last_expiry = max(self.last_expiry, *expires)
        self.count += n

    def candidates(self, vector: Vector) -> Iterator[tuple[int, float]]:
        """(position, cosine) of the nearest few, nearest first."""
        if self.count == 0:
            return
        k = min(_TOP, self.count)
        if self.ann is not None:
            try:
                positions, distances = self.ann.query(vector, k=k, query_ef=_HNSW_EF_SEARCH)
            except RuntimeError:  # voyager's RecallError: fewer neighbours than asked
                return
            for pos, dist in zip(positions.tolist(), distances.tolist(), strict=True):
                yield int(pos), 1.0 - float(dist)
            return
        assert self.vectors is not None
        sims = self.vectors[: self.count] @ vector
        top = np.argpartition(-sims, k - 1)[:k] if self.count > k else np.arange(self.count)
        for pos in sorted(top.tolist(), key=lambda p: -sims[p]):
            yield int(pos), float(sims[pos])

    def all_vectors(self) -> Vector:
        if self.ann is not None:
            if self.count == 0:
                return np.empty((0, self.dim), dtype=np.float32)
            return np.asarray(self.ann.get_vectors(list(range(self.count))), dtype=np.float32)
        assert self.vectors is not None
        return self.vectors[: self.count].copy()


@dataclass(frozen=True, slots=True)
class Match:
    entry_id: int
    similarity: float
    expires: float


class VectorIndex:
    """One feature's semantic entries, by partition. ``add`` and ``drop`` return the ids
    that left the index, so the owner can free what it keeps beside them."""

    def __init__(self, dim: int, max_entries: int, ttl_s: float, ann: bool | None = None) -> None:
        self.dim = dim
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.ann = ann_available() if ann is None else ann
        self.segment_cap = max(1, max_entries // 2)
        self._partitions: dict[bytes, list[_Segment]] = {}
        self._order: deque[_Segment] = deque()  # every segment, oldest first
        self._dead: set[int] = set()
        self._known: set[int] = set()
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def __contains__(self, entry_id: int) -> bool:
        return entry_id in self._known

    def add(self, partition: bytes, entry_id: int, vector: Vector, expires: float,
            now: float) -> list[int]:
        return self.add_many(partition, [entry_id], vector[None, :], [expires], now)

    def add_many(self, partition: bytes, entry_ids: list[int], vectors: Vector,
                 expires: list[float], now: float) -> list[int]:
        """Entries of one partition, oldest first (``vectors``: [n, dim]). Ids already
        here are skipped. Returns the ids that left the index to make room."""
        keep = [i for i, entry_id in enumerate(entry_ids) if entry_id not in self._known]
        if len(keep) < len(entry_ids):
            entry_ids = [entry_ids[i] for i in keep]
            vectors, expires = vectors[keep], [expires[i] for i in keep]
        segments = self._partitions.setdefault(partition, [])
        done = 0
        while done < len(entry_ids):
            last = segments[-1] if segments else None
            if last is None or last.count >= last.full or now - last.created >= self.ttl_s / 2:
                last = _Segment(partition, self.dim, self.segment_cap, self.ann, now)
                segments.append(last)
                self._order.append(last)
            take = min(len(entry_ids) - done, last.full - last.count)
            last.add(entry_ids[done : done + take], vectors[done : done + take],
                     expires[done : done + take])
            done += take
        self._known.update(entry_ids)
        self.size += len(entry_ids)
        if not segments:
            del self._partitions[partition]
        return self._trim(now)

    def search(self, partition: bytes, vector: Vector, threshold: float,
               now: float) -> Match | None:
        """The most similar live entry at least ``threshold`` similar, or None."""
        best: Match | None = None
        for segment in self._partitions.get(partition, ()):
            if segment.last_expiry <= now:
                continue
            for pos, similarity in segment.candidates(vector):
                if similarity < threshold or (best is not None and similarity <= best.similarity):
                    break  # nearest first: the rest are less similar
                entry_id, expires = segment.ids[pos], segment.expires[pos]
                if expires > now and entry_id not in self._dead:
                    best = Match(entry_id, similarity, expires)
                    break
        return best

    def discard(self, entry_id: int) -> None:
        """An entry whose answer is gone (evicted elsewhere): never matched again."""
        if entry_id in self._known:
            self._dead.add(entry_id)

    def expire(self, now: float) -> list[int]:
        return self._trim(now)

    def clear(self) -> list[int]:
        gone = list(self._known)
        self._partitions.clear()
        self._order.clear()
        self._dead.clear()
        self._known.clear()
        self.size = 0
        return gone

    def _trim(self, now: float) -> list[int]:
        gone: list[int] = []
        order = self._order
        while order and (self.size > self.max_entries or order[0].last_expiry <= now):
            gone += self._drop(order.popleft())
        return gone

    def _drop(self, segment: _Segment) -> list[int]:
        segments = self._partitions.get(segment.partition)
        if segments is not None:
            segments.remove(segment)
            if not segments:
                del self._partitions[segment.partition]
        self.size -= segment.count
        for entry_id in segment.ids:
            self._known.discard(entry_id)
            self._dead.discard(entry_id)
        return segment.ids

    # --- snapshots (the memory backend's optional persistence) -------------------------

    def entries(self, now: float) -> Iterator[tuple[bytes, int, float, Vector]]:
        """Every live entry: (partition, id, expires, vector), oldest first."""
        for segment in self._order:
            vectors = segment.all_vectors()
            for pos, (entry_id, expires) in enumerate(zip(segment.ids, segment.expires,
                                                          strict=True)):
                if expires > now and entry_id not in self._dead:
                    yield segment.partition, entry_id, expires, vectors[pos]
