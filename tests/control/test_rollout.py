"""The rollout state machine, driven by scripted metrics and a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from keel.control.live_metrics import VersionMetrics
from keel.control.rollout import CONTROLLER, RolloutController, RolloutStore, current_splits
from keel.errors import (
    FeatureNotFound,
    GateRequired,
    InvalidRequest,
    RolloutConflict,
    RolloutNotFound,
    VersionNotFound,
)
from keel.spec import RolloutSLOSpec, RolloutSpec
from keel.store import Store
from tests.backends import store_at
from tests.control.rollout_fakes import Clock, FakeRegistry, Scripted, make_controller

SPEC = RolloutSpec(steps=[0.05, 0.5, 1.0], min_calls=200, min_step_s=60,
                   progress_deadline_s=600, require_gate=True)


def good(version: str, calls: int = 1000, errors: int = 20) -> VersionMetrics:
    return VersionMetrics(version, calls=calls, errors=errors,
                          latencies=tuple(100.0 + i % 40 for i in range(calls)))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = store_at(tmp_path / "keel.db")
    s.migrate()
    return s


class World:
    def __init__(self, store: Store, spec: RolloutSpec = SPEC,
                 gate_runs: dict[str, str] | None = None) -> None:
        self.store = store
        self.clock = Clock()
        self.registry = FakeRegistry(gate_runs={"v2": "run-1"} if gate_runs is None else gate_runs)
        self.metrics = Scripted()
        self.c: RolloutController = make_controller(store, self.registry, self.clock,
                                                    self.metrics, spec)

    def start(self, **kw: object) -> int:
        return self.c.start("triage", "v2", actor="cli:ann", **kw).id  # type: ignore[arg-type]

    def transitions(self, rollout_id: int) -> list[tuple[str | None, str, float, str]]:
        return [(t.from_state, t.to_state, t.weight, t.actor)
                for t in self.c.rollouts.transitions(rollout_id)]


def test_start_sets_the_canary_and_records_it(store: Store) -> None:
    w = World(store)
    rid = w.start()
    rollout = w.c.rollouts.get(rid)
    assert (rollout.state, rollout.step, rollout.weight) == ("running", 0, 0.05)
    assert (rollout.candidate, rollout.baseline, rollout.gate_run) == ("v2", "v1", "run-1")
    assert not rollout.forced and rollout.created_by == "cli:ann"
    assert w.registry.aliases == {"champion": "v1", "canary": "v2"}
    [t] = w.c.rollouts.transitions(rid)
    assert (t.from_state, t.to_state, t.actor, t.weight) == (None, "running", "cli:ann", 0.05)
    assert current_splits(store) == {"triage": ("v2", 0.05, rid)}
    # one active rollout per feature
    with pytest.raises(RolloutConflict, match="already has an active rollout"):
        w.c.start("triage", "v3", actor="cli:bob", force=True)


def test_start_refusals(store: Store) -> None:
    w = World(store, gate_runs={})
    with pytest.raises(GateRequired, match="--force"):
        w.start()
    with pytest.raises(RolloutConflict, match="already the champion"):
        w.c.start("triage", "v1", actor="a", force=True)
    with pytest.raises(FeatureNotFound):
        w.c.start("nope", "v2", actor="a")
    with pytest.raises(InvalidRequest, match=r"last step must be 1\.0"):
        w.start(force=True, steps=[0.1, 0.5])
    # the canary alias cannot be set (unknown version): the rollout is aborted, not left active
    with pytest.raises(VersionNotFound):
        w.c.start("triage", "v9", actor="a", force=True)
    aborted = w.c.rollouts.latest("triage")
    assert aborted is not None and aborted.state == "aborted" and not w.c.rollouts.active()
    # forced start without a gate run is recorded as forced; custom steps are snapshotted
    rid = w.start(force=True, steps=[0.1, 1.0])
    rollout = w.c.rollouts.get(rid)
    assert rollout.forced and rollout.weight == 0.1 and rollout.spec.steps == [0.1, 1.0]
    assert "forced" in w.c.rollouts.transitions(rid)[0].reason


def test_equal_candidate_walks_every_step_then_promotes(store: Store) -> None:
    w = World(store)
    rid = w.start()
    w.metrics.now = {"v1": good("v1"), "v2": good("v2")}
    assert w.c.tick() == []  # enough calls, but min_step_s has not passed
    weights = []
    for _ in range(3):
        w.clock.advance(60)
        [t] = w.c.tick()
        weights.append(t.weight)
        assert t.actor == CONTROLLER and t.metrics is not None
        assert t.metrics["judgement"]["verdict"] == "pass"  # type: ignore[index]
    assert weights == [0.5, 1.0, 1.0]
    rollout = w.c.rollouts.get(rid)
    assert rollout.state == "promoted"
    assert w.registry.aliases == {"champion": "v2"}  # champion moved, canary removed
    assert w.registry.moves[-2]["gate_run"] == "run-1"
    assert [s for _, s, _, _ in w.transitions(rid)] == ["running"] * 3 + ["promoted"]
    assert current_splits(store) == {}
    # at 100% the champion is compared over the whole rollout, the candidate over the step
    last_windows = {v: since for v, since, _ in w.metrics.asked[-2:]}
    assert last_windows["v1"] == rollout.created_at and last_windows["v2"] > rollout.created_at
    assert w.c.tick() == []


def test_worse_candidate_rolls_back_with_its_metrics(store: Store) -> None:
    w = World(store)
    rid = w.start()
    w.metrics.now = {"v1": good("v1", 20000, 400), "v2": good("v2", 2000, 120)}  # 2% vs 6%
    w.clock.advance(60)
    [t] = w.c.tick()
    assert (t.from_state, t.to_state, t.weight, t.actor) == ("running", "rolled_back", 0.0,
                                                             CONTROLLER)
    assert "error rate 6.00% vs 2.00%" in t.reason
    assert t.metrics is not None and t.metrics["candidate"]["errors"] == 120  # type: ignore[index]
    assert w.registry.aliases == {"champion": "v1"}
    assert w.c.rollouts.get(rid).reason == t.reason
    assert current_splits(store) == {}


def test_no_judgement_before_min_calls_then_deadline(store: Store) -> None:
    w = World(store)
    rid = w.start()
    w.metrics.now = {"v1": good("v1", 5000), "v2": good("v2", 150, errors=30)}  # 20%, few calls
    for _ in range(3):  # before min_step_s: nothing at all
        w.clock.advance(15)
        assert w.c.tick() == []
    w.clock.advance(15)
    [note] = w.c.tick()  # inconclusive: noted once
    assert note.to_state == "running" and "inconclusive" in note.reason
    assert w.c.rollouts.get(rid).inconclusive_since == w.clock.t
    for _ in range(9):  # no spam while waiting
        w.clock.advance(60)
        assert w.c.tick() == []
    w.clock.advance(60)  # 600 s inconclusive: rolled back
    [t] = w.c.tick()
    assert t.to_state == "rolled_back" and "progress deadline" in t.reason
    assert w.registry.aliases == {"champion": "v1"}


def test_no_traffic_rolls_back_after_the_deadline(store: Store) -> None:
    w = World(store)
    rid = w.start()
    w.clock.advance(60)
    [note] = w.c.tick()
    assert "candidate 0, champion 0" in note.reason
    w.clock.advance(599)
    assert w.c.tick() == []
    w.clock.advance(1)
    [t] = w.c.tick()
    assert t.to_state == "rolled_back"
    assert [s for _, s, _, _ in w.transitions(rid)] == ["running", "running", "rolled_back"]


def test_inconclusive_then_enough_data_moves_on(store: Store) -> None:
    w = World(store)
    rid = w.start()
    w.clock.advance(60)
    assert len(w.c.tick()) == 1  # inconclusive
    w.metrics.now = {"v1": good("v1"), "v2": good("v2")}
    w.clock.advance(60)
    [t] = w.c.tick()
    assert t.weight == 0.5 and w.c.rollouts.get(rid).inconclusive_since is None


def test_hard_slo_breach_rolls_back_at_once(store: Store, tmp_path: Path) -> None:
    spec = SPEC.model_copy(update={"slo": RolloutSLOSpec(error_rate=0.5, min_calls=20)})
    w = World(store, spec)
    w.start()
    w.metrics.now = {"v2": VersionMetrics("v2", calls=25, errors=25)}  # the candidate is down
    [t] = w.c.tick()  # no min_step_s, no min_calls, no champion data needed
    assert t.to_state == "rolled_back" and "hard SLO breach: error rate" in t.reason
    assert t.metrics is not None and t.metrics["judgement"]["verdict"] == "breach"  # type: ignore[index]
    # while paused too
    w2 = World(store_at(tmp_path / "other.db"), spec)
    w2.store.migrate()
    w2.start()
    w2.c.pause("triage", actor="cli:ann")
    w2.metrics.now = {"v2": VersionMetrics("v2", calls=25, errors=25)}
    [t] = w2.c.tick()
    assert (t.from_state, t.to_state) == ("paused", "rolled_back")


def test_manual_actions(store: Store) -> None:
    w = World(store, gate_runs={})
    for action in (w.c.pause, w.c.resume, w.c.rollback):
        with pytest.raises(RolloutNotFound):
            action("triage", actor="a")
    rid = w.start(force=True)
    w.metrics.now = {"v1": good("v1"), "v2": good("v2")}
    w.c.pause("triage", actor="cli:ann", reason="lunch")
    with pytest.raises(RolloutConflict, match="paused"):
        w.c.pause("triage", actor="cli:ann")
    w.clock.advance(600)
    assert w.c.tick() == []  # paused: no steps
    t = w.c.resume("triage", actor="cli:bob")
    assert t.to_state == "running" and w.c.rollouts.get(rid).step_started_at == w.clock.t
    with pytest.raises(GateRequired):
        w.c.promote("triage", actor="cli:ann")
    t = w.c.promote("triage", actor="cli:ann", force=True)
    assert t.to_state == "promoted" and "forced" in t.reason
    assert w.registry.aliases == {"champion": "v2"} and w.registry.moves[-2]["force"]
    with pytest.raises(RolloutNotFound):
        w.c.rollback("triage", actor="a")
    rid2 = w.c.start("triage", "v3", actor="cli:ann", force=True)
    t = w.c.rollback("triage", actor="cli:bob", reason="wrong prompt")
    assert (t.to_state, t.reason, t.actor) == ("rolled_back", "wrong prompt", "cli:bob")
    # a person's action is recorded with the numbers they saw
    assert t.metrics is not None and t.metrics["candidate"]["version"] == "v3"  # type: ignore[index]
    assert t.metrics["baseline"]["calls"] == 1000  # type: ignore[index]
    assert [(a, s) for _, s, _, a in w.transitions(rid2.id)] == [
        ("cli:ann", "running"), ("cli:bob", "rolled_back")]
    # every transition of every rollout names its actor
    for r in (rid, rid2.id):
        assert all(t.actor for t in w.c.rollouts.transitions(r))


def test_auto_promotion_waits_for_a_gate_run(store: Store) -> None:
    w = World(store, RolloutSpec(steps=[1.0], min_calls=200, min_step_s=0), gate_runs={})
    with pytest.raises(GateRequired):
        w.start()
    # not forced but the gate is required: every step passes, then it pauses for the gate
    w2 = World(store, RolloutSpec(steps=[1.0], min_calls=200, min_step_s=0))
    rid = w2.start()
    w2.registry.gate_runs.clear()  # e.g. the gate dataset was re-pinned meanwhile
    w2.metrics.now = {"v1": good("v1"), "v2": good("v2")}
    [t] = w2.c.tick()
    assert t.to_state == "paused" and "no passing eval run" in t.reason
    assert w2.registry.aliases["champion"] == "v1"
    w2.registry.gate_runs["v2"] = "run-2"
    assert w2.c.promote("triage", actor="cli:ann").to_state == "promoted"
    assert w2.c.rollouts.get(rid).state == "promoted"


def test_stale_changes_conflict(store: Store) -> None:
    w = World(store)
    rid = w.start()
    stale = w.c.rollouts.get(rid)
    w.c.pause("triage", actor="cli:ann")
    with pytest.raises(RolloutConflict, match="changed meanwhile"):
        RolloutStore(store).change(stale, "running", actor="controller", reason="x",
                                   now=w.clock.t, step=1, weight=0.5)
    with pytest.raises(RolloutNotFound):
        RolloutStore(store).get(999)


def test_wired_to_the_registry(store: Store) -> None:
    """controller_for: the real registry's aliases; no gate dataset pinned means no gate run."""
    from keel.control.registry import Registry
    from keel.control.rollout import controller_for
    from keel.spec import parse_spec

    spec = parse_spec({"features": {"triage": {
        "output": {"kind": "label", "labels": ["a", "b"]},
        "versions": {v: {"provider": "local", "model": f"m-{v}"} for v in ("v1", "v2")},
        "aliases": {"champion": "v1"}}}})
    registry = Registry(store)
    for name, version in spec.features["triage"].versions.items():
        registry.register("triage", name, version, actor="keel.yaml", source="keel.yaml")
    registry.seed_aliases("triage", {"champion": "v1"}, actor="keel.yaml")
    controller = controller_for(store, spec)
    with pytest.raises(GateRequired):
        controller.start("triage", "v2", actor="cli:ann")
    rollout = controller.start("triage", "v2", actor="cli:ann", force=True)
    assert rollout.forced and registry.aliases("triage") == {"champion": "v1", "canary": "v2"}
    controller.promote("triage", actor="cli:ann", force=True)
    assert registry.aliases("triage") == {"champion": "v2"}
    moves = registry.history("triage")
    assert moves[1].alias == "champion" and moves[1].forced and moves[1].actor == "cli:ann"
