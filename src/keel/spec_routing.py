"""The ``routing:`` block of a feature in keel.yaml: a cost-aware policy over the targets
of the chosen version's route (see docs/routing.md and :mod:`keel.stages.route_policy`).

At most one of ``cascade``, ``cheapest`` and ``latency``; ``downgrade_to`` combines with
any of them (or none)::

    routing:
      cascade: {first: small, min_confidence: 0.8}
      downgrade_to: small      # a nearly spent budget serves this instead of refusing
      downgrade_at: 0.9
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CascadeSpec(_Strict):
    """Try the cheap versions first, in order; escalate to the next target of the route
    (in the end the route's chosen version: the strong step) when the cheap answer's
    confidence is below ``min_confidence`` or one of its validators failed."""

    first: list[str] = Field(min_length=1, description="the cheap versions, tried in order")
    min_confidence: float | None = Field(
        default=None, ge=0, le=1, description="a cheap answer below this escalates")
    unknown_confidence: Literal["escalate", "keep"] = Field(
        default="escalate", description="a cheap answer with no confidence (min_confidence set)")
    on_validator_fail: Literal["escalate", "keep"] = Field(
        default="escalate", description="a failed validator (not on_fail: log) escalates")

    @field_validator("first", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _can_escalate(self) -> CascadeSpec:
        if self.min_confidence is None and self.on_validator_fail == "keep":
            raise ValueError("this cascade never escalates: set min_confidence or "
                             "on_validator_fail: escalate")
        if len(set(self.first)) != len(self.first):
            raise ValueError("first: a version is named twice")
        return self


class CheapestSpec(_Strict):
    """Serve the cheapest target of the route whose latest finished eval run on
    ``dataset`` meets every floor and ceiling. Cost: the run's ``cost_per_call_usd``. A
    target with no such run is not eligible; none eligible: the route as it is."""

    dataset: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}(@[1-9][0-9]*)?$",
                         description="'name@N', or 'name': its version pinned with keel "
                                     "data pin for this feature, else its latest")
    split: str | None = Field(default=None, description="runs on this split only")
    floors: dict[str, float] = Field(
        default_factory=dict, description="metric -> minimum, e.g. {accuracy: 0.85}")
    ceilings: dict[str, float] = Field(
        default_factory=dict, description="metric -> maximum, e.g. {latency_p95_ms: 800}")

    @model_validator(mode="after")
    def _some_bound(self) -> CheapestSpec:
        if not self.floors and not self.ceilings:
            raise ValueError("a quality floor is needed, e.g. floors: {accuracy: 0.85}")
        return self


class LatencySpec(_Strict):
    """Serve the target of the route with the lowest recent latency (an exponentially
    weighted moving average of its successful attempts) among those whose circuit is
    closed."""

    alpha: float = Field(default=0.3, gt=0, le=1,
                         description="weight of the newest attempt in the moving average")
    explore: float = Field(default=0.05, ge=0, le=0.5,
                           description="share of calls sent to another healthy target so "
                                       "its latency stays known")


class RoutingSpec(_Strict):
    cascade: CascadeSpec | None = None
    cheapest: CheapestSpec | None = None
    latency: LatencySpec | None = None
    downgrade_to: str | None = Field(
        default=None, description="when a budget of the call is nearly spent, serve this "
                                  "version instead of refusing")
    downgrade_at: float = Field(default=0.9, gt=0, le=1,
                                description="the share of a budget spent that downgrades")
    downgrade_until: float | None = Field(
        default=None, ge=1, description="the share at which even downgraded calls are "
                                        "refused (default: never, budgets-wise)")

    @model_validator(mode="after")
    def _one_policy(self) -> RoutingSpec:
        chosen = [n for n in ("cascade", "cheapest", "latency") if getattr(self, n) is not None]
        if len(chosen) > 1:
            raise ValueError(f"one policy per feature: {' and '.join(chosen)} are both set")
        return self

    def check_versions(self, versions: Iterable[str]) -> None:
        """ValueError when the block names a version the feature does not have."""
        known = list(versions)
        named = [*(self.cascade.first if self.cascade else []),
                 *([self.downgrade_to] if self.downgrade_to else [])]
        for name in named:
            if name not in known:
                raise ValueError(f"routing: '{name}' is not a version (versions: "
                                 f"{', '.join(known)})")
