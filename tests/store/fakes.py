"""Events for the rollup, ledger and dashboard API tests: hand-made or a seeded random
stream, and the sums computed straight from them (what the rollups must agree with)."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

from keel.store.rollups import CLIENT_ERROR_CODES, EDGES
from keel.types import Decision, Event, OnFail, ValidationResult

# a fixed UTC time, 12:34:56 on a day: ranges around it cross minute, hour and day edges
T0 = 1_767_225_600.0 + 12 * 3600 + 34 * 60 + 56


def event(trace_id: str, ts: float, *, feature: str = "f", version: str | None = "v1",
          decision: Decision = Decision.ACCEPTED, latency_ms: float = 10.0,
          input_tokens: int = 10, output_tokens: int = 2, cost_usd: float | None = 0.001,
          user: str | None = "u1", key: str | None = "k1", failed_validation: bool = False,
          error_code: str | None = None, routed: str | None = None,
          confidence: float | None = 0.9) -> Event:
    validations = [ValidationResult("allowed_labels", not failed_validation, OnFail.REFUSE)]
    return Event(trace_id=trace_id, ts=ts, feature=feature, version=version,
                 decision=decision, confidence=confidence, latency_ms=latency_ms,
                 timings_ms={"invoke": latency_ms, "total": latency_ms},
                 input_tokens=input_tokens, output_tokens=output_tokens, cost_usd=cost_usd,
                 attempts=[], validations=validations, input={"text": trace_id},
                 output={"label": "a"}, user=user, key=key, error_code=error_code,
                 routed=routed if routed is not None else version)


def random_events(n: int, seed: int, *, start: float = T0 - 2 * 86400,
                  span: float = 3 * 86400) -> list[Event]:
    """A stream over ``span`` seconds: 3 features, versions (some None: errors), every
    decision, latencies across many bins, unknown costs, users, keys, failed validations."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        decision = rng.choice(list(Decision))
        error = decision is Decision.ERROR
        code = rng.choice(["input_schema_violation", "all_targets_failed"]) if error else None
        version = None if error and rng.random() < 0.5 else rng.choice(["v1", "v2"])
        out.append(event(
            f"{seed}-{i:06d}", start + rng.random() * span, feature=rng.choice("fgh"),
            version=version, decision=decision,
            latency_ms=round(10 ** rng.uniform(-1.5, 4.5), 3),
            input_tokens=rng.randint(0, 500), output_tokens=rng.randint(0, 100),
            cost_usd=None if rng.random() < 0.1 else rng.random() / 1000,
            user=rng.choice([None, "u1", "u2", "u3"]), key=rng.choice([None, "k1", "k2"]),
            failed_validation=rng.random() < 0.2, error_code=code,
            routed=version if rng.random() < 0.9 else "v3"))
    return out


def true_bin(latency_ms: float) -> int:
    """The histogram bin by its definition: how many upper edges are <= the latency."""
    return sum(1 for edge in EDGES if edge <= latency_ms)


def expected_rollup(events: list[Event], step: int
                    ) -> tuple[dict[tuple[Any, ...], dict[str, Any]], dict[tuple[Any, ...], dict[str, Any]]]:
    """The counter rows and the latency rows of ``events`` at one resolution, computed
    straight from them (the first event of each trace id)."""
    firsts: dict[str, Event] = {}
    for e in events:
        firsts.setdefault(e.trace_id, e)
    counts: dict[tuple[Any, ...], dict[str, Any]] = defaultdict(
        lambda: {"calls": 0, "client_errors": 0, "validation_failures": 0,
                 "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0, "cost_unknown": 0,
                 "latency_sum": 0.0})
    latency: dict[tuple[Any, ...], dict[str, Any]] = defaultdict(
        lambda: {"latency_min": float("inf"), "latency_max": float("-inf"),
                 "bins": defaultdict(int)})
    for e in firsts.values():
        key = (int(e.ts // step) * step, e.feature, e.routed or e.version or "")
        r = counts[(*key, str(e.decision))]
        r["calls"] += 1
        r["client_errors"] += int(e.decision is Decision.ERROR
                                  and e.error_code in CLIENT_ERROR_CODES)
        r["validation_failures"] += int(any(not v.passed for v in e.validations))
        r["input_tokens"] += e.input_tokens
        r["output_tokens"] += e.output_tokens
        if e.cost_usd is None:
            r["cost_unknown"] += 1
        else:
            r["cost_usd"] += e.cost_usd
        r["latency_sum"] += e.latency_ms
        h = latency[key]
        h["latency_min"] = min(h["latency_min"], e.latency_ms)
        h["latency_max"] = max(h["latency_max"], e.latency_ms)
        h["bins"][true_bin(e.latency_ms)] += 1
    return dict(counts), dict(latency)
