"""Output text must (or must not) match a regular expression."""

from __future__ import annotations

import re

from keel.spec import RegexValidatorSpec
from keel.stages.validate.fields import field_text
from keel.types import JSON, ValidationResult


class RegexValidator:
    name = "regex"

    def __init__(self, spec: RegexValidatorSpec) -> None:
        self.on_fail = spec.on_fail
        self._pattern = re.compile(spec.pattern)
        self._field = spec.field
        self._must_match = spec.must_match

    def __call__(self, output: JSON, input: JSON = None) -> ValidationResult:
        text = field_text(output, self._field)
        if text is None:
            return ValidationResult(self.name, False, self.on_fail, "no text to match")
        found = self._pattern.search(text) is not None
        if found == self._must_match:
            return ValidationResult(self.name, True, self.on_fail)
        verb = "does not match" if self._must_match else "matches forbidden"
        return ValidationResult(self.name, False, self.on_fail, f"output {verb} /{self._pattern.pattern}/")
