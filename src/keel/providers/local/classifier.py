"""Classifiers over sentence embeddings; each gives probabilities over its label list.

* :class:`ZeroShotClassifier`: no training data. Each label becomes a sentence (its name,
  ``card_arrival`` -> "card arrival", optionally with a one-line description); a text's
  class probabilities are a softmax over its cosine similarity to each label sentence.
  The temperature turns similarities (all within a narrow band) into usable confidences.
* :class:`LogisticHead`: multinomial logistic regression fit on embeddings of labelled
  examples, stored as a plain ``.npz`` (coef, intercept, labels; no pickle). Inference is
  numpy only; scikit-learn is needed to fit, not to serve.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from keel.providers.local.embedder import DIM, Encoder, Vectors

Probs = npt.NDArray[np.float64]

#: How a label is phrased when it has no description (a version can set its own with the
#: ``label_template`` param). On BANKING77 train.csv (bench/zero_shot_tuning.py) templates
#: moved accuracy by at most ~1.5 points; a domain hint ("banking help: {name}") helped
#: most, so the domain-neutral bare name is the default.
NAME_TEMPLATE = "{name}"
#: How a label with a description is phrased: beat the description alone and
#: "{name}. {description}" on the same data.
DESCRIBED_TEMPLATE = "{name}: {description}"
#: Softmax temperature over cosine similarities: NLL-optimal on train.csv was 0.045-0.06
#: (names only or with descriptions), where the mean top probability ~ accuracy.
DEFAULT_TEMPERATURE = 0.05


class Classifier(Protocol):
    labels: list[str]

    def predict_proba(self, vectors: Vectors) -> Probs:
        """[n, len(labels)] probabilities; rows sum to 1."""
        ...


def label_name(label: str) -> str:
    """``card_arrival`` -> ``card arrival``; ``topUpLimits?`` -> ``top up limits``."""
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", label)
    return " ".join(re.sub(r"[^\w']+|_", " ", spaced).split()).lower()


def label_sentences(
    labels: Sequence[str],
    descriptions: Mapping[str, str] | None = None,
    name_template: str = NAME_TEMPLATE,
    described_template: str = DESCRIBED_TEMPLATE,
) -> list[str]:
    """The sentence each label is embedded as."""
    out = []
    for label in labels:
        description = (descriptions or {}).get(label)
        template = described_template if description else name_template
        out.append(template.format(name=label_name(label), description=description or ""))
    return out


def softmax(logits: npt.NDArray[np.floating]) -> Probs:
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    result: Probs = e / e.sum(axis=1, keepdims=True)
    return result


class ZeroShotClassifier:
    def __init__(
        self,
        labels: Sequence[str],
        label_vectors: Vectors,
        temperature: float = DEFAULT_TEMPERATURE,
    ) -> None:
        if not labels:
            raise ValueError("a classifier needs at least one label")
        if label_vectors.shape != (len(labels), DIM):
            raise ValueError(
                f"label vectors must be [{len(labels)}, {DIM}], got {label_vectors.shape}"
            )
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.labels = list(labels)
        self.label_vectors = label_vectors
        self.temperature = temperature

    @classmethod
    def build(
        cls,
        labels: Sequence[str],
        encoder: Encoder,
        descriptions: Mapping[str, str] | None = None,
        temperature: float = DEFAULT_TEMPERATURE,
        name_template: str = NAME_TEMPLATE,
    ) -> ZeroShotClassifier:
        """Embed the label sentences (blocking: ~3 ms per label; run it off the loop)."""
        vectors = encoder.embed_many(label_sentences(labels, descriptions, name_template))
        return cls(labels, vectors, temperature)

    def similarities(self, vectors: Vectors) -> npt.NDArray[np.float32]:
        sims: npt.NDArray[np.float32] = np.atleast_2d(vectors) @ self.label_vectors.T
        return sims

    def predict_proba(self, vectors: Vectors) -> Probs:
        return softmax(self.similarities(vectors) / self.temperature)


class LogisticHead:
    """Multinomial logistic regression over embeddings: ``softmax(x @ coef.T + intercept)``."""

    def __init__(
        self,
        labels: Sequence[str],
        coef: npt.NDArray[np.floating],
        intercept: npt.NDArray[np.floating],
    ) -> None:
        n = len(labels)
        if n < 2:
            raise ValueError("a trained head needs at least two labels")
        if coef.shape != (n, DIM) or intercept.shape != (n,):
            raise ValueError(
                f"head shapes do not match {n} labels x {DIM} dims: "
                f"coef {coef.shape}, intercept {intercept.shape}"
            )
        self.labels = list(labels)
        self.coef = coef.astype(np.float32)
        self.intercept = intercept.astype(np.float32)

    @classmethod
    def fit_vectors(
        cls, vectors: Vectors, labels: Sequence[str], c: float = 50.0, max_iter: int = 1000
    ) -> LogisticHead:
        """Fit on precomputed embeddings. ``c`` is the inverse L2 strength (unit vectors
        need weak regularisation; tuned on a train.csv split)."""
        from sklearn.linear_model import LogisticRegression  # only needed to train

        if len(set(labels)) < 2:
            raise ValueError("training needs examples of at least two labels")
        model = LogisticRegression(C=c, max_iter=max_iter)
        model.fit(vectors, list(labels))
        classes = [str(x) for x in model.classes_]
        coef = np.asarray(model.coef_, dtype=np.float64)
        intercept = np.asarray(model.intercept_, dtype=np.float64)
        if len(classes) == 2:  # sklearn keeps one row for 2 classes: p1 = sigmoid(w.x + b)
            coef = np.vstack([np.zeros_like(coef[0]), coef[0]])
            intercept = np.array([0.0, intercept[0]])
        return cls(classes, coef, intercept)

    @classmethod
    def fit(
        cls,
        texts: Sequence[str],
        labels: Sequence[str],
        encoder: Encoder,
        c: float = 50.0,
        progress: Callable[[int, int], None] | None = None,
    ) -> LogisticHead:
        if len(texts) != len(labels):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
        return cls.fit_vectors(encoder.embed_many(texts, progress=progress), labels, c=c)

    def predict_proba(self, vectors: Vectors) -> Probs:
        return softmax(np.atleast_2d(vectors) @ self.coef.T + self.intercept)

    def save(self, path: str | Path) -> None:
        # a file handle keeps the exact name (np.savez would append .npz to a bare path)
        with open(path, "wb") as fh:
            np.savez(
                fh,
                coef=self.coef,
                intercept=self.intercept,
                labels=np.array(self.labels, dtype=np.str_),
            )

    @classmethod
    def load(cls, path: str | Path) -> LogisticHead:
        """Raises FileNotFoundError, or ValueError naming the file when it is not a head."""
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = {"coef", "intercept", "labels"} - set(data.files)
                if missing:
                    raise ValueError(
                        f"{path}: not a Keel head (missing {', '.join(sorted(missing))})"
                    )
                labels = [str(x) for x in data["labels"]]
                return cls(labels, data["coef"], data["intercept"])
        except FileNotFoundError:
            raise
        except (OSError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{path}: not a readable .npz head: {exc}") from None
        except ValueError as exc:
            msg = str(exc)
            raise ValueError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
