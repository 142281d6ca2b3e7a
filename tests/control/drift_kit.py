"""What the drift tests share: synthetic traffic written as real events."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from keel.stages.guards import CheckResult
from keel.store import Store
from keel.types import Decision, Event

HOUR = 3600.0
T0 = 1_699_999_200.0  # a whole hour (and 2023-11-14 22:00 UTC)
WORDS = ("card", "payment", "refund", "transfer", "account", "balance", "limit", "fee")


@dataclass(frozen=True)
class Shape:
    """How one window's traffic looks."""

    words: float = 10.0  # mean words per text
    labels: Sequence[str] = ("a", "b", "c")
    weights: Sequence[float] = (0.5, 0.3, 0.2)
    confidence: float = 0.8  # mean (beta distributed)
    review: float = 0.05  # share decided review
    latency: float = 100.0  # mean ms (lognormal)
    pii: float | None = None  # share flagged by a PII check; None: no PII check ran
    language: dict[str, float] | None = None  # refused languages and their shares
    extra: dict[str, Any] = field(default_factory=dict)  # input fields added as they are


def window(rng: np.random.Generator, start: float, n: int, shape: Shape = Shape(),
           feature: str = "f", prefix: str = "") -> list[Event]:
    """``n`` events spread over the hour from ``start``."""
    out = []
    times = np.sort(rng.uniform(start, start + HOUR, n))
    for i, ts in enumerate(times):
        words = max(1, int(rng.poisson(shape.words)))
        text = " ".join(rng.choice(WORDS, words))
        label = str(rng.choice(list(shape.labels), p=np.asarray(shape.weights) / sum(shape.weights)))
        decision = Decision.REVIEW if rng.random() < shape.review else Decision.ACCEPTED
        checks: list[CheckResult] = []
        if shape.pii is not None:
            checks.append(CheckResult("pii", bool(rng.random() >= shape.pii), "redact"))
        if shape.language is not None:
            refused = None
            draw = rng.random()
            for code, share in shape.language.items():
                if draw < share:
                    refused = code
                    break
                draw -= share
            checks.append(CheckResult("language", refused is None, "log", None if refused is None
                                      else f"language '{refused}' (0.97) is not one of en"))
        out.append(Event(
            trace_id=f"{prefix}{feature}-{start:.0f}-{i}", ts=float(ts), feature=feature,
            version="v1", decision=decision, confidence=float(rng.beta(8 * shape.confidence,
                                                                       8 * (1 - shape.confidence))),
            latency_ms=float(rng.lognormal(np.log(shape.latency), 0.3)), timings_ms={},
            input_tokens=words + 5, output_tokens=2, cost_usd=1e-5 * (words + 5),
            attempts=[], validations=[], input={"text": text, **shape.extra},
            output={"label": label}, checks=list(checks), routed="v1"))
    return out


def write(store: Store, events: Sequence[Event]) -> None:
    store.migrate()
    conn = store.connect()
    try:
        store.write_events(conn, events)
    finally:
        conn.close()


def traffic(store: Store, shapes: Sequence[Shape], n: int = 300, seed: int = 0,
            feature: str = "f", start: float = T0) -> None:
    """One hour per shape, ``n`` events each, from ``start``."""
    rng = np.random.default_rng(seed)
    events = []
    for i, shape in enumerate(shapes):
        events += window(rng, start + i * HOUR, n, shape, feature)
    write(store, events)
