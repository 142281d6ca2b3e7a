"""Embedding drift: BANKING77 messages through the local model (other intents drift, two
random halves of the same intents do not), and the plumbing through drift_report."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from keel.control import drift as drift_module
from keel.control.drift import drift_report
from keel.control.drift_embed import classifier_auc, embedding_tests, local_embed, mmd_test, sample
from keel.control.drift_tests import CLASSIFIER_AUC, MMD, Thresholds
from keel.providers.local.embedder import ModelFilesMissing
from tests.backends import store_at
from tests.conftest import SHARED_DATA
from tests.control.drift_kit import HOUR, WORDS, Shape, traffic

ROOT = Path(__file__).resolve().parents[2]
BANKING77 = ROOT / os.environ.get("KEEL_BANKING77_DIR", str(SHARED_DATA))
CARDS = ("card_arrival", "activate_my_card", "card_linking", "card_not_working",
         "lost_or_stolen_card")
MONEY = ("exchange_rate", "top_up_failed", "transfer_timing", "cash_withdrawal_charge",
         "pending_transfer")


def messages(intents: Sequence[str]) -> list[str]:
    with (BANKING77 / "train.csv").open(newline="", encoding="utf-8") as f:
        texts = [row["text"] for row in csv.DictReader(f) if row["category"] in intents]
    order = np.random.default_rng(0).permutation(len(texts))
    return [texts[i] for i in order]


@pytest.fixture(scope="module")
def texts() -> tuple[list[str], list[str]]:
    if not (BANKING77 / "train.csv").is_file():
        pytest.skip(f"BANKING77 not found in {BANKING77} (set KEEL_BANKING77_DIR)")
    return messages(CARDS), messages(MONEY)


@pytest.mark.slow
def test_other_intents_drift_and_random_halves_do_not(texts: tuple[list[str], list[str]]) -> None:
    cards, money = texts
    model = local_embed()
    cache: dict[str, np.ndarray] = {}

    def embed(batch: Sequence[str]) -> np.ndarray:  # each text through the model once
        todo = [t for t in dict.fromkeys(batch) if t not in cache]
        cache.update(zip(todo, model(todo) if todo else [], strict=True))
        return np.stack([cache[t] for t in batch])

    th = Thresholds(embedding_small_n=100)  # the classifier from 100 texts a side
    big = embedding_tests(cards[:100], [cards[100:200], money[:100]], th, embed)
    assert big.method == [CLASSIFIER_AUC, CLASSIFIER_AUC]
    same, other = big.statistic
    assert same < th.auc and other > 0.9
    small = embedding_tests(cards[:50], [cards[100:150], money[:50]], th, embed)
    assert small.method == [MMD, MMD]
    assert small.p_value[0] > 0.05 and small.p_value[1] < th.alpha
    assert len(cache) == 300


def test_classifier_auc_and_mmd_on_plain_vectors() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, (150, 8)), rng.normal(0, 1, (150, 8))
    shifted = rng.normal(0.8, 1, (150, 8))
    assert abs(classifier_auc(a, b) - 0.5) < 0.1 and classifier_auc(a, shifted) > 0.9
    mmd_same, p_same = mmd_test(a[:50], b[:50])
    mmd_shift, p_shift = mmd_test(a[:50], shifted[:50])
    assert p_same > 0.05 and p_shift < 0.01 and mmd_shift > mmd_same
    assert sample(list("abcdef"), 3, 0) == sample(list("abcdef"), 3, 0)
    assert len(sample(list("abcdef"), 3, 0)) == 3 and sample(list("ab"), 3, 0) == ["a", "b"]


def fake_embed(texts: Sequence[str]) -> np.ndarray:
    """Word counts and length: enough to tell longer texts apart."""
    rows = [[t.split().count(w) for w in WORDS] + [len(t) / 10] for t in texts]
    return np.asarray(rows, dtype=np.float64)


def test_the_embedding_column_in_a_report(tmp_path: Path) -> None:
    store = store_at(tmp_path / "keel.db")
    traffic(store, [Shape(), Shape(), Shape(words=16)], n=250)
    report = drift_report(store, "f", window=HOUR, columns=["label"], embeddings=True,
                          embed=fake_embed)
    assert [(c.name, c.kind) for c in report.columns] == [("label", "categorical"),
                                                          ("embedding", "embedding")]
    cells = [w.columns.get("embedding") for w in report.windows]
    assert cells[0] is None  # the reference window
    assert [c.method for c in cells[1:] if c] == [CLASSIFIER_AUC, CLASSIFIER_AUC]
    assert [c.drifted for c in cells[1:] if c] == [False, True]
    assert cells[1] is not None and cells[1].summary == {"n": 250, "sampled": 250}
    assert report.reference_summary["embedding"] == {"n": 250}
    assert report.timings["embeddings_s"] > 0
    # named as a column, without the flag
    named = drift_report(store, "f", window=HOUR, columns=["embedding"], embed=fake_embed)
    assert [c.name for c in named.columns] == ["embedding"]


def test_without_the_local_model_the_embedding_is_skipped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> None:
        raise ModelFilesMissing("the local model is not installed")

    monkeypatch.setattr(drift_module, "local_embed", missing)
    store = store_at(tmp_path / "keel.db")
    traffic(store, [Shape(), Shape()], n=50)
    report = drift_report(store, "f", window=HOUR, columns=["label"], embeddings=True)
    assert report.skipped == {"embedding": "the local model is not installed"}
    assert [c.name for c in report.columns] == ["label"]
