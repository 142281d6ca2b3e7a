"""The ``local`` provider: Keel's embedded default model, offline, CPU only, no torch.

It classifies: the call's text is embedded with all-MiniLM-L6-v2 (int8 ONNX) and scored
against the feature's labels, zero-shot from label names and descriptions or with a
trained logistic head. The top class probability is the call's confidence.

Provider options (``providers.<name>.options`` in keel.yaml): ``threads`` (onnxruntime
intra-op threads, default 1), ``workers`` (batches in flight, default 2), ``max_batch``
(default 32). Version params: ``text_field`` (default ``text``), ``head`` (path to a
``.npz`` head; keel.yaml resolves relative paths from its own folder), ``temperature``
(zero-shot softmax temperature), ``label_template`` (zero-shot phrasing of labels
without a description, e.g. ``"banking help: {name}"``), ``threads``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from keel.errors import ConfigError, ProviderRejected
from keel.providers.base import ProviderRequest
from keel.providers.local.classifier import (
    DEFAULT_TEMPERATURE,
    NAME_TEMPLATE,
    Classifier,
    LogisticHead,
    ZeroShotClassifier,
)
from keel.providers.local.embedder import (
    BatchingEmbedder,
    EmbedderSettings,
    ModelFilesMissing,
    load_encoder,
)
from keel.spec import ProviderSpec
from keel.types import Completion, Delta, Embeddings, Usage


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return value


def _valid_template(template: Any) -> bool:
    if not isinstance(template, str) or "{name}" not in template:
        return False
    try:
        template.format(name="x")
    except (KeyError, IndexError, ValueError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class _VersionConfig:
    """What one (feature, version) classifies with; also the cache key of its classifier."""

    labels: tuple[str, ...]
    descriptions: tuple[tuple[str, str], ...]
    head: Path | None
    temperature: float
    label_template: str
    threads: int
    text_field: str

    @classmethod
    def of(cls, request: ProviderRequest, default_threads: int) -> _VersionConfig:
        where = f"local provider, feature '{request.feature}' version '{request.version}'"
        p = request.params
        try:
            temperature = p.get("temperature", DEFAULT_TEMPERATURE)
            if (
                isinstance(temperature, bool)
                or not isinstance(temperature, int | float)
                or temperature <= 0
            ):
                raise ValueError(f"params.temperature must be a number > 0, got {temperature!r}")
            template = p.get("label_template", NAME_TEMPLATE)
            if not _valid_template(template):
                raise ValueError(
                    "params.label_template must be a string using {name} (and no other "
                    f"placeholder), got {template!r}"
                )
            head = p.get("head")
            if head is not None and not isinstance(head, str):
                raise ValueError(f"params.head must be a path string, got {head!r}")
            text_field = p.get("text_field", "text")
            if not isinstance(text_field, str):
                raise ValueError(f"params.text_field must be a string, got {text_field!r}")
            threads = _positive_int(p.get("threads", default_threads), "params.threads")
        except ValueError as exc:
            raise ProviderRejected(f"{where}: {exc}") from None
        if head is None and not request.labels:
            raise ProviderRejected(f"{where}: no labels to classify into (set output.labels)")
        return cls(
            labels=tuple(request.labels or ()),
            descriptions=tuple(sorted((request.label_descriptions or {}).items())),
            head=Path(head) if head is not None else None,
            temperature=float(temperature),
            label_template=template,
            threads=threads,
            text_field=text_field,
        )


class LocalProvider:
    """Implements :class:`~keel.providers.base.Provider` with the embedded model."""

    def __init__(self, name: str, spec: ProviderSpec) -> None:
        self.name = name
        options = dict(spec.options)
        unknown = set(options) - {"threads", "workers", "max_batch"}
        try:
            if unknown:
                raise ValueError(
                    f"unknown option(s) {', '.join(sorted(unknown))} "
                    "(known: threads, workers, max_batch)"
                )
            defaults = EmbedderSettings()
            self.settings = EmbedderSettings(
                threads=_positive_int(options.get("threads", defaults.threads), "threads"),
                workers=_positive_int(options.get("workers", defaults.workers), "workers"),
                max_batch=_positive_int(options.get("max_batch", defaults.max_batch), "max_batch"),
            )
        except ValueError as exc:
            raise ConfigError(f"providers.{name}.options: {exc}") from None
        self._embedders: dict[int, BatchingEmbedder] = {}
        self._classifiers: dict[tuple[str, str], tuple[_VersionConfig, Classifier]] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def start(self) -> None:
        try:
            await self._embedder(self.settings.threads)
        except ProviderRejected as exc:  # at start a missing model is an install problem
            raise ConfigError(f"providers.{self.name}: {exc.message}") from None

    async def prepare(self, request: ProviderRequest) -> None:
        if request.output_kind == "embedding":
            return  # the embedder was loaded by start()
        await self._classifier(request, _VersionConfig.of(request, self.settings.threads))

    async def embed(self, request: ProviderRequest, texts: list[str]) -> Embeddings:
        """all-MiniLM-L6-v2 sentence embeddings (384-d, unit length), batched with
        whatever else is in flight."""
        threads = request.params.get("threads", self.settings.threads)
        embedder = await self._embedder(threads if isinstance(threads, int) else self.settings.threads)
        results = await asyncio.gather(*(embedder.embed_counted(t) for t in texts))
        return Embeddings(
            vectors=[vector.tolist() for vector, _ in results],
            usage=Usage(input_tokens=sum(tokens for _, tokens in results)),
            model=request.model,
        )

    async def stream(self, request: ProviderRequest) -> AsyncIterator[Delta]:
        raise ProviderRejected(
            f"the local provider classifies and embeds; it does not generate text, so feature "
            f"'{request.feature}' cannot stream from it: route it to an LLM provider")
        yield Delta()  # pragma: no cover - makes this an async generator

    async def complete(self, request: ProviderRequest) -> Completion:
        if request.output_kind != "label":
            raise ProviderRejected(
                f"the local provider only classifies (output kind 'label'); feature "
                f"'{request.feature}' asks for '{request.output_kind}': route it to an LLM provider"
            )
        # a version is immutable: once prepared, its config and classifier are reused as is
        cached = self._classifiers.get((request.feature, request.version))
        if cached is not None:
            config, classifier = cached
        else:
            config = _VersionConfig.of(request, self.settings.threads)
            classifier = await self._classifier(request, config)
        text = request.input.get(config.text_field)
        if not isinstance(text, str):
            raise ProviderRejected(
                f"local provider: input field '{config.text_field}' must be a string "
                f"(got {type(text).__name__}); set params.text_field to the field to classify"
            )
        embedder = await self._embedder(config.threads)
        vector, tokens = await embedder.embed_counted(text)
        probs = classifier.predict_proba(vector[None, :])[0]
        best = int(np.argmax(probs))
        return Completion(
            output={"label": classifier.labels[best]},
            confidence=min(1.0, max(0.0, float(probs[best]))),
            usage=Usage(input_tokens=tokens, output_tokens=0),
            model=request.model,
        )

    async def close(self) -> None:
        embedders = list(self._embedders.values())
        self._embedders.clear()
        self._classifiers.clear()
        for embedder in embedders:
            await embedder.aclose()

    async def _embedder(self, threads: int) -> BatchingEmbedder:
        embedder = self._embedders.get(threads)
        if embedder is None:
            try:  # loading reads ~23 MB and builds the session: keep it off the loop
                encoder = await asyncio.to_thread(load_encoder, threads, self.settings.max_tokens)
            except ModelFilesMissing as exc:
                raise ProviderRejected(f"local provider: {exc}") from None
            embedder = self._embedders.get(threads)  # another call may have made it meanwhile
            if embedder is None:
                embedder = BatchingEmbedder(encoder, self.settings.max_batch, self.settings.workers)
                self._embedders[threads] = embedder
        return embedder

    async def _classifier(self, request: ProviderRequest, config: _VersionConfig) -> Classifier:
        key = (request.feature, request.version)
        cached = self._classifiers.get(key)
        if cached is not None and cached[0] == config:
            return cached[1]
        async with self._locks.setdefault(key, asyncio.Lock()):
            cached = self._classifiers.get(key)
            if cached is not None and cached[0] == config:
                return cached[1]
            classifier = await self._build(request, config)
            self._classifiers[key] = (config, classifier)
            return classifier

    async def _build(self, request: ProviderRequest, config: _VersionConfig) -> Classifier:
        where = f"local provider, feature '{request.feature}' version '{request.version}'"
        if config.head is not None:
            try:
                head = await asyncio.to_thread(LogisticHead.load, config.head)
            except FileNotFoundError:
                raise ProviderRejected(
                    f"{where}: params.head: file not found: {config.head}; train one with "
                    "LogisticHead.fit(...).save(path)"
                ) from None
            except ValueError as exc:
                raise ProviderRejected(f"{where}: params.head: {exc}") from None
            extra = set(head.labels) - set(config.labels) if config.labels else set()
            if extra:
                raise ProviderRejected(
                    f"{where}: params.head {config.head} predicts labels the feature does not "
                    f"have: {', '.join(sorted(extra))}"
                )
            return head
        encoder = (await self._embedder(config.threads)).encoder
        return await asyncio.to_thread(
            ZeroShotClassifier.build,
            list(config.labels),
            encoder,
            dict(config.descriptions),
            config.temperature,
            config.label_template,
        )
