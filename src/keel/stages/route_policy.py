"""Cost-aware routing: a feature's ``routing:`` policy reorders the targets of the route
the router chose (aliases and canary splits are decided first, unchanged).

* ``cascade``: the cheap versions first; a cheap answer whose confidence is below the
  threshold, or whose validator failed, is escalated to the next target (in the end the
  strong step: the first target of the route that is not a cheap step).
* ``cheapest``: the cheapest target of the route whose eval record (its latest finished
  eval run on the named dataset, set by the control plane when runs land) meets the
  floors; targets with no record are not eligible.
* ``latency``: the target with the lowest moving-average latency among those whose
  circuit is closed; now and then (``explore``) another healthy one, to keep it measured.
* budget downgrade: when the budget stage saw a budget of the call nearly spent it sets
  ``Call.downgrade``; the call then tries only that cheaper version.

A canary-routed call keeps the canary first under ``cheapest`` and ``latency`` (a
rollout must measure the canary); a cascade's strong step is the canary for it.

Recorded on the Outcome (then the Event): ``policy`` ("cascade:kept",
"cascade:escalated", "cascade:failed", "cheapest:picked", "cheapest:none",
"latency:fastest", "latency:explore", "budget:downgraded", ...) and ``saved_usd``:

    saved_usd = price(baseline, tokens of the served answer) - the call's actual cost

where the baseline is the cascade's strong step, else the route's first target (what
the fixed route would have tried). A cascade kept at the cheap step saves what the
strong target would have cost for the same tokens; an escalation saves minus the cheap
steps' cost (<= 0); None when a price is unknown or no answer was served.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from keel.pricing import Pricing
from keel.spec_routing import CascadeSpec, RoutingSpec
from keel.stages.circuit import CircuitBreaker, CircuitState
from keel.stages.route import Route
from keel.types import JSON, Attempt, Call, Completion, OnFail, Outcome, ValidationResult

if TYPE_CHECKING:
    from keel.feature import Feature

CASCADE = "policy:cascade"  # the prefix of Attempt.rejected_by when a cascade escalates


class HasBreaker(Protocol):
    @property
    def breaker(self) -> CircuitBreaker: ...


@dataclass(frozen=True, slots=True)
class EvalRecord:
    """A version's latest finished eval run on the ``cheapest`` policy's dataset."""

    run_id: str
    metrics: Mapping[str, JSON]

    @property
    def cost(self) -> float | None:
        value = self.metrics.get("cost_per_call_usd")
        return float(value) if isinstance(value, int | float) else None

    def meets(self, floors: Mapping[str, float], ceilings: Mapping[str, float]) -> bool:
        def num(name: str) -> float | None:
            value = self.metrics.get(name)
            return float(value) if isinstance(value, int | float) else None

        return (all((v := num(m)) is not None and v >= low for m, low in floors.items())
                and all((v := num(m)) is not None and v <= high for m, high in ceilings.items()))


@dataclass(frozen=True, slots=True)
class Plan:
    """The targets one call tries, in order, and what the policy needs to settle it."""

    route: Route
    policy: str | None = None  # cascade | cheapest | latency | budget; None: fixed route
    choice: str | None = None  # the label's second half, when known at planning
    baseline: str | None = None  # the version saved_usd is measured against
    cheap_steps: int = 0  # cascade: the leading targets whose answers may be escalated
    planned: int = 1  # targets before the fallbacks: an answer from later is a fallback
    cascade: CascadeSpec | None = None

    def escalate(self, index: int, confidence: float | None,
                 validations: Sequence[ValidationResult]) -> str | None:
        """Why the answer of target ``index`` goes on to the next target; None: keep it."""
        spec = self.cascade
        if spec is None or index >= self.cheap_steps:
            return None
        if spec.on_validator_fail == "escalate":
            failed = next((v for v in validations
                           if not v.passed and v.on_fail is not OnFail.LOG), None)
            if failed is not None:
                return f"{CASCADE} (validator {failed.validator} failed)"
        if spec.min_confidence is None:
            return None
        if confidence is None:
            return f"{CASCADE} (no confidence)" if spec.unknown_confidence == "escalate" else None
        if confidence < spec.min_confidence:
            return f"{CASCADE} (confidence {confidence:.3f} < {spec.min_confidence:g})"
        return None

    def label(self, served: tuple[int, str] | None, attempts: Sequence[Attempt]) -> str | None:
        if self.policy is None:
            return None
        if self.cascade is None:
            return f"{self.policy}:{self.choice}"
        if served is None:
            return "cascade:failed"
        index, version = served
        last = next((a for a in reversed(attempts) if a.version == version), None)
        rejected = last is not None and (last.rejected_by or "").startswith(CASCADE)
        return "cascade:kept" if index < self.cheap_steps and not rejected else "cascade:escalated"


def _first(route: Route, version: str) -> Route:
    return Route((version, *(v for v in route.versions if v != version)), route.alias)


class RoutePolicy:
    """One feature's policy and what it learns: eval records (set by the control plane
    when eval runs land, never per call) and the latency of each target."""

    def __init__(self, spec: RoutingSpec) -> None:
        self.spec = spec
        self.latency_ms: dict[str, float] = {}  # version -> moving average
        self.evals: dict[str, EvalRecord] = {}
        self.eligible: dict[str, float | None] = {}  # version -> cost per call

    def set_evals(self, records: Mapping[str, EvalRecord]) -> None:
        spec = self.spec.cheapest
        self.evals = dict(records)
        self.eligible = {} if spec is None else {
            v: r.cost for v, r in records.items() if r.meets(spec.floors, spec.ceilings)}

    def plan(self, call: Call, route: Route, targets: Mapping[str, HasBreaker],
             rng: random.Random, *, streaming: bool = False) -> Plan:
        spec, versions = self.spec, route.versions
        baseline = versions[0]
        if call.downgrade is not None and call.downgrade in targets:
            # no fallback to the dearer targets: the budget is nearly spent
            return Plan(Route((call.downgrade,), route.alias), "budget", "downgraded", baseline)
        if spec.cascade is not None and not streaming:  # a streamed answer cannot be taken back
            cheap = tuple(v for v in spec.cascade.first if v in targets)
            rest = tuple(v for v in versions if v not in cheap)
            return Plan(Route((*cheap, *rest), route.alias), "cascade", None,
                        rest[0] if rest else None, len(cheap), len(cheap) + 1, spec.cascade)
        if spec.cheapest is not None:
            if route.alias == "canary":
                return Plan(route, "cheapest", "canary", baseline)
            # unknown cost ranks last; ties keep the route's order
            ranked = [(self.eligible[v] is None, self.eligible[v] or 0.0, i, v)
                      for i, v in enumerate(versions) if v in self.eligible and v in targets]
            if not ranked:
                return Plan(route, "cheapest", "none", baseline)
            return Plan(_first(route, min(ranked)[3]), "cheapest", "picked", baseline)
        if spec.latency is not None:
            if route.alias == "canary":
                return Plan(route, "latency", "canary", baseline)
            healthy = [v for v in versions
                       if v in targets and targets[v].breaker.state is CircuitState.CLOSED]
            if not healthy:
                return Plan(route, "latency", "none", baseline)
            # never measured: 0, so each target is tried once before the averages decide
            fastest = min(healthy, key=lambda v: self.latency_ms.get(v, 0.0))
            others = [v for v in healthy if v != fastest]
            if others and rng.random() < spec.latency.explore:
                return Plan(_first(route, rng.choice(others)), "latency", "explore", baseline)
            return Plan(_first(route, fastest), "latency", "fastest", baseline)
        return Plan(route)

    def observe(self, attempts: Sequence[Attempt]) -> None:
        """Fold the successful attempts' latencies into the moving averages."""
        spec = self.spec.latency
        if spec is None:
            return
        for a in attempts:
            if a.ok:
                old = self.latency_ms.get(a.version)
                self.latency_ms[a.version] = a.latency_ms if old is None else (
                    spec.alpha * a.latency_ms + (1 - spec.alpha) * old)


