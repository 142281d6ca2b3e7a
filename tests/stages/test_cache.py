"""The cache's parts on their own: request directives, normalization, the vector index
(flat and HNSW, partitions, threshold, expiry, eviction) and the memory backend with its
snapshot file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from keel.errors import ConfigError, InvalidRequest
from keel.spec import parse_spec
from keel.stages.cache import digest, directive, normalize
from keel.stages.cache_index import VectorIndex, ann_available
from keel.stages.cache_memory import MemoryBackend
from tests.conftest import basic_feature

RNG = np.random.default_rng(7)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def near(v: np.ndarray, similarity: float) -> np.ndarray:
    """A unit vector at exactly ``similarity`` cosine from unit vector ``v``."""
    other = RNG.standard_normal(v.shape).astype(np.float32)
    other -= other.dot(v) * v
    other = unit(other)
    return unit(similarity * v + np.sqrt(1 - similarity**2) * other)


@pytest.mark.parametrize(("headers", "mode"), [
    ({}, "use"),
    ({"x-keel-cache": "bypass"}, "bypass"),
    ({"x-keel-cache": " Refresh "}, "refresh"),
    ({"x-keel-cache": "use", "cache-control": "no-store"}, "use"),  # ours wins
    ({"cache-control": "no-cache"}, "refresh"),
    ({"cache-control": "max-age=0, no-store"}, "bypass"),
    ({"cache-control": "max-age=60"}, "use"),
])
def test_directive(headers: dict[str, str], mode: str) -> None:
    assert directive(headers) == mode


def test_an_unknown_directive_is_a_400() -> None:
    with pytest.raises(InvalidRequest) as info:
        directive({"x-keel-cache": "sometimes"})
    assert info.value.param == "x-keel-cache"


def test_normalize_collapses_whitespace_and_unicode_forms() -> None:
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    assert normalize({"t": f"  {decomposed}\n\tlatte  "}) == {"t": f"{composed} latte"}
    assert normalize(["A  b"], fold_case=True) == ["a b"]
    assert digest({"a": 1, "b": 2}) == digest({"b": 2, "a": 1})  # key order does not matter


def test_spec_refuses_semantic_where_there_is_no_text() -> None:
    with pytest.raises(ConfigError, match="cache needs exact and/or semantic"):
        parse_spec({"features": {"f": basic_feature(cache={})},
                    "providers": {"p1": {"type": "openai"}, "p2": {"type": "openai"}}})
    emb = basic_feature(output={"kind": "embedding"}, validators=[], policy={},
                        cache={"semantic": {"threshold": 0.9}})
    with pytest.raises(ConfigError, match="embedding feature has no text"):
        parse_spec({"features": {"f": emb},
                    "providers": {"p1": {"type": "openai"}, "p2": {"type": "openai"}}})


@pytest.mark.parametrize("ann", [False, True])
def test_index_honours_the_threshold_and_partitions(ann: bool) -> None:
    if ann and not ann_available():
        pytest.skip("voyager (the cache extra) is not installed")
    index = VectorIndex(384, max_entries=4000, ttl_s=100, ann=ann)
    base = unit(RNG.standard_normal((3000, 384)))  # two segments: 2000 + 1000
    for i, v in enumerate(base):
        index.add(b"p", i, v, expires=1e12, now=0.0)
    assert len(index) == 3000
    for i in (5, 2500):
        query = near(base[i], 0.96)
        match = index.search(b"p", query, 0.95, now=1.0)
        assert match is not None and match.entry_id == i
        assert match.similarity == pytest.approx(0.96, abs=1e-3)
        assert index.search(b"p", query, 0.97, now=1.0) is None  # below: never served
        assert index.search(b"other", query, 0.5, now=1.0) is None  # another partition


def test_index_skips_expired_and_discarded_entries() -> None:
    index = VectorIndex(4, max_entries=100, ttl_s=100, ann=False)
    v = unit(np.array([1, 0, 0, 0], dtype=np.float32))
    index.add(b"p", 1, v, expires=10.0, now=0.0)
    index.add(b"p", 2, near(v, 0.99), expires=50.0, now=0.0)
    assert index.search(b"p", v, 0.9, now=5.0).entry_id == 1  # type: ignore[union-attr]
    assert index.search(b"p", v, 0.9, now=20.0).entry_id == 2  # type: ignore[union-attr]
    index.discard(2)
    assert index.search(b"p", v, 0.9, now=20.0) is None


def test_index_drops_whole_segments_oldest_first() -> None:
    index = VectorIndex(4, max_entries=10, ttl_s=100, ann=False)
    vectors = unit(RNG.standard_normal((25, 4)))
    gone: list[int] = []
    for i, v in enumerate(vectors):
        gone += index.add(b"p", i, v, expires=1e12, now=0.0)
    assert len(index) <= 10 and gone == list(range(len(gone)))  # the oldest went
    assert 24 in index and 0 not in index
    # a segment whose entries all expired goes at the next add
    late = VectorIndex(4, max_entries=10, ttl_s=100, ann=False)
    late.add(b"p", 1, vectors[0], expires=10.0, now=0.0)
    assert late.add(b"q", 2, vectors[1], expires=500.0, now=200.0) == [1]


async def test_memory_backend_ttl_fifo_and_snapshot(tmp_path: Path) -> None:
    backend = MemoryBackend(tmp_path / "cache.npz", dim=4)
    await backend.put("f", b"k1", b"one", ttl_s=60)
    await backend.put("f", b"k2", b"two", ttl_s=0.001)
    v = unit(np.array([0, 1, 0, 0], dtype=np.float32))
    await backend.add("f", b"p", v, b"sem", ttl_s=60)
    assert await backend.get("f", b"k1") == b"one"
    assert await backend.get("f", b"nope") is None
    assert await backend.nearest("f", b"p", near(v, 0.98), 0.95) == (b"sem", pytest.approx(0.98, abs=1e-4))
    await backend.close()  # saved
    again = MemoryBackend(tmp_path / "cache.npz", dim=4)

    class Stage:  # what the backend asks of the stage at start
        def __init__(self) -> None:
            self.features = {"f": None}

        @staticmethod
        def generation(name: str) -> int:
            return 0

    await again.start(Stage())  # type: ignore[arg-type]
    assert await again.get("f", b"k1") == b"one"
    assert await again.get("f", b"k2") is None  # expired before the save
    assert (await again.nearest("f", b"p", v, 0.95))[0] == b"sem"  # type: ignore[index]
    again.invalidate("f", 1)
    assert again.sizes("f") == (0, 0)
