from __future__ import annotations

from keel.spec import PolicySpec
from keel.stages.decide import decide
from keel.types import Decision, OnFail, ValidationResult

POLICY = PolicySpec(accept_at=0.6, refuse_below=0.2)
SAFE = {"label": "unknown"}


def failed(action: OnFail, repaired: object = None) -> ValidationResult:
    return ValidationResult("v", False, action, "bad", repaired=repaired)


def test_confident_output_is_accepted() -> None:
    verdict = decide({"label": "a"}, 0.9, [], POLICY, SAFE, from_fallback=False)
    assert verdict.decision is Decision.ACCEPTED and verdict.output == {"label": "a"}


def test_answer_from_a_fallback_target_says_so() -> None:
    assert decide("x", 0.9, [], POLICY, SAFE, from_fallback=True).decision is Decision.FALLBACK


def test_middle_confidence_goes_to_review_with_the_output() -> None:
    verdict = decide({"label": "a"}, 0.4, [], POLICY, SAFE, from_fallback=False)
    assert verdict.decision is Decision.REVIEW and verdict.output == {"label": "a"}
    assert "0.400" in (verdict.reason or "")


def test_low_confidence_is_refused_with_the_safe_default() -> None:
    verdict = decide({"label": "a"}, 0.1, [], POLICY, SAFE, from_fallback=False)
    assert verdict.decision is Decision.REFUSED and verdict.output == SAFE


def test_validator_actions() -> None:
    assert decide("x", 0.9, [failed(OnFail.REFUSE)], POLICY, SAFE, from_fallback=False).decision is Decision.REFUSED
    assert decide("x", 0.9, [failed(OnFail.REVIEW)], POLICY, SAFE, from_fallback=False).decision is Decision.REVIEW
    assert decide("x", 0.9, [failed(OnFail.LOG)], POLICY, SAFE, from_fallback=False).decision is Decision.ACCEPTED
    repaired = decide("y", 0.9, [failed(OnFail.REPAIR, repaired="y")], POLICY, SAFE, from_fallback=False)
    assert repaired.decision is Decision.REPAIRED and repaired.output == "y"
    # a repair that found nothing to repair cannot be used: safe default
    assert decide("x", 0.9, [failed(OnFail.REPAIR)], POLICY, SAFE, from_fallback=False).decision is Decision.REFUSED
    # a fallback request with no target left
    assert decide("x", 0.9, [failed(OnFail.FALLBACK)], POLICY, SAFE, from_fallback=True).decision is Decision.REFUSED


def test_refusal_wins_over_review() -> None:
    results = [failed(OnFail.REVIEW), failed(OnFail.REFUSE)]
    assert decide("x", 0.9, results, POLICY, SAFE, from_fallback=False).decision is Decision.REFUSED


def test_unknown_confidence_follows_policy() -> None:
    assert decide("x", None, [], POLICY, SAFE, from_fallback=False).decision is Decision.ACCEPTED
    strict = PolicySpec(unknown_confidence="review")
    assert decide("x", None, [], strict, SAFE, from_fallback=False).decision is Decision.REVIEW
