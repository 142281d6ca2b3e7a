"""Routing policies as a unit: the routing: block's validation, each policy's plan over a
route, cascade escalation and labels, eligibility from eval records, latency averages,
and the budget stage's downgrade."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from keel.errors import BudgetExceeded, ConfigError
from keel.gateway import Keel
from keel.spec import parse_spec
from keel.spec_routing import RoutingSpec
from keel.stages.budget import Balance, period_bounds
from keel.stages.circuit import CircuitBreaker, CircuitSettings
from keel.stages.route import Route
from keel.stages.route_policy import EvalRecord, Plan, RoutePolicy
from keel.types import Attempt, Call, OnFail, ValidationResult
from tests.conftest import basic_feature, settings_in, spec_with


@dataclass
class T:
    breaker: CircuitBreaker


def targets(*names: str) -> dict[str, T]:
    return {n: T(CircuitBreaker(CircuitSettings(failure_threshold=1))) for n in names}


def call(**kw: Any) -> Call:
    return Call("f", {"text": "x"}, "t1", **kw)


def policy(**routing: Any) -> RoutePolicy:
    return RoutePolicy(RoutingSpec.model_validate(routing))


ROUTE = Route(("big", "mid", "small"), "champion")
RNG = random.Random(0)


# --- the routing: block ---------------------------------------------------------------


@pytest.mark.parametrize(("routing", "message"), [
    ({"cascade": {"first": "nano", "min_confidence": 0.8}}, "'nano' is not a version"),
    ({"downgrade_to": "nano"}, "'nano' is not a version"),
    ({"cascade": {"first": "v2", "min_confidence": 0.8}, "latency": {}},
     "cascade and latency are both set"),
    ({"cascade": {"first": "v2", "on_validator_fail": "keep"}}, "never escalates"),
    ({"cheapest": {"dataset": "golden"}}, "a quality floor is needed"),
    ({"cheapest": {"dataset": "golden@0", "floors": {"accuracy": 0.9}}}, "routing.cheapest.dataset"),
    ({"downgrade_to": "v2", "downgrade_until": 0.5}, "downgrade_until"),
])
def test_bad_routing_blocks_are_refused(routing: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        spec_with(basic_feature(routing=routing))


def test_a_routing_block_loads() -> None:
    spec = spec_with(basic_feature(routing={"cascade": {"first": "v2", "min_confidence": 0.7},
                                            "downgrade_to": "v2", "downgrade_at": 0.8}))
    routing = spec.features["f"].routing
    assert routing is not None and routing.cascade is not None
    assert routing.cascade.first == ["v2"] and routing.downgrade_at == 0.8


# --- cascade --------------------------------------------------------------------------


def test_cascade_puts_the_cheap_steps_first_and_measures_against_the_strong_one() -> None:
    plan = policy(cascade={"first": ["small"], "min_confidence": 0.8}).plan(
        call(), ROUTE, targets("big", "mid", "small"), RNG)
    assert plan.route.versions == ("small", "big", "mid")
    assert (plan.cheap_steps, plan.planned, plan.baseline) == (1, 2, "big")


def test_cascade_is_off_for_streams() -> None:
    plan = policy(cascade={"first": ["small"], "min_confidence": 0.8}).plan(
        call(), ROUTE, targets("big", "mid", "small"), RNG, streaming=True)
    assert plan.route == ROUTE and plan.policy is None


def failed(on_fail: OnFail) -> list[ValidationResult]:
    return [ValidationResult("allowed_labels", False, on_fail, "not a label")]


def test_when_a_cascade_escalates() -> None:
    plan = policy(cascade={"first": ["small"], "min_confidence": 0.8}).plan(
        call(), ROUTE, targets("big", "mid", "small"), RNG)
    assert plan.escalate(0, 0.9, []) is None
    assert plan.escalate(0, 0.5, []) == "policy:cascade (confidence 0.500 < 0.8)"
    assert plan.escalate(0, None, []) == "policy:cascade (no confidence)"
    assert plan.escalate(0, 0.9, failed(OnFail.REFUSE)) == \
        "policy:cascade (validator allowed_labels failed)"
    assert plan.escalate(0, 0.9, failed(OnFail.LOG)) is None  # log-only validators do not count
    assert plan.escalate(1, 0.1, failed(OnFail.REFUSE)) is None  # the strong step is final

    keep = policy(cascade={"first": ["small"], "min_confidence": 0.8,
                           "unknown_confidence": "keep", "on_validator_fail": "keep"}).plan(
        call(), ROUTE, targets("big", "mid", "small"), RNG)
    assert keep.escalate(0, None, failed(OnFail.REFUSE)) is None
    assert keep.escalate(0, 0.2, []) is not None


def test_cascade_labels() -> None:
    plan = policy(cascade={"first": ["small"], "min_confidence": 0.8}).plan(
        call(), ROUTE, targets("big", "mid", "small"), RNG)
    ok = Attempt("small", "p", True, 1.0)
    rejected = Attempt("small", "p", True, 1.0, rejected_by="policy:cascade (no confidence)")
    assert plan.label((0, "small"), [ok]) == "cascade:kept"
    assert plan.label((1, "big"), [rejected, Attempt("big", "p", True, 1.0)]) == "cascade:escalated"
    # escalated, the strong step failed, the cheap answer served after all: not "kept"
    assert plan.label((0, "small"), [rejected, Attempt("big", "p", False, 1.0)]) == \
        "cascade:escalated"
    assert plan.label(None, [rejected]) == "cascade:failed"
    assert Plan(ROUTE).label(None, []) is None


# --- cheapest meeting a floor ----------------------------------------------------------


def record(accuracy: float, cost: float | None) -> EvalRecord:
    return EvalRecord("run", {"accuracy": accuracy, "cost_per_call_usd": cost,
                              "latency_p95_ms": 100.0})


def test_cheapest_picks_the_cheapest_eligible_target_of_the_route() -> None:
    p = policy(cheapest={"dataset": "golden@1", "floors": {"accuracy": 0.9}})
    ts = targets("big", "mid", "small")
    assert p.plan(call(), ROUTE, ts, RNG).label(None, []) == "cheapest:none"  # no records yet
    p.set_evals({"big": record(0.95, 0.02), "mid": record(0.92, 0.004),
                 "small": record(0.7, 0.0001), "other": record(0.99, 0.0)})
    plan = p.plan(call(), ROUTE, ts, RNG)
    # small fails the floor; "other" is not a target of this route
    assert plan.route.versions == ("mid", "big", "small")
    assert (plan.policy, plan.choice, plan.baseline) == ("cheapest", "picked", "big")


def test_cheapest_ranks_unknown_cost_last_and_honours_ceilings() -> None:
    p = policy(cheapest={"dataset": "golden", "floors": {"accuracy": 0.9},
                         "ceilings": {"latency_p95_ms": 500}})
    p.set_evals({"big": record(0.95, 0.02), "mid": record(0.95, None)})
    assert p.plan(call(), ROUTE, targets("big", "mid", "small"), RNG).route.versions[0] == "big"
    p.set_evals({"big": record(0.95, 0.02), "mid": EvalRecord("r", {"accuracy": 0.99,
                 "cost_per_call_usd": 0.001, "latency_p95_ms": 900.0})})
    assert p.plan(call(), ROUTE, targets("big", "mid", "small"), RNG).route.versions[0] == "big"
    p.set_evals({"mid": EvalRecord("r", {"cost_per_call_usd": 0.001})})  # no accuracy measured
    assert p.plan(call(), ROUTE, targets("big", "mid", "small"), RNG).choice == "none"


def test_a_canary_call_keeps_its_canary_first() -> None:
    p = policy(cheapest={"dataset": "golden", "floors": {"accuracy": 0.9}})
    p.set_evals({"mid": record(0.95, 0.001)})
    canary = Route(("big", "mid"), "canary")
    plan = p.plan(call(), canary, targets("big", "mid"), RNG)
    assert plan.route == canary and plan.choice == "canary"


# --- latency ---------------------------------------------------------------------------


def test_latency_prefers_the_fastest_closed_circuit() -> None:
    p = policy(latency={"alpha": 0.5, "explore": 0})
    ts = targets("big", "mid", "small")
    # never measured counts as 0: each target gets tried once
    assert p.plan(call(), ROUTE, ts, RNG).route.versions[0] == "big"
    p.observe([Attempt("big", "p", True, 300.0), Attempt("mid", "p", True, 40.0),
               Attempt("small", "p", True, 90.0), Attempt("mid", "p", False, 5000.0)])
    assert p.latency_ms == {"big": 300.0, "mid": 40.0, "small": 90.0}  # failures not counted
    p.observe([Attempt("mid", "p", True, 200.0)])
    assert p.latency_ms["mid"] == 120.0  # 0.5 * 200 + 0.5 * 40
    plan = p.plan(call(), ROUTE, ts, RNG)
    assert plan.route.versions == ("small", "big", "mid") and plan.choice == "fastest"
    ts["small"].breaker.record_failure()  # threshold 1: open
    assert p.plan(call(), ROUTE, ts, RNG).route.versions[0] == "mid"
    for t in ts.values():
        t.breaker.record_failure()
    assert p.plan(call(), ROUTE, ts, RNG).choice == "none"


def test_latency_explores_now_and_then() -> None:
    p = policy(latency={"explore": 0.5})
    p.observe([Attempt("big", "p", True, 300.0), Attempt("mid", "p", True, 4.0),
               Attempt("small", "p", True, 90.0)])
    rng = random.Random(7)
    choices = [p.plan(call(), ROUTE, targets("big", "mid", "small"), rng) for _ in range(200)]
    explored = [c for c in choices if c.choice == "explore"]
    assert 60 < len(explored) < 140
    assert "mid" not in {c.route.versions[0] for c in explored}  # another target than the fastest
    assert {c.route.versions[0] for c in choices if c.choice == "fastest"} == {"mid"}


# --- budget downgrade ------------------------------------------------------------------


def test_a_downgraded_call_tries_only_the_cheaper_version() -> None:
    p = policy(cascade={"first": ["small"], "min_confidence": 0.8}, downgrade_to="small")
    plan = p.plan(call(downgrade="small"), ROUTE, targets("big", "mid", "small"), RNG)
    assert plan.route.versions == ("small",)
    assert plan.label((0, "small"), []) == "budget:downgraded" and plan.baseline == "big"


def budget_keel(tmp_path: Path, **routing: Any) -> Keel:
    feature = basic_feature(routing=routing) if routing else basic_feature()
    spec = parse_spec({
        "providers": {"p1": {"type": "scripted"}, "p2": {"type": "scripted"}},
        "features": {"f": feature},
        "budgets": [{"name": "daily", "scope": "feature", "limit_usd": 1.0}]})
    return Keel(spec, settings_in(tmp_path))


async def admit_at(keel: Keel, spent: float) -> Call:
    gate = keel.pipeline.budgets
    assert gate is not None
    start, end = period_bounds("day", time.time())
    gate.limits.balances[("daily", "f")] = Balance(spent, start, end)
    c = call()
    await gate.admit(keel.features["f"], c)
    return c


async def test_the_budget_stage_downgrades_from_the_configured_share(tmp_path: Path) -> None:
    keel = budget_keel(tmp_path, downgrade_to="v2", downgrade_at=0.5, downgrade_until=1.2)
    assert (await admit_at(keel, 0.4)).downgrade is None
    assert (await admit_at(keel, 0.6)).downgrade == "v2"
    assert (await admit_at(keel, 1.1)).downgrade == "v2"  # past the limit: still served
    with pytest.raises(BudgetExceeded):
        await admit_at(keel, 1.25)  # past downgrade_until: refused


async def test_without_downgrade_a_spent_budget_refuses(tmp_path: Path) -> None:
    keel = budget_keel(tmp_path)
    assert (await admit_at(keel, 0.95)).downgrade is None
    with pytest.raises(BudgetExceeded):
        await admit_at(keel, 1.0)
