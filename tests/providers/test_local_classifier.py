"""Zero-shot and trained-head classifiers over the real local embeddings."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from keel.providers.local.classifier import (
    LogisticHead,
    ZeroShotClassifier,
    label_name,
    label_sentences,
)
from keel.providers.local.embedder import Encoder, load_encoder

# read by path, never copied into the repo; CI can point elsewhere
DATA = Path(os.environ.get("KEEL_BANKING77_DIR", "/work/shared/data/banking77"))
HEAD_LABELS = ["card_arrival", "change_pin", "terminate_account", "exchange_rate"]


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return load_encoder()


@pytest.fixture(scope="module")
def banking_labels() -> list[str]:
    labels: list[str] = json.loads((DATA / "categories.json").read_text())
    return labels


@pytest.fixture(scope="module")
def zero_shot(encoder: Encoder, banking_labels: list[str]) -> ZeroShotClassifier:
    return ZeroShotClassifier.build(banking_labels, encoder)


@pytest.fixture(scope="module")
def rows() -> list[tuple[str, str]]:
    """25 train.csv rows per label for four labels (read by path, never copied)."""
    out: list[tuple[str, str]] = []
    with open(DATA / "train.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if (
                row["category"] in HEAD_LABELS
                and sum(1 for r in out if r[1] == row["category"]) < 25
            ):
                out.append((row["text"], row["category"]))
    assert len(out) == 100
    return out


def test_label_names_read_as_words() -> None:
    assert label_name("card_arrival") == "card arrival"
    assert label_name("Refund_not_showing_up") == "refund not showing up"
    assert label_name("reverted_card_payment?") == "reverted card payment"
    assert label_name("topUpLimits") == "top up limits"
    assert label_sentences(["a_b", "c"], {"c": "the c one"}) == ["a b", "c: the c one"]
    assert label_sentences(["a_b"], name_template="about {name}") == ["about a b"]


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("I want to close my account for good, please delete it", "terminate_account"),
        ("How can I change my PIN number?", "change_pin"),
        ("Does the card work with Apple Pay?", "apple_pay_or_google_pay"),
        ("The ATM swallowed my card and did not give it back", "card_swallowed"),
    ],
)
def test_zero_shot_picks_the_obvious_label(
    encoder: Encoder, zero_shot: ZeroShotClassifier, message: str, expected: str
) -> None:
    probs = zero_shot.predict_proba(encoder.embed_many([message]))
    assert probs.shape == (1, 77)
    assert probs.sum() == pytest.approx(1.0)
    assert zero_shot.labels[int(probs.argmax())] == expected


def test_temperature_sharpens_confidence(encoder: Encoder) -> None:
    labels = ["card_arrival", "change_pin", "terminate_account"]
    x = encoder.embed_many(["where is my new card?"])
    vectors = ZeroShotClassifier.build(labels, encoder).label_vectors
    cold = ZeroShotClassifier(labels, vectors, temperature=0.01).predict_proba(x).max()
    warm = ZeroShotClassifier(labels, vectors, temperature=1.0).predict_proba(x).max()
    assert 1 / 3 < warm < cold <= 1.0
    with pytest.raises(ValueError, match="temperature"):
        ZeroShotClassifier(labels, vectors, temperature=0)


def test_head_learns_a_separable_set_and_round_trips(
    encoder: Encoder, rows: list[tuple[str, str]], tmp_path: Path
) -> None:
    train, held_out = rows[::5] + rows[1::5] + rows[2::5] + rows[3::5], rows[4::5]
    head = LogisticHead.fit([t for t, _ in train], [y for _, y in train], encoder)
    assert sorted(head.labels) == sorted(HEAD_LABELS)
    x = encoder.embed_many([t for t, _ in held_out])
    probs = head.predict_proba(x)
    predicted = [head.labels[i] for i in probs.argmax(axis=1)]
    accuracy = np.mean([p == y for p, (_, y) in zip(predicted, held_out, strict=True)])
    assert accuracy >= 0.9
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)

    path = tmp_path / "intent-head.npz"
    head.save(path)
    assert path.exists()
    with np.load(path, allow_pickle=False) as data:  # plain arrays, no pickle
        assert set(data.files) == {"coef", "intercept", "labels"}
    loaded = LogisticHead.load(path)
    assert loaded.labels == head.labels
    np.testing.assert_allclose(loaded.predict_proba(x), probs, atol=1e-6)


def test_head_with_two_labels(encoder: Encoder, rows: list[tuple[str, str]]) -> None:
    pairs = [r for r in rows if r[1] in ("change_pin", "terminate_account")]
    head = LogisticHead.fit([t for t, _ in pairs], [y for _, y in pairs], encoder)
    probs = head.predict_proba(encoder.embed_many(["I need a new PIN", "shut my account down"]))
    assert [head.labels[i] for i in probs.argmax(axis=1)] == ["change_pin", "terminate_account"]
    with pytest.raises(ValueError, match="at least two labels"):
        LogisticHead.fit_vectors(encoder.embed_many(["a", "b"]), ["x", "x"])


def test_head_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        LogisticHead.load(tmp_path / "nope.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match=r"junk\.npz"):
        LogisticHead.load(junk)
    partial = tmp_path / "partial.npz"
    with open(partial, "wb") as fh:
        np.savez(fh, coef=np.zeros((2, 384)))
    with pytest.raises(
        ValueError, match=r"partial\.npz: not a Keel head \(missing intercept, labels\)"
    ):
        LogisticHead.load(partial)
