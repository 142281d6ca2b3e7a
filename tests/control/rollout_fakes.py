"""Fakes for rollout tests: a registry behind the controller's seams, a clock, and
synthetic traffic (aggregated in memory for many seeds, or as real events)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from keel.control.live_metrics import VersionMetrics
from keel.control.rollout import RolloutController
from keel.errors import GateRequired, VersionNotFound
from keel.spec import RolloutSpec
from keel.store.sqlite import SQLiteStore

T0 = 1_700_000_000.0


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class _KeptOpen(sqlite3.Connection):
    def close(self) -> None:
        """Kept open for the next caller; see :class:`OneConnectionStore`."""

    def really_close(self) -> None:
        super().close()


class OneConnectionStore(SQLiteStore):
    """The store with one connection for every caller, so the many-seed simulation does
    not spend its time opening and closing connections. Single-threaded use only."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self._conn: _KeptOpen | None = None

    def connect(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, factory=_KeptOpen)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.row_factory = sqlite3.Row
            assert isinstance(conn, _KeptOpen)
            self._conn = conn
        self._conn.isolation_level = ""  # as a fresh connection has it
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.really_close()
            self._conn = None


class FakeRegistry:
    """Aliases of one feature, moved through the controller's seams."""

    def __init__(self, versions: tuple[str, ...] = ("v1", "v2", "v3"), champion: str = "v1",
                 gate_runs: dict[str, str] | None = None) -> None:
        self.versions = versions
        self.aliases: dict[str, str] = {"champion": champion}
        self.gate_runs = dict(gate_runs or {})
        self.moves: list[dict[str, Any]] = []

    def promote(self, feature: str, version: str, *, actor: str, reason: str,
                gate_run: str | None, force: bool) -> None:
        if gate_run is None and not force:
            raise GateRequired("no gate run")
        self.aliases["champion"] = version
        self.moves.append({"alias": "champion", "version": version, "actor": actor,
                           "gate_run": gate_run, "force": force})

    def set_canary(self, feature: str, version: str | None, *, actor: str, reason: str) -> None:
        if version is None:
            self.aliases.pop("canary", None)
        else:
            if version not in self.versions:
                raise VersionNotFound(f"feature '{feature}' has no version '{version}'")
            self.aliases["canary"] = version
        self.moves.append({"alias": "canary", "version": version, "actor": actor})

    def gate_check(self, feature: str, version: str) -> str | None:
        return self.gate_runs.get(version)

    def champion(self, feature: str) -> str:
        return self.aliases["champion"]


class Scripted:
    """A metrics source answering what the test set, and remembering the windows asked."""

    def __init__(self) -> None:
        self.now: dict[str, VersionMetrics] = {}
        self.asked: list[tuple[str, float, float | None]] = []

    def __call__(self, store: SQLiteStore, feature: str, version: str, since: float,
                 until: float | None) -> VersionMetrics:
        self.asked.append((version, since, until))
        return self.now.get(version, VersionMetrics(version))


def make_controller(store: SQLiteStore, registry: FakeRegistry, clock: Clock, metrics: Any,
                    spec: RolloutSpec, feature: str = "triage") -> RolloutController:
    return RolloutController(store, {feature: spec}, promote=registry.promote,
                             set_canary=registry.set_canary, gate_check=registry.gate_check,
                             champion=registry.champion, metrics=metrics, clock=clock)


@dataclass(frozen=True)
class Arm:
    """How one version behaves on live traffic."""

    error: float = 0.02
    validation: float = 0.01
    review: float = 0.05
    refusal: float = 0.01
    override: float = 0.10  # share of closed review items a human edits or rejects
    latency_mu: float = 4.6  # lognormal: median ~100 ms
    latency_sigma: float = 0.4
    cost: float = 0.001


@dataclass
class _Bucket:
    ts: float
    version: str
    counts: np.ndarray  # calls, errors, validation, reviews, refusals, overrides, verdicts
    latencies: np.ndarray
    cost: float


@dataclass
class MemoryTraffic:
    """Synthetic traffic kept as per-interval aggregates: the metrics source of the
    many-seed simulation (the real path writes events; see test_rollout_sim)."""

    rng: np.random.Generator
    arms: dict[str, Arm]
    rate: float  # calls per second
    latency_cap: int = 100  # latency samples kept per interval and version
    buckets: list[_Bucket] = field(default_factory=list)

    def serve(self, t0: float, t1: float, candidate: str | None, weight: float,
              champion: str) -> None:
        n = int(self.rng.poisson(self.rate * (t1 - t0)))
        n_cand = int(self.rng.binomial(n, weight)) if candidate else 0
        for version, k in ((candidate, n_cand), (champion, n - n_cand)):
            if not version or k == 0:
                continue
            arm, rng = self.arms[version], self.rng
            reviews = int(rng.binomial(k, arm.review))
            verdicts = int(rng.binomial(reviews, 0.6))
            counts = np.array([k, rng.binomial(k, arm.error), rng.binomial(k, arm.validation),
                               reviews, rng.binomial(k, arm.refusal),
                               rng.binomial(verdicts, arm.override), verdicts], dtype=np.int64)
            lat = rng.lognormal(arm.latency_mu, arm.latency_sigma, size=min(k, self.latency_cap))
            self.buckets.append(_Bucket((t0 + t1) / 2, version, counts, lat, arm.cost * k))

    def __call__(self, store: SQLiteStore, feature: str, version: str, since: float,
                 until: float | None) -> VersionMetrics:
        chosen = [b for b in self.buckets if b.version == version and b.ts >= since
                  and (until is None or b.ts < until)]
        if not chosen:
            return VersionMetrics(version)
        c = sum((b.counts for b in chosen), np.zeros(7, dtype=np.int64))
        lat = np.concatenate([b.latencies for b in chosen])
        return VersionMetrics(version, calls=int(c[0]), errors=int(c[1]),
                              validation_failures=int(c[2]), reviews=int(c[3]),
                              refusals=int(c[4]), overrides=int(c[5]), verdicts=int(c[6]),
                              latencies=tuple(lat.tolist()), cost_sum=sum(b.cost for b in chosen),
                              cost_known=int(c[0]))
