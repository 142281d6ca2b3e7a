"""Training: a dataset version in, a registered version with its provenance out, served
by a running Keel and better than zero-shot on the labels it learnt."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from keel.control.datasets import DatasetStore, Item
from keel.control.registry import Registry, file_sha256
from keel.control.train import LocalHeadTrainer, expected_label, train_version, trainer_named
from keel.errors import DatasetNotFound, InvalidRequest
from keel.gateway import Keel
from keel.settings import Settings
from keel.spec import parse_spec
from keel.store import Store
from tests.backends import store_at
from tests.conftest import SHARED_DATA

LABELS = ["card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed"]


def rows(path: Path, labels: list[str], per_label: int) -> list[tuple[str, str]]:
    seen: dict[str, int] = {}
    out = []
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            label = row["category"]
            if label in labels and seen.get(label, 0) < per_label:
                seen[label] = seen.get(label, 0) + 1
                out.append((row["text"], label))
    return out


def spec_for(labels: list[str]) -> dict[str, object]:
    return {"features": {"intent": {
        "output": {"kind": "label", "labels": labels},
        "versions": {"zero-shot": {"provider": "local", "model": "all-MiniLM-L6-v2-int8"}},
        "aliases": {"champion": "zero-shot"},
    }}}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = store_at(tmp_path / "keel.db")
    store.migrate()
    return store


def test_expected_label_reads_both_shapes() -> None:
    assert expected_label({"label": "x"}) == "x"
    assert expected_label("x") == "x"
    assert expected_label(None) is None and expected_label({"other": 1}) is None


async def test_a_trained_head_is_registered_with_provenance_and_served(
        tmp_path: Path, store: Store) -> None:
    train = rows(SHARED_DATA / "train.csv", LABELS, 20)
    test = rows(SHARED_DATA / "test.csv", LABELS, 10)
    datasets = DatasetStore(store)
    version = datasets.commit("intent-data", [Item.of({"text": t}, {"label": y}, split="train")
                                              for t, y in train], actor="test")
    spec = parse_spec(spec_for(LABELS))
    record, trained = train_version(store, "intent", spec.features["intent"], "intent-data@1",
                                    tmp_path / "artifacts", actor="test")
    assert record.name == "trained-1" and record.source == "trainer:local-head"
    assert record.dataset == "intent-data@1" and record.dataset_digest == version.digest
    assert record.artifact_path is not None and record.artifact_sha256 == file_sha256(record.artifact_path)
    assert trained.metrics["examples"] == len(train)
    assert trained.metrics["label_sentences"] == len(LABELS)
    assert record.card["training"]["trainer"] == "local-head"  # type: ignore[index]

    settings = Settings(database=tmp_path / "keel.db", control_interval_s=0)
    async with Keel(spec, settings) as keel:
        assert "trained-1" in keel.features["intent"].targets  # loaded from the registry
        right = {"zero-shot": 0, "trained-1": 0}
        for text, label in test:
            for v in right:
                out = await keel.call("intent", {"text": text}, pin=v)
                right[v] += out.output == {"label": label}  # type: ignore[operator]
    assert right["trained-1"] >= right["zero-shot"]
    assert right["trained-1"] / len(test) >= 0.8


def test_training_refuses_what_it_cannot_learn_from(tmp_path: Path, store: Store) -> None:
    spec = parse_spec(spec_for(LABELS)).features["intent"]
    datasets = DatasetStore(store)
    datasets.commit("one-label", [Item.of({"text": "where is my card"}, {"label": "card_arrival"},
                                          split="train")], actor="t")
    datasets.commit("eval-only", [Item.of({"text": "x"}, {"label": "card_arrival"}, split="eval")],
                    actor="t")
    with pytest.raises(DatasetNotFound, match="no split 'train'"):
        train_version(store, "intent", spec, "eval-only", tmp_path, actor="t")
    with pytest.raises(DatasetNotFound):
        train_version(store, "intent", spec, "missing@1", tmp_path, actor="t")
    trainer = LocalHeadTrainer(label_sentences=False)
    with pytest.raises(InvalidRequest, match="at least two labels"):
        train_version(store, "intent", spec, "one-label", tmp_path, actor="t", trainer=trainer)
    with pytest.raises(InvalidRequest, match="unknown trainer"):
        trainer_named("magic")
    assert Registry(store).list("intent") == []
