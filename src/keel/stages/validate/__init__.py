"""Output validators: rules an answer must pass, each with an on-fail action.

A validator is built once per feature from its spec and maps an output to a
:class:`~keel.types.ValidationResult`. When it can fix what it found (``repair``),
it puts the fixed output in ``repaired``; the decide stage chooses what happens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from keel.spec import (
    AllowedLabelsValidatorSpec,
    FeatureSpec,
    JsonSchemaValidatorSpec,
    LengthValidatorSpec,
    RegexValidatorSpec,
)
from keel.stages.validate.json_schema import JsonSchemaValidator
from keel.stages.validate.labels import AllowedLabelsValidator
from keel.stages.validate.length import LengthValidator
from keel.stages.validate.regex import RegexValidator
from keel.types import JSON, ValidationResult


class Validator(Protocol):
    name: str

    def __call__(self, output: JSON) -> ValidationResult: ...


def build_validators(feature: FeatureSpec) -> list[Validator]:
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
    return out


def run_validators(validators: Sequence[Validator], output: JSON) -> tuple[list[ValidationResult], JSON]:
    """Run every validator; a repaired output is what the next validator sees."""
    results = []
    for validator in validators:
        result = validator(output)
        if not result.passed and result.repaired is not None:
            output = result.repaired
        results.append(result)
    return results, output


__all__ = ["Validator", "build_validators", "run_validators"]
