"""Synthetic traffic for bench/dashboard.py: many events, generated with numpy, fast.

Deterministic: chunk *k* of a run is drawn from ``(seed, k)``, so the same parameters
give the same events. The traffic looks like a busy deployment's last ``days`` days:

- 6 features with different shares, latencies and token counts (a local classifier
  answers in ~4 ms with no tokens; the LLM features in 0.3-2 s with hundreds of tokens);
- per feature a champion; a new champion from day ``days - 10``; a 10 % canary in the
  last 5 days (so version tables have 2-3 rows);
- decisions: 84 % accepted, 3 % repaired, 3 % fallback, 5 % review, 2 % refused, 3 % error
  (a third of the errors bad input);
- 5,000 users with Zipf-like activity, each on one of 40 keys; 10 % of calls without a user;
- 2 % of calls of unknown cost.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import orjson

from keel.store.migrations import MIGRATIONS
from keel.types import Attempt, Decision, Event, OnFail, ValidationResult

GENERATOR = 3  # bump when the generated traffic changes

FEATURES = ("support_reply", "triage", "summarize", "search_answer", "extract", "intent")
SHARES = (0.30, 0.25, 0.15, 0.12, 0.10, 0.08)
# median latency ms, sigma of log latency, median input tokens, median output tokens,
# $ per 1M input tokens, $ per 1M output tokens, provider
PROFILES: dict[str, tuple[float, float, float, float, float, float, str]] = {
    "support_reply": (1400.0, 0.5, 900, 220, 0.15, 0.60, "openai"),
    "triage": (350.0, 0.4, 400, 8, 0.15, 0.60, "openai"),
    "summarize": (2100.0, 0.6, 2500, 300, 3.0, 15.0, "anthropic"),
    "search_answer": (900.0, 0.5, 1500, 180, 0.15, 0.60, "openai"),
    "extract": (600.0, 0.45, 700, 90, 0.15, 0.60, "openai"),
    "intent": (4.0, 0.3, 0, 0, 0.0, 0.0, "local"),
}
DECISIONS = ("accepted", "repaired", "fallback", "review", "refused", "error")
DECISION_P = (0.84, 0.03, 0.03, 0.05, 0.02, 0.03)
USERS = 5000
KEYS = 40
CHUNK = 500_000


@dataclass(frozen=True)
class Params:
    events: int = 10_000_000
    days: float = 30.0
    # the newest event's time: fixed (so the file is cached), mid-day (not bucket-aligned)
    end: float = 1_777_600_000.0 + 12_345.678
    seed: int = 1

    def key(self) -> str:
        """Names the cached file: these parameters, this generator, Keel's schema."""
        schema = [sql for _, sql in MIGRATIONS]
        return hashlib.sha256(orjson.dumps([asdict(self), GENERATOR, schema])).hexdigest()[:12]

    @property
    def start(self) -> float:
        return self.end - self.days * 86400


