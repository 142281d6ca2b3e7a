"""The decision for one output: accepted, repaired, fallback, review or refused.

Pure: validator results, confidence and the feature's policy in; decision and the
output the caller gets out. Order of precedence: refuse > review > repair > confidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from keel.spec import PolicySpec
from keel.types import JSON, Decision, OnFail, ValidationResult

# the decisions whose output is used as is (a guard or audit may still send them to people)
USABLE = frozenset({Decision.ACCEPTED, Decision.REPAIRED, Decision.FALLBACK})


@dataclass(frozen=True, slots=True)
class Verdict:
    decision: Decision
    output: JSON
    reason: str | None = None


def decide(
    output: JSON,
    confidence: float | None,
    validations: Sequence[ValidationResult],
    policy: PolicySpec,
    safe_default: JSON,
    *,
    from_fallback: bool,
) -> Verdict:
    failed = [v for v in validations if not v.passed and v.on_fail is not OnFail.LOG]
    repaired = False
    review_reason: str | None = None
    for result in failed:
        if result.on_fail is OnFail.REPAIR and result.repaired is not None:
            repaired = True
        elif result.on_fail is OnFail.REVIEW:
            review_reason = review_reason or f"{result.validator}: {result.message}"
        else:
            # refuse, an unrepairable repair, or a fallback with no target left
            return Verdict(Decision.REFUSED, safe_default, f"{result.validator}: {result.message}")
    if confidence is not None and confidence < policy.refuse_below:
        return Verdict(Decision.REFUSED, safe_default,
                       f"confidence {confidence:.3f} < refuse_below {policy.refuse_below}")
    if review_reason is not None:
        return Verdict(Decision.REVIEW, output, review_reason)
    if confidence is None and policy.unknown_confidence == "review":
        return Verdict(Decision.REVIEW, output, "no confidence")
    if confidence is not None and confidence < policy.accept_at:
        return Verdict(Decision.REVIEW, output, f"confidence {confidence:.3f} < accept_at {policy.accept_at}")
    if repaired:
        return Verdict(Decision.REPAIRED, output)
    return Verdict(Decision.FALLBACK if from_fallback else Decision.ACCEPTED, output)
