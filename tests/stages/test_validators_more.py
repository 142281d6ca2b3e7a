"""Output validators beyond the basics: PII leaks, banned terms, groundedness,
pydantic models and custom callables — in the pipeline, with their actions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from keel.errors import ConfigError
from keel.gateway import Keel
from keel.types import Completion, Decision, ValidationResult
from tests.conftest import basic_feature, scripted, settings_in, spec_with


class Answer(BaseModel):
    text: str
    score: int = 0


def text_feature(validators: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    schema = {"type": "object", "required": ["text"],
              "properties": {"text": {"type": "string"}, "context": {"type": "string"}}}
    return basic_feature(output={"kind": "text"}, validators=validators, policy={},
                         input={"schema": schema}, **kw)


async def run(tmp_path: Path, specs: list[dict[str, Any]], output: Any,
              input: dict[str, Any] | None = None, **kw: Any) -> Any:
    async with Keel(spec_with(text_feature(specs)), settings_in(tmp_path), **kw) as keel:
        scripted(keel, "p1").script = [Completion(output=output, confidence=0.9)]
        return await keel.call("f", input or {"text": "q"})


async def test_pii_leak_is_redacted_or_refused(tmp_path: Path) -> None:
    leak = {"text": "Sure, the customer's card is 4111 1111 1111 1111."}
    outcome = await run(tmp_path, [{"type": "pii", "on_fail": "repair"}], leak)
    assert outcome.decision is Decision.REPAIRED and "4111" not in outcome.output["text"]
    outcome = await run(tmp_path / "b", [{"type": "pii", "on_fail": "refuse"}], leak)
    assert outcome.decision is Decision.REFUSED


async def test_banned_terms_are_masked(tmp_path: Path) -> None:
    outcome = await run(tmp_path, [{"type": "banned_terms", "terms": ["guarantee", "lawsuit"],
                                    "on_fail": "repair"}],
                        {"text": "We Guarantee you will win the lawsuit."})
    assert outcome.decision is Decision.REPAIRED
    assert outcome.output["text"] == "We ********* you will win the *******."
    outcome = await run(tmp_path / "b", [{"type": "banned_terms", "terms": ["guarantee"]}],
                        {"text": "guaranteed delivery"})  # whole words only
    assert outcome.decision is Decision.ACCEPTED


async def test_groundedness_against_the_supplied_context(tmp_path: Path) -> None:
    context = ("Your new card is sent by post within five working days. "
               "You can track it in the app under Cards.")
    spec = [{"type": "groundedness", "threshold": 0.6, "on_fail": "review"}]
    grounded = await run(tmp_path, spec, {"text": "Your card will arrive by post within five working days."},
                         {"text": "where is my card", "context": context})
    assert grounded.decision is Decision.ACCEPTED
    made_up = await run(tmp_path / "b", spec, {"text": "We have refunded 500 euros to your savings account."},
                        {"text": "where is my card", "context": context})
    assert made_up.decision is Decision.REVIEW and "not supported by the context" in made_up.reason
    no_context = await run(tmp_path / "c", spec, {"text": "Anything."})
    assert no_context.decision is Decision.REVIEW and "no context" in no_context.reason


async def test_pydantic_model_validator(tmp_path: Path) -> None:
    spec = [{"type": "pydantic", "model": "tests.stages.test_validators_more:Answer", "on_fail": "repair"}]
    assert (await run(tmp_path, spec, {"text": "ok", "score": 2})).decision is Decision.ACCEPTED
    normalised = await run(tmp_path / "b", spec, {"text": "ok"})
    assert normalised.decision is Decision.REPAIRED and normalised.output == {"text": "ok", "score": 0}
    bad = await run(tmp_path / "c", spec, {"text": 5})
    assert bad.decision is Decision.REFUSED and "text" in bad.validations[0].message
    with pytest.raises(ConfigError, match="not a pydantic model"):
        await run(tmp_path / "d", [{"type": "pydantic", "model": "pathlib:Path"}], {"text": "x"})


async def test_custom_validators(tmp_path: Path) -> None:
    def polite(output: Any, input: Any) -> bool | str:
        return True if "please" in output["text"] else "not polite"

    async def with_result(output: Any, input: Any) -> ValidationResult:
        from keel.types import OnFail
        return ValidationResult("custom:shape", False, OnFail.REVIEW, "custom says review")

    def broken(output: Any, input: Any) -> bool:
        raise ValueError("boom")

    outcome = await run(tmp_path, [{"type": "custom", "name": "polite", "on_fail": "refuse"}],
                        {"text": "do it"}, validators={"polite": polite})
    assert outcome.decision is Decision.REFUSED and "not polite" in outcome.reason
    outcome = await run(tmp_path / "b", [{"type": "custom", "name": "shape"}], {"text": "x"},
                        validators={"shape": with_result})
    assert outcome.decision is Decision.REVIEW
    outcome = await run(tmp_path / "c", [{"type": "custom", "name": "broken", "on_fail": "log"}],
                        {"text": "x"}, validators={"broken": broken})
    assert outcome.decision is Decision.ACCEPTED and "boom" in outcome.validations[0].message
