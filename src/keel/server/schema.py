"""The HTTP shapes of the feature API: pydantic models document them in the OpenAPI
document; responses are built as plain dicts by :func:`outcome_body` (no validation
on the hot path)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from pydantic import BaseModel, Field

from keel.types import Outcome


class FeatureRequest(BaseModel):
    input: dict[str, Any] = Field(description="the feature's input; checked against its schema")
    user: str | None = Field(default=None, description="end-user id, for ledgers and stickiness")
    session: str | None = Field(default=None, description="session id: keeps a canary split "
                                "sticky when there is no user")


class AttemptBody(BaseModel):
    version: str
    provider: str
    ok: bool
    latency_ms: float
    retry: int
    error_code: str | None
    error: str | None
    rejected_by: str | None


class ValidationBody(BaseModel):
    validator: str
    passed: bool
    on_fail: str
    message: str | None


class UsageBody(BaseModel):
    input_tokens: int
    output_tokens: int


class FeatureResponse(BaseModel):
    trace_id: str = Field(description="id of this call's event; quote it in feedback and reviews")
    feature: str
    version: str | None = Field(description="the version that produced the output")
    output: Any = Field(description="the answer; the safe default when refused")
    decision: str = Field(description="accepted | repaired | fallback | review | refused | error")
    confidence: float | None = Field(description="0..1 from the model; null when unknown")
    reviewed: bool = Field(description="false while a human has not confirmed the output")
    review: str | None = Field(description="for decision review: pending (deferred), or for "
                               "held review approved, edited, rejected or timed_out")
    reason: str | None = Field(description="why the decision is not plain accepted")
    cost_usd: float | None = Field(description="null when the model's price is unknown")
    usage: UsageBody
    timings_ms: dict[str, float] = Field(description="per stage: checks, route, invoke, ...")
    attempts: list[AttemptBody]
    validations: list[ValidationBody]
    cache: str | None = Field(default=None, description="features with a cache: hit-exact, "
                              "hit-semantic, miss or bypass (docs/caching.md)")
    saved_usd: float | None = Field(default=None, description="on a cache hit: the cost of "
                                    "the model call it avoided")


class ErrorDetail(BaseModel):
    code: str
    message: str
    type: str
    param: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


def outcome_body(outcome: Outcome) -> dict[str, Any]:
    body: dict[str, Any] = {
        "trace_id": outcome.trace_id,
        "feature": outcome.feature,
        "version": outcome.version,
        "output": outcome.output,
        "decision": outcome.decision,
        "confidence": outcome.confidence,
        "reviewed": outcome.reviewed,
        "review": outcome.review,
        "reason": outcome.reason,
        "cost_usd": outcome.cost_usd,
        "usage": {
            "input_tokens": outcome.usage.input_tokens,
            "output_tokens": outcome.usage.output_tokens,
        },
        "timings_ms": outcome.timings_ms,
        "attempts": [asdict(a) for a in outcome.attempts],
        "validations": [
            {"validator": v.validator, "passed": v.passed, "on_fail": v.on_fail, "message": v.message}
            for v in outcome.validations
        ],
    }
    if outcome.cache is not None:  # a feature with a cache (keel.stages.cache)
        body["cache"] = outcome.cache
        if outcome.saved_usd is not None:
            body.setdefault("saved_usd", outcome.saved_usd)
    return body


def keel_headers(outcome: Outcome) -> dict[str, str]:
    headers = {"x-keel-trace-id": outcome.trace_id, "x-keel-decision": str(outcome.decision)}
    if outcome.version is not None:
        headers["x-keel-version"] = outcome.version
    if outcome.confidence is not None:
        headers["x-keel-confidence"] = f"{outcome.confidence:.4f}"
    headers["x-keel-cost-usd"] = "unknown" if outcome.cost_usd is None else f"{outcome.cost_usd:.8f}"
    if outcome.cache is not None:
        headers["x-keel-cache"] = outcome.cache
    return headers
