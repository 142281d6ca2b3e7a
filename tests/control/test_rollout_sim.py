"""Rollouts under simulated traffic: a worse candidate is rolled back, an equal one is
promoted, and over many seeds false rollbacks stay under alpha (5%).

Many seeds run on aggregated in-memory traffic (:class:`MemoryTraffic`); one seed of
each kind runs the real path: every call routed by :class:`Router` with a sticky
:class:`Split`, written as an :class:`Event`, read back by ``live_metrics``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from keel.control.live_metrics import live_metrics
from keel.control.rollout import RolloutController, current_splits
from keel.spec import RolloutSpec
from keel.stages.route import Router, Split
from keel.store import Store
from keel.types import Attempt, Call, Decision, Event, OnFail, ValidationResult
from tests.backends import store_at
from tests.control.rollout_fakes import (
    Arm,
    Clock,
    FakeRegistry,
    MemoryTraffic,
    OneConnectionStore,
    make_controller,
)

FEATURE = "triage"
# the defaults (steps 1, 5, 25, 50, 100%; alpha 0.05; min_effect 2 points), a step of at
# least 5 minutes, ticks every minute, 50 calls a second
SIM_SPEC = RolloutSpec(min_calls=200, min_step_s=300, progress_deadline_s=3600)
RATE, TICK_S, LIMIT_S = 50.0, 60.0, 6 * 3600.0
SEEDS = 200
CHAMPION = Arm(error=0.02)
TWICE_AS_BAD = Arm(error=0.04)


def run_rollout(store: Store, seed: int, candidate: Arm,
                spec: RolloutSpec = SIM_SPEC) -> tuple[str, list[float]]:
    """One rollout on in-memory traffic: (final state, the weights it went through)."""
    clock = Clock()
    registry = FakeRegistry(gate_runs={"v2": "run-1"})
    traffic = MemoryTraffic(np.random.default_rng(seed), {"v1": CHAMPION, "v2": candidate}, RATE)
    controller = make_controller(store, registry, clock, traffic, spec)
    rollout = controller.start(FEATURE, "v2", actor="sim")
    weights, state = [rollout.weight], rollout.state
    end = clock.t + LIMIT_S
    while clock.t < end and state in ("running", "paused"):
        traffic.serve(clock.t, clock.t + TICK_S, "v2", weights[-1], "v1")
        clock.advance(TICK_S)
        for t in controller.tick():  # what the server's sync loop would apply to its router
            state = t.to_state
            if t.to_state == "running" and t.weight != weights[-1]:
                weights.append(t.weight)
    return controller.rollouts.get(rollout.id).state, weights


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = store_at(tmp_path / "keel.db")
    s.migrate()
    return s


@pytest.fixture
def fast_store(tmp_path: Path) -> Iterator[Store]:
    """The same store through one kept-open connection: the many-seed runs."""
    s = OneConnectionStore(tmp_path / "sim.db")
    s.migrate()
    yield s
    s.close()


def test_twice_as_bad_is_rolled_back(store: Store) -> None:
    state, weights = run_rollout(store, 1, TWICE_AS_BAD)
    assert state == "rolled_back" and weights[-1] < 1.0


def test_equal_is_promoted_through_every_step(store: Store) -> None:
    state, weights = run_rollout(store, 1, CHAMPION)
    assert state == "promoted"
    assert weights == SIM_SPEC.steps


def test_false_rollbacks_and_power_over_many_seeds(fast_store: Store) -> None:
    equal = [run_rollout(fast_store, seed, CHAMPION)[0] for seed in range(SEEDS)]
    worse = [run_rollout(fast_store, 10_000 + seed, TWICE_AS_BAD)[0] for seed in range(SEEDS)]
    false_rate = equal.count("rolled_back") / SEEDS
    power = worse.count("rolled_back") / SEEDS
    print(f"\nfalse rollbacks (equal candidate): {false_rate:.1%} of {SEEDS} seeds; "
          f"promoted {equal.count('promoted')}")
    print(f"power (error rate 4% vs 2%): {power:.1%} of {SEEDS} seeds rolled back; "
          f"promoted {worse.count('promoted')}")
    assert set(equal) <= {"promoted", "rolled_back"}
    assert false_rate < 0.05
    assert power >= 0.8


def test_far_worse_is_always_caught(fast_store: Store) -> None:
    """Three times the error rate, or double the p95 latency: rolled back every time."""
    triple = [run_rollout(fast_store, seed, Arm(error=0.06))[0] for seed in range(20)]
    slow = [run_rollout(fast_store, seed, Arm(latency_mu=4.6 + np.log(2)))[0]
            for seed in range(20)]
    assert triple.count("rolled_back") == 20 and slow.count("rolled_back") == 20


# --- the real path: routed calls, events in SQLite, live_metrics ----------------------


class EventTraffic:
    """Calls from a pool of users, each routed by a real Router and written as an Event."""

    def __init__(self, store: Store, rng: np.random.Generator, arms: dict[str, Arm],
                 rate: float, users: int = 3000) -> None:
        self.store, self.rng, self.arms, self.rate, self.users = store, rng, arms, rate, users
        self.router = Router({"champion": "v1"}, [])

    def serve(self, t0: float, t1: float, aliases: dict[str, str]) -> None:
        self.router.set_aliases(aliases)
        split = current_splits(self.store).get(FEATURE)
        self.router.set_split(None if split is None else Split(split[1], "user", str(split[2])))
        n = int(self.rng.poisson(self.rate * (t1 - t0)))
        events = []
        for ts in np.sort(self.rng.uniform(t0, t1, size=n)):
            user = f"u{self.rng.integers(self.users)}"
            call = Call(FEATURE, {"text": "hi"}, uuid.uuid4().hex, user=user)
            version = self.router.route(call).versions[0]
            events.append(self.event(call, version, float(ts)))
        conn = self.store.connect()
        try:
            self.store.write_events(conn, events)
        finally:
            conn.close()

    def event(self, call: Call, version: str, ts: float) -> Event:
        arm, u = self.arms[version], self.rng.random(4)
        decision = (Decision.ERROR if u[0] < arm.error else Decision.REVIEW if u[1] < arm.review
                    else Decision.REFUSED if u[2] < arm.refusal else Decision.ACCEPTED)
        validations = [ValidationResult("allowed_labels", bool(u[3] >= arm.validation),
                                        OnFail.REFUSE)]
        latency = float(self.rng.lognormal(arm.latency_mu, arm.latency_sigma))
        return Event(
            trace_id=call.trace_id, ts=ts, feature=FEATURE,
            version=None if decision is Decision.ERROR else version, decision=decision,
            confidence=0.9, latency_ms=latency, timings_ms={"total": latency}, input_tokens=10,
            output_tokens=2, cost_usd=arm.cost, attempts=[Attempt(version, "p", True, latency)],
            validations=validations, input=None, output=None, user=call.user, routed=version)


def run_events(store: Store, seed: int, candidate: Arm,
               spec: RolloutSpec) -> tuple[str, RolloutController]:
    clock = Clock()
    registry = FakeRegistry(gate_runs={"v2": "run-1"})
    traffic = EventTraffic(store, np.random.default_rng(seed), {"v1": CHAMPION, "v2": candidate},
                           rate=20.0)
    controller = make_controller(store, registry, clock, live_metrics, spec)
    rollout = controller.start(FEATURE, "v2", actor="sim")
    end = clock.t + LIMIT_S
    while clock.t < end and controller.rollouts.get(rollout.id).active:
        traffic.serve(clock.t, clock.t + TICK_S, dict(registry.aliases))
        clock.advance(TICK_S)
        controller.tick()
    return controller.rollouts.get(rollout.id).state, controller


REAL_SPEC = RolloutSpec(steps=[0.05, 0.25, 1.0], min_calls=150, min_step_s=300)


def test_real_path_equal_promoted_and_sticky(store: Store) -> None:
    state, controller = run_events(store, 7, CHAMPION, REAL_SPEC)
    assert state == "promoted"
    transitions = controller.rollouts.transitions(1)
    assert [t.weight for t in transitions] == [0.05, 0.25, 1.0, 1.0]
    assert all(t.actor in ("sim", "controller") for t in transitions)
    passed = [t for t in transitions[1:] if t.metrics]
    assert all(t.metrics["candidate"]["calls"] >= 150 for t in passed)  # type: ignore[index]
    # sticky: ordered by time, each user's calls go v1 ... v1 v2 ... v2, never back
    conn = store.connect()
    try:
        rows = conn.execute("SELECT user_id, routed FROM events ORDER BY ts").fetchall()
    finally:
        conn.close()
    seen: dict[str, str] = {}
    for user, routed in rows:
        assert not (seen.get(user) == "v2" and routed == "v1"), f"{user} moved back"
        seen[user] = routed


def test_real_path_twice_as_bad_rolled_back(store: Store) -> None:
    bad = Arm(error=0.04, review=0.10)
    state, controller = run_events(store, 7, bad, REAL_SPEC)
    assert state == "rolled_back"
    last = controller.rollouts.transitions(1)[-1]
    assert last.actor == "controller" and "worse than the champion" in last.reason


# --- the split itself -------------------------------------------------------------------


def test_sticky_split_by_user() -> None:
    router = Router({"champion": "v1", "canary": "v2"}, [])
    users = [f"user-{i}" for i in range(4000)]
    previous: set[str] = set()
    for weight in (0.01, 0.05, 0.25, 0.5, 1.0):
        router.set_split(Split(weight, "user", "42"))
        canary = {u for u in users if router.choose(Call(FEATURE, {}, "t", user=u)) == "canary"}
        # the same user gets the same alias every time at this weight
        again = {u for u in users if router.choose(Call(FEATURE, {}, "t", user=u)) == "canary"}
        assert canary == again
        assert abs(len(canary) / len(users) - weight) < 0.02 + weight * 0.1
        # raising the weight only adds canary users, never moves one back
        assert previous <= canary
        previous = canary
    # a new rollout (salt) reshuffles who is in the canary
    router.set_split(Split(0.25, "user", "42"))
    a = {u for u in users if router.choose(Call(FEATURE, {}, "t", user=u)) == "canary"}
    router.set_split(Split(0.25, "user", "43"))
    b = {u for u in users if router.choose(Call(FEATURE, {}, "t", user=u)) == "canary"}
    assert a != b
    # without a user, the session is the key
    router.set_split(Split(0.5, "user", "42"))
    sessions = [router.choose(Call(FEATURE, {}, "t", session="s-1")) for _ in range(20)]
    assert len(set(sessions)) == 1