def plan_route(feature: Feature, call: Call, route: Route, rng: random.Random, *,
               streaming: bool = False) -> Plan:
    """The plan of one call: the feature's policy over its route, or the route as it is
    (no policy; an eval call, which is served by exactly its pinned version)."""
    policy = feature.routing
    if policy is None or call.pin is not None:
        return Plan(route)
    return policy.plan(call, route, feature.targets, rng, streaming=streaming)


def settle(plan: Plan, feature: Feature, pricing: Pricing, outcome: Outcome,
           answer: tuple[int, str, Completion, JSON] | None) -> None:
    """Record the policy's choice and what it saved on the outcome; teach the policy the
    latencies of this call's attempts."""
    if plan.policy is None:
        return
    if feature.routing is not None:
        feature.routing.observe(outcome.attempts)
    served = None if answer is None else (answer[0], answer[1])
    outcome.policy = plan.label(served, outcome.attempts)
    outcome.saved_usd = None
    base = feature.targets.get(plan.baseline) if plan.baseline is not None else None
    if answer is None or base is None or outcome.cost_usd is None:
        return
    would = pricing.cost_usd(base.provider_type, feature.spec.versions[base.version],
                             answer[2].usage)
    if would is not None:
        outcome.saved_usd = round(would - outcome.cost_usd, 12)