def chunks(p: Params) -> Iterator[dict[str, Any]]:
    """Columns of ``CHUNK`` events at a time, oldest first, ts sorted."""
    n_chunks = -(-p.events // CHUNK)
    span = (p.end - p.start) / n_chunks
    for k in range(n_chunks):
        n = min(CHUNK, p.events - k * CHUNK)
        yield columns(p, k, n, p.start + k * span, p.start + (k + 1) * span)


def columns(p: Params, k: int, n: int, t0: float, t1: float) -> dict[str, Any]:
    rng = np.random.default_rng([p.seed, k])
    ts = np.sort(rng.uniform(t0, t1, n))
    feature = rng.choice(len(FEATURES), n, p=SHARES)
    day = (ts - p.start) / 86400
    # version: v1 until days-10, then v2; in the last 5 days 10 % go to the canary v3
    version = np.where(day < p.days - 10, 1, 2)
    version = np.where((day >= p.days - 5) & (rng.random(n) < 0.10), 3, version)
    decision = rng.choice(len(DECISIONS), n, p=DECISION_P)
    prof = [PROFILES[f] for f in FEATURES]
    med = np.array([x[0] for x in prof])[feature]
    sig = np.array([x[1] for x in prof])[feature]
    latency = np.round(med * np.exp(sig * rng.standard_normal(n)), 3)
    tin = np.round(np.array([x[2] for x in prof])[feature] * rng.lognormal(0, 0.4, n))
    tout = np.round(np.array([x[3] for x in prof])[feature] * rng.lognormal(0, 0.5, n))
    err = decision == DECISIONS.index("error")
    tin, tout = np.where(err, 0, tin).astype(np.int64), np.where(err, 0, tout).astype(np.int64)
    cost = (tin * np.array([x[4] for x in prof])[feature]
            + tout * np.array([x[5] for x in prof])[feature]) / 1e6
    cost_unknown = rng.random(n) < 0.02
    user = np.minimum(rng.zipf(1.3, n), USERS) - 1
    user = np.where(rng.random(n) < 0.10, -1, (user * 7919) % USERS)
    key = np.where(user >= 0, user % KEYS, rng.integers(0, KEYS, n))
    confidence = np.round(rng.beta(8, 2, n), 4)
    ids = rng.integers(0, 2**63, (n, 2), dtype=np.int64)
    return {"ts": ts, "feature": feature, "version": version, "decision": decision,
            "latency": latency, "tin": tin, "tout": tout, "cost": cost,
            "cost_unknown": cost_unknown, "user": user, "key": key, "confidence": confidence,
            "ids": ids, "bad_input": err & (rng.random(n) < 1 / 3)}


_TIMINGS = {"checks": 0.05, "route": 0.01, "invoke": 0.0, "validate": 0.04, "decide": 0.01}
_PASS = [ValidationResult("allowed_labels", True, OnFail.REFUSE)]
_FAIL = [ValidationResult("allowed_labels", False, OnFail.REFUSE, "label 'x' is not allowed")]


def rows(c: dict[str, Any]) -> Iterator[tuple[Any, ...]]:
    """The events table's rows (the column order of migrations 001 + 005)."""
    n = len(c["ts"])
    dumps = orjson.dumps
    failed_v = dumps([asdict(v) for v in _FAIL]).decode()
    passed_v = dumps([asdict(v) for v in _PASS]).decode()
    lists = {name: c[name].tolist() for name in ("ts", "feature", "version", "decision",
                                                  "latency", "tin", "tout", "cost",
                                                  "cost_unknown", "user", "key", "confidence",
                                                  "bad_input")}
    ids = c["ids"].tolist()
    for i in range(n):
        f = FEATURES[lists["feature"][i]]
        d = DECISIONS[lists["decision"][i]]
        v = f"{f}-v{lists['version'][i]}"
        lat = lists["latency"][i]
        prov = PROFILES[f][6]
        error = d == "error"
        code = None
        if error:
            code = "input_schema_violation" if lists["bad_input"][i] else "all_targets_failed"
        attempts = dumps([{"version": v, "provider": prov, "ok": not error,
                           "latency_ms": round(lat * 0.93, 3), "retry": 0,
                           "error_code": "provider_timeout" if error else None}]).decode()
        u, k = lists["user"][i], lists["key"][i]
        a, b = ids[i]
        yield (
            f"{a & 0xFFFFFFFFFFFFFFFF:016x}{b & 0xFFFFFFFFFFFFFFFF:016x}", lists["ts"][i], f,
            None if error else (f"{f}-v1" if d == "fallback" else v), d,
            None if error else lists["confidence"][i], lat, lists["tin"][i], lists["tout"][i],
            None if lists["cost_unknown"][i] else lists["cost"][i],
            None if u < 0 else f"user-{u:04d}", f"k{k:02d}abcdef01", code,
            dumps({**_TIMINGS, "invoke": round(lat * 0.93, 3), "total": lat}).decode(),
            attempts, failed_v if d in ("repaired", "refused") else passed_v,
            '{"text":"I was charged twice for my order last week, please refund one"}',
            None if error else '{"label":"billing"}', "[]", v,
        )


def events(c: dict[str, Any]) -> list[Event]:
    """The same rows as Event objects (for the ingest benchmark)."""
    out = []
    for r in rows(c):
        out.append(Event(
            trace_id=r[0], ts=r[1], feature=r[2], version=r[3], decision=Decision(r[4]),
            confidence=r[5], latency_ms=r[6], timings_ms=orjson.loads(r[13]),
            input_tokens=r[7], output_tokens=r[8], cost_usd=r[9],
            attempts=[Attempt(**a) for a in orjson.loads(r[14])],
            validations=_FAIL if r[15].find('"passed":false') >= 0 else _PASS,
            input=orjson.loads(r[16]), output=None if r[17] is None else orjson.loads(r[17]),
            user=r[10], key=r[11], error_code=r[12], routed=r[19]))
    return out
