"""Output must be JSON matching a schema; repair pulls JSON out of fenced or chatty text."""

from __future__ import annotations

import re

import jsonschema
import orjson

from keel.spec import JsonSchemaValidatorSpec
from keel.types import JSON, OnFail, ValidationResult

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def extract_json(text: str) -> JSON:
    """The first JSON value in a fenced block, or between the outermost braces."""
    candidates = [m.group(1) for m in _FENCE.finditer(text)]
    start, end = text.find("{"), text.rfind("}")
    if start != -1 and end > start:
        candidates.append(text[start : end + 1])
    for candidate in candidates:
        try:
            return orjson.loads(candidate)
        except orjson.JSONDecodeError:
            continue
    return None


class JsonSchemaValidator:
    name = "json_schema"

    def __init__(self, spec: JsonSchemaValidatorSpec) -> None:
        self.on_fail = spec.on_fail
        self._validator = jsonschema.Draft202012Validator(spec.json_schema)

    def _problem(self, value: JSON) -> str | None:
        error = jsonschema.exceptions.best_match(self._validator.iter_errors(value))
        return None if error is None else error.message

    def __call__(self, output: JSON, input: JSON = None) -> ValidationResult:
        if isinstance(output, str):
            parsed = extract_json(output) if self.on_fail is OnFail.REPAIR else None
            repaired = parsed if parsed is not None and self._problem(parsed) is None else None
            return ValidationResult(
                self.name, False, self.on_fail, "output is not JSON", repaired=repaired
            )
        problem = self._problem(output)
        if problem is None:
            return ValidationResult(self.name, True, self.on_fail)
        return ValidationResult(self.name, False, self.on_fail, problem)
