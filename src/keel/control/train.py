"""Training: a dataset version in, a registered version out, with its provenance.

A :class:`Trainer` builds a :class:`~keel.spec.VersionSpec` (and any files it needs) from
a dataset version's items; :func:`train_version` registers the result in the registry
with the dataset's name and digest, so every trained version says what it learnt from.

The built-in :class:`LocalHeadTrainer` fits a logistic head over the embedded model's
sentence embeddings (:class:`~keel.providers.local.classifier.LogisticHead`). Every label
of the feature also contributes its label sentence (name and description, as zero-shot
scores them) as one example, so a head trained on a few reviewed examples still knows
every label, not only the ones reviewers have seen.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from keel.control.datasets import DatasetStore, DatasetVersion, Item
from keel.control.registry import Registry, VersionRecord
from keel.errors import InvalidRequest
from keel.spec import FeatureSpec, VersionSpec
from keel.store.db import Store
from keel.types import JSON

Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class TrainContext:
    feature: str
    spec: FeatureSpec
    dataset: DatasetVersion
    items: list[Item]  # the train split
    artifacts: Path  # a folder for this version's files
    name: str  # the version being built
    progress: Progress | None = None


@dataclass(frozen=True, slots=True)
class Trained:
    spec: VersionSpec
    metrics: dict[str, JSON] = field(default_factory=dict)  # what training measured
    card: dict[str, JSON] = field(default_factory=dict)  # extra model-card entries


class Trainer(Protocol):
    name: str

    def train(self, ctx: TrainContext) -> Trained:
        """Build a version from ``ctx.items``; blocking (run it in a thread from async code)."""
        ...


def expected_label(expected: JSON) -> str | None:
    """``{"label": "x"}`` or ``"x"`` -> ``"x"``; anything else (a rejection: None) -> None."""
    if isinstance(expected, dict):
        label = expected.get("label")
        return label if isinstance(label, str) else None
    return expected if isinstance(expected, str) else None


class LocalHeadTrainer:
    name = "local-head"

    def __init__(self, c: float = 50.0, label_sentences: bool = True,
                 model: str = "all-MiniLM-L6-v2-int8") -> None:
        self.c = c
        self.label_sentences = label_sentences
        self.model = model

    def train(self, ctx: TrainContext) -> Trained:
        from keel.providers.local.classifier import LogisticHead, label_sentences
        from keel.providers.local.embedder import load_encoder

        if ctx.spec.output.kind != "label":
            raise InvalidRequest(f"the local-head trainer trains label features; "
                                 f"'{ctx.feature}' answers {ctx.spec.output.kind}")
        text_field = ctx.spec.input.text_field or "text"
        texts: list[str] = []
        labels: list[str] = []
        allowed = set(ctx.spec.output.labels or ())
        for item in ctx.items:
            label = expected_label(item.expected)
            text = item.input.get(text_field)
            if label is None or not isinstance(text, str):
                continue  # rejected answers carry no label to learn
            if allowed and label not in allowed:
                continue
            texts.append(text)
            labels.append(label)
        examples = len(texts)
        if self.label_sentences and ctx.spec.output.labels:
            texts += label_sentences(ctx.spec.output.labels, ctx.spec.output.label_descriptions)
            labels += list(ctx.spec.output.labels)
        if len(set(labels)) < 2:
            raise InvalidRequest(
                f"{ctx.dataset.dataset}@{ctx.dataset.number} has {examples} labelled training "
                "examples; training needs examples of at least two labels")
        encoder = load_encoder()
        vectors = encoder.embed_many(texts, progress=ctx.progress)
        start = time.perf_counter()
        head = LogisticHead.fit_vectors(vectors, labels, c=self.c)
        fit_s = time.perf_counter() - start
        train_acc = float(np.mean(np.array(head.labels)[head.predict_proba(vectors).argmax(1)]
                                  == np.array(labels)))
        ctx.artifacts.mkdir(parents=True, exist_ok=True)
        path = ctx.artifacts / f"{ctx.name}.npz"
        head.save(path)
        spec = VersionSpec(provider="local", model=self.model,
                           params={"head": str(path.resolve())})
        metrics: dict[str, JSON] = {"examples": examples, "label_sentences": len(texts) - examples,
                                    "labels": len(set(labels)), "train_accuracy": round(train_acc, 4),
                                    "fit_seconds": round(fit_s, 2)}
        return Trained(spec, metrics, {"training": {"trainer": self.name, "c": self.c,
                                                    **metrics}})


TRAINERS: dict[str, Callable[[], Trainer]] = {"local-head": LocalHeadTrainer}


def train_version(store: Store, feature: str, spec: FeatureSpec, dataset_ref: str,
                  artifacts: Path, *, actor: str, trainer: Trainer | None = None,
                  name: str | None = None, split: str | None = "train",
                  progress: Progress | None = None) -> tuple[VersionRecord, Trained]:
    """Train on ``dataset_ref`` ("name@N" or "name") and register the version."""
    datasets = DatasetStore(store)
    dataset = datasets.resolve(dataset_ref)
    items = datasets.items(dataset.dataset, dataset.number, split)
    if not items:
        have = ", ".join(f"{k}={v}" for k, v in sorted(dataset.splits.items())) or "none"
        raise InvalidRequest(f"{dataset.dataset}@{dataset.number} has no '{split}' items "
                             f"(splits: {have})")
    registry = Registry(store)
    trainer = trainer or LocalHeadTrainer()
    name = name or registry.next_name(feature, "trained")
    ctx = TrainContext(feature, spec, dataset, items, artifacts / feature, name, progress)
    trained = trainer.train(ctx)
    record = registry.register(
        feature, name, trained.spec, actor=actor, source=f"trainer:{trainer.name}", fspec=spec,
        dataset=f"{dataset.dataset}@{dataset.number}", dataset_digest=dataset.digest,
        card_extra={**trained.card, "data": {"dataset": dataset.dataset,
                                             "number": dataset.number, "digest": dataset.digest,
                                             "split": split, "items": len(items)}})
    return record, trained


def trainer_named(name: str) -> Trainer:
    factory = TRAINERS.get(name)
    if factory is None:
        raise InvalidRequest(f"unknown trainer {name!r} (known: {', '.join(sorted(TRAINERS))})")
    return factory()


__all__ = [
    "LocalHeadTrainer",
    "TrainContext",
    "Trained",
    "Trainer",
    "expected_label",
    "train_version",
    "trainer_named",
]
