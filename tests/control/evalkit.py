"""What the eval-run and gate tests share: a scripted label feature whose versions answer
from tables, and small dataset versions committed through the real DatasetStore."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from keel.control.datasets import DatasetStore, DatasetVersion, Item
from keel.errors import ProviderError
from keel.gateway import Keel
from keel.providers.base import ProviderRequest
from keel.spec import KeelSpec
from keel.types import Completion, Usage
from tests.conftest import scripted, spec_with

LABELS = ["a", "b", "c"]
PRICE = {"input": 1.0, "output": 2.0}  # USD per million tokens: 10 in + 2 out = 1.4e-5


def label_spec(**overrides: Any) -> KeelSpec:
    feature: dict[str, Any] = {
        "output": {"kind": "label", "labels": LABELS},
        "versions": {"v1": {"provider": "p1", "model": "m1", "price": PRICE},
                     "v2": {"provider": "p2", "model": "m2", "price": PRICE}},
        "aliases": {"champion": "v1"},
        "retry": {"max_retries": 0},
        "validators": [{"type": "allowed_labels", "on_fail": "refuse"}],
        "policy": {"accept_at": 0.5, "refuse_below": 0.1},
        "safe_default": {"label": "unknown"},
    }
    feature.update(overrides)
    return spec_with(feature)


class Answers:
    """Makes a scripted provider answer each text from ``table``; records what it was
    asked and how many calls were in flight at most."""

    def __init__(self, keel: Keel, provider: str, table: dict[str, str | ProviderError], *,
                 delay: float = 0.0, confidence: dict[str, float] | None = None,
                 usage: Usage | None = None) -> None:
        self.table = table
        self.delay = delay
        self.confidence = confidence or {}
        self.usage = usage or Usage(10, 2)
        self.asked: list[str] = []
        self.in_flight = self.max_in_flight = 0
        scripted(keel, provider).complete = self.complete  # type: ignore[method-assign]

    async def complete(self, request: ProviderRequest) -> Completion:
        text = request.input["text"]
        self.asked.append(text)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            answer = self.table[text]
            if isinstance(answer, ProviderError):
                raise answer
            return Completion(output={"label": answer}, confidence=self.confidence.get(text, 0.9),
                              usage=Usage(self.usage.input_tokens, self.usage.output_tokens))
        finally:
            self.in_flight -= 1


def commit(keel: Keel, name: str, rows: Sequence[tuple[str, str | None]],
           split: str = "eval") -> DatasetVersion:
    items = [Item.of({"text": text}, None if label is None else {"label": label}, split=split)
             for text, label in rows]
    return DatasetStore(keel.store).commit(name, items, actor="test")


def graded(n: int, wrong: set[int], labels: list[str] = LABELS) -> tuple[
        list[tuple[str, str]], dict[str, str | ProviderError]]:
    """``n`` items t0..t{n-1} with labels cycling through ``labels``, and a table that
    answers them right except the indices in ``wrong``."""
    rows = [(f"t{i}", labels[i % len(labels)]) for i in range(n)]
    table: dict[str, str | ProviderError] = {
        text: (labels[(i + 1) % len(labels)] if i in wrong else label)
        for i, (text, label) in enumerate(rows)}
    return rows, table
