"""Drift of the input texts as a whole: their embeddings by the local MiniLM model.

Up to ``embedding_sample`` texts per side (seeded) are embedded: the reference once, then
each window. The test is chosen by sample size, like the scalar columns':

* fewer than ``embedding_small_n`` texts on either side: the **MMD** two-sample test
  (Gaussian kernel, median-heuristic bandwidth) with a permutation p-value, which joins
  the report's Benjamini–Hochberg correction;
* otherwise a **domain classifier**: logistic regression told to separate reference
  from window, scored by 5-fold cross-validated ROC AUC. 0.5 is "cannot tell them
  apart"; above ``auc`` (0.6) the window drifted.

Embedding costs some 1–3 ms per text: 500 texts per window is about a second.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from typing import Final

import numpy as np

from keel.control.drift_tests import (
    CLASSIFIER_AUC,
    MMD,
    ColumnTests,
    FloatArray,
    Thresholds,
)

PERMUTATIONS: Final = 200
Embed = Callable[[Sequence[str]], FloatArray]


def local_embed() -> Embed:
    """The local model's ``embed_many`` (raises ModelFilesMissing when not installed), with
    up to 4 intra-op threads: one stream of batches, ~1.6× faster on 2 cores than one."""
    from keel.providers.local.embedder import load_encoder

    encoder = load_encoder(threads=min(4, os.cpu_count() or 1))

    def embed(texts: Sequence[str]) -> FloatArray:
        return np.asarray(encoder.embed_many(list(texts)), dtype=np.float64)

    return embed


def sample(texts: Sequence[str], limit: int, seed: int) -> list[str]:
    """At most ``limit`` of ``texts``, chosen by a seeded generator, in their order."""
    if len(texts) <= limit:
        return list(texts)
    picks = np.sort(np.random.default_rng(seed).choice(len(texts), limit, replace=False))
    return [texts[i] for i in picks]


def classifier_auc(a: FloatArray, b: FloatArray, seed: int = 0) -> float:
    """Cross-validated ROC AUC of a logistic regression separating rows of ``a`` from ``b``."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    x = np.vstack([a, b])
    y = np.concatenate([np.zeros(len(a)), np.ones(len(b))])
    folds = StratifiedKFold(min(5, len(a), len(b)), shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        scores = cross_val_predict(LogisticRegression(C=1.0, max_iter=2000), x, y, cv=folds,
                                   method="decision_function")
    return float(roc_auc_score(y, scores))


def mmd_test(a: FloatArray, b: FloatArray, permutations: int = PERMUTATIONS,
             seed: int = 0) -> tuple[float, float]:
    """Squared MMD (biased estimate, Gaussian kernel with the median heuristic) and its
    permutation p-value ``(1 + #{perm >= observed}) / (1 + permutations)``."""
    x = np.vstack([a, b])
    sq = np.sum(x * x, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0)
    off = d2[np.triu_indices(len(x), 1)]
    median = float(np.median(off)) if off.size else 1.0
    kernel = np.exp(-d2 / (median if median > 0 else 1.0))
    signs = np.concatenate([np.full(len(a), 1.0 / len(a)), np.full(len(b), -1.0 / len(b))])
    observed = float(signs @ kernel @ signs)
    rng = np.random.default_rng(seed)
    shuffled = np.stack([rng.permutation(signs) for _ in range(permutations)], axis=1)
    stats = np.einsum("ip,ip->p", shuffled, kernel @ shuffled)
    p = (1 + int(np.sum(stats >= observed - 1e-12))) / (1 + permutations)
    return observed, p


def embedding_tests(reference: Sequence[str], windows: Sequence[Sequence[str] | None],
                    th: Thresholds, embed: Embed, seed: int = 0) -> ColumnTests:
    """Test each window's texts (None: not a tested window) against the reference's."""
    w = len(windows)
    method: list[str | None] = [None] * w
    stat = np.full(w, np.nan)
    pval = np.full(w, np.nan)
    counts = np.array([0 if t is None else len(t) for t in windows], dtype=np.int64)
    note: list[str | None] = [None] * w
    summary: list[dict[str, object]] = [{"n": int(c)} for c in counts]
    ref = sample(reference, th.embedding_sample, seed)
    if len(ref) < th.min_n:
        return ColumnTests(method, stat, pval, counts, summary,
                           [f"the reference has {len(ref)} text(s), fewer than {th.min_n}"] * w)
    ref_vectors = embed(ref)
    for i, texts in enumerate(windows):
        if texts is None:
            continue
        if len(texts) < th.min_n:
            note[i] = f"{len(texts)} text(s), fewer than {th.min_n}"
            continue
        chosen = sample(texts, th.embedding_sample, seed + 1 + i)
        vectors = embed(chosen)
        summary[i]["sampled"] = len(chosen)
        if min(len(chosen), len(ref)) < th.embedding_small_n:
            method[i] = MMD
            stat[i], pval[i] = mmd_test(ref_vectors, vectors, seed=seed + i)
        else:
            method[i] = CLASSIFIER_AUC
            stat[i] = classifier_auc(ref_vectors, vectors, seed=seed + i)
    return ColumnTests(method, stat, pval, counts, summary, note)
