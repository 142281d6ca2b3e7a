"""Tune and measure the local provider on BANKING77 (the example feature ``intent``).

    .venv/bin/python bench/zero_shot_tuning.py tune        # choices made on train.csv only
    .venv/bin/python bench/zero_shot_tuning.py report      # the chosen setups, scored on test.csv
    .venv/bin/python bench/zero_shot_tuning.py throughput  # embed texts/s under concurrency

The data is read by path (``--data``, default /work/shared/data/banking77) and never
copied; embeddings are cached under ``--cache`` (default: the system temp dir).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml

from keel.providers.local.classifier import (
    DEFAULT_TEMPERATURE,
    NAME_TEMPLATE,
    LogisticHead,
    Probs,
    ZeroShotClassifier,
    label_sentences,
)
from keel.providers.local.embedder import BatchingEmbedder, Encoder, Vectors, load_encoder

ROOT = Path(__file__).resolve().parents[1]
DESCRIPTIONS = ROOT / "examples" / "intent" / "label_descriptions.yaml"
NAME_TEMPLATES = [
    "{name}",
    "{name}.",
    "a question about {name}",
    "customer question: {name}",
    "I have a question about {name}",
    "banking help: {name}",
]
DESCRIBED_TEMPLATES = ["{description}", "{name}: {description}", "{name}. {description}"]


def read(data: Path, split: str) -> tuple[list[str], list[str]]:
    with open(data / f"{split}.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [r["text"] for r in rows], [r["category"] for r in rows]


def embed_cached(encoder: Encoder, texts: Sequence[str], cache: Path) -> Vectors:
    key = hashlib.sha256("\x1f".join(texts).encode()).hexdigest()[:16]
    path = cache / f"keel-minilm-{key}.npy"
    if path.exists():
        cached: Vectors = np.load(path)
        return cached
    vectors = encoder.embed_many(texts)
    np.save(path, vectors)
    return vectors


def scores(probs: Probs, labels: Sequence[str], gold: Sequence[str]) -> dict[str, float]:
    """Accuracy, mean top probability, expected calibration error (10 bins), NLL."""
    index = {label: i for i, label in enumerate(labels)}
    y = np.array([index[g] for g in gold])
    top = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    correct = top == y
    bins = np.minimum((conf * 10).astype(int), 9)
    ece = sum(
        abs(correct[bins == b].mean() - conf[bins == b].mean()) * (bins == b).mean()
        for b in range(10)
        if (bins == b).any()
    )
    nll = -np.log(np.maximum(probs[np.arange(len(y)), y], 1e-12)).mean()
    return {
        "acc": float(correct.mean()),
        "conf": float(conf.mean()),
        "ece": float(ece),
        "nll": float(nll),
    }


def fit_temperature(sims: np.ndarray, labels: Sequence[str], gold: Sequence[str]) -> float:
    """Temperature scaling: the T minimising NLL (a grid is plenty for one parameter)."""
    grid = np.round(np.arange(0.01, 0.101, 0.0025), 4)
    return float(min(grid, key=lambda t: scores(softmax_t(sims, t), labels, gold)["nll"]))


def softmax_t(sims: np.ndarray, t: float) -> Probs:
    z = sims / t
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: Probs = e / e.sum(axis=1, keepdims=True)
    return out


def fmt(name: str, s: dict[str, float]) -> str:
    return (
        f"{name:<46} acc {s['acc']:.4f}  mean conf {s['conf']:.4f}  "
        f"ECE {s['ece']:.4f}  NLL {s['nll']:.3f}"
    )


def load_descriptions() -> dict[str, str]:
    if not DESCRIPTIONS.exists():
        return {}
    data = yaml.safe_load(DESCRIPTIONS.read_text(encoding="utf-8"))
    return {str(k): str(v) for k, v in data.items()}


def tune(args: argparse.Namespace) -> None:
    encoder = load_encoder()
    labels = json.loads((args.data / "categories.json").read_text())
    texts, gold = read(args.data, "train")
    x = embed_cached(encoder, texts, args.cache)
    print(f"train.csv: {len(texts)} rows, {len(labels)} labels")

    def zs(sentences: list[str]) -> np.ndarray:
        return x @ encoder.embed_many(sentences).T

    print("\n-- names only: template (T fit per template by NLL)")
    for template in NAME_TEMPLATES:
        sims = zs(label_sentences(labels, name_template=template))
        t = fit_temperature(sims, labels, gold)
        print(fmt(f"{template!r} T={t}", scores(softmax_t(sims, t), labels, gold)))

    descriptions = load_descriptions()
    if descriptions:
        missing = set(labels) - set(descriptions)
        print(f"\n-- with descriptions ({len(descriptions)} written, {len(missing)} missing)")
        for template in DESCRIBED_TEMPLATES:
            sims = zs(label_sentences(labels, descriptions, described_template=template))
            t = fit_temperature(sims, labels, gold)
            print(fmt(f"{template!r} T={t}", scores(softmax_t(sims, t), labels, gold)))
        # per-label accuracy for the chosen template: where descriptions still fail
        sims = zs(label_sentences(labels, descriptions))
        pred = np.array(labels)[sims.argmax(axis=1)]
        worst = sorted(labels, key=lambda lab: (pred[np.array(gold) == lab] == lab).mean())[:10]
        print(
            "weakest labels:",
            ", ".join(f"{lab} {(pred[np.array(gold) == lab] == lab).mean():.2f}" for lab in worst),
        )

    print("\n-- logistic head: C on an 80/20 split of train.csv")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(texts))
    cut = int(0.8 * len(order))
    tr, va = order[:cut], order[cut:]
    gold_arr = np.array(gold)
    for c in (3.0, 10.0, 30.0, 50.0, 100.0):
        head = LogisticHead.fit_vectors(x[tr], list(gold_arr[tr]), c=c)
        print(fmt(f"C={c}", scores(head.predict_proba(x[va]), head.labels, list(gold_arr[va]))))


def report(args: argparse.Namespace) -> None:
    encoder = load_encoder()
    labels = json.loads((args.data / "categories.json").read_text())
    train_texts, train_gold = read(args.data, "train")
    texts, gold = read(args.data, "test")
    x_train = embed_cached(encoder, train_texts, args.cache)
    x = embed_cached(encoder, texts, args.cache)
    print(f"test.csv: {len(texts)} rows; temperature {args.temperature}, head C={args.c}")
    names = ZeroShotClassifier.build(labels, encoder, temperature=args.temperature)
    print(fmt("(i) zero-shot, names only", scores(names.predict_proba(x), labels, gold)))
    if args.label_template != NAME_TEMPLATE:
        names = ZeroShotClassifier.build(
            labels, encoder, temperature=args.temperature, name_template=args.label_template
        )
        print(
            fmt(
                f"(i) names only, {args.label_template!r}",
                scores(names.predict_proba(x), labels, gold),
            )
        )
    descriptions = load_descriptions()
    if descriptions:
        described = ZeroShotClassifier.build(labels, encoder, descriptions, args.temperature)
        print(
            fmt(
                "(ii) zero-shot, names + descriptions",
                scores(described.predict_proba(x), labels, gold),
            )
        )
    head = LogisticHead.fit_vectors(x_train, train_gold, c=args.c)
    print(
        fmt(
            "(iii) logistic head trained on train.csv",
            scores(head.predict_proba(x), head.labels, gold),
        )
    )


def throughput(args: argparse.Namespace) -> None:
    texts = read(args.data, "train")[0][::7][: args.n]

    async def run(threads: int, workers: int, max_batch: int) -> float:
        embedder = BatchingEmbedder(load_encoder(threads), max_batch=max_batch, workers=workers)
        await embedder.embed("warm up")
        start = time.perf_counter()
        await asyncio.gather(*(embedder.embed(t) for t in texts))
        elapsed = time.perf_counter() - start
        await embedder.aclose()
        return len(texts) / elapsed

    print(f"{len(texts)} concurrent embed() calls (BANKING77 train texts)")
    for threads, workers, max_batch in [
        (1, 1, 1),
        (2, 1, 1),
        (1, 1, 32),
        (2, 1, 32),
        (1, 2, 32),
        (2, 2, 32),
        (1, 2, 16),
        (1, 2, 64),
    ]:
        rate = max(asyncio.run(run(threads, workers, max_batch)) for _ in range(args.repeat))
        print(f"threads={threads} workers={workers} max_batch={max_batch:<3} {rate:6.0f} texts/s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["tune", "report", "throughput"])
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/banking77"))
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE)
    parser.add_argument("--label-template", default=NAME_TEMPLATE)
    parser.add_argument("--c", type=float, default=50.0)
    parser.add_argument("--n", type=int, default=1200)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    {"tune": tune, "report": report, "throughput": throughput}[args.command](args)


if __name__ == "__main__":
    main()
