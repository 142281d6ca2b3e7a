"""Output validators: rules an answer must pass, each with an on-fail action.

A validator is built once per feature from its spec and maps an output (and the
call's input, for rules such as groundedness) to a :class:`~keel.types.ValidationResult`,
directly or as an awaitable (validators that embed text, or call out). When it can fix what it found (``repair``),
it puts the fixed output in ``repaired``; the decide stage chooses what happens.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Mapping, Sequence
from typing import Protocol

from keel.errors import ConfigError
from keel.spec import (
    AllowedLabelsValidatorSpec,
    BannedTermsValidatorSpec,
    CustomValidatorSpec,
    FeatureSpec,
    GroundednessValidatorSpec,
    JsonSchemaValidatorSpec,
    LengthValidatorSpec,
    PiiValidatorSpec,
    PydanticValidatorSpec,
    RegexValidatorSpec,
)
from keel.stages.validate.custom import CustomValidator, CustomValidatorWrapper, PydanticValidator
from keel.stages.validate.grounded import Embed, GroundednessValidator
from keel.stages.validate.json_schema import JsonSchemaValidator
from keel.stages.validate.labels import AllowedLabelsValidator
from keel.stages.validate.length import LengthValidator
from keel.stages.validate.pii import PiiLeakValidator
from keel.stages.validate.regex import RegexValidator
from keel.stages.validate.terms import BannedTermsValidator
from keel.types import JSON, ValidationResult


class Validator(Protocol):
    name: str

    def __call__(self, output: JSON, input: JSON = None) -> ValidationResult | Awaitable[ValidationResult]: ...


def build_validators(feature: FeatureSpec, custom: Mapping[str, CustomValidator] | None = None,
                     embed: Embed | None = None) -> list[Validator]:
    out: list[Validator] = []
    for spec in feature.validators:
        if isinstance(spec, JsonSchemaValidatorSpec):
            out.append(JsonSchemaValidator(spec))
        elif isinstance(spec, AllowedLabelsValidatorSpec):
            out.append(AllowedLabelsValidator(spec, spec.labels or feature.output.labels or []))
        elif isinstance(spec, RegexValidatorSpec):
            out.append(RegexValidator(spec))
        elif isinstance(spec, LengthValidatorSpec):
            out.append(LengthValidator(spec))
        elif isinstance(spec, PiiValidatorSpec):
            out.append(PiiLeakValidator(spec))
        elif isinstance(spec, BannedTermsValidatorSpec):
            out.append(BannedTermsValidator(spec))
        elif isinstance(spec, GroundednessValidatorSpec):
            if embed is None:
                raise ConfigError("groundedness needs the local embedding model")
            out.append(GroundednessValidator(spec, embed))
        elif isinstance(spec, PydanticValidatorSpec):
            out.append(PydanticValidator(spec))
        elif isinstance(spec, CustomValidatorSpec):
            out.append(CustomValidatorWrapper(spec, dict(custom or {})))
    return out


async def run_validators(validators: Sequence[Validator], output: JSON,
                         input: JSON = None) -> tuple[list[ValidationResult], JSON]:
    """Run every validator in order; a repaired output is what the next validator sees."""
    results = []
    for validator in validators:
        result = validator(output, input)
        if inspect.isawaitable(result):
            result = await result
        if not result.passed and result.repaired is not None:
            output = result.repaired
        results.append(result)
    return results, output


__all__ = ["Validator", "build_validators", "run_validators"]
