"""Output text length must lie within bounds; repair truncates what is too long."""

from __future__ import annotations

from keel.spec import LengthValidatorSpec
from keel.stages.validate.fields import field_text
from keel.types import JSON, OnFail, ValidationResult


class LengthValidator:
    name = "length"

    def __init__(self, spec: LengthValidatorSpec) -> None:
        self.on_fail = spec.on_fail
        self._min = spec.min_chars
        self._max = spec.max_chars
        self._field = spec.field

    def __call__(self, output: JSON, input: JSON = None) -> ValidationResult:
        text = field_text(output, self._field)
        if text is None:
            return ValidationResult(self.name, False, self.on_fail, "no text to measure")
        n = len(text)
        if n < self._min:
            return ValidationResult(self.name, False, self.on_fail, f"{n} characters; at least {self._min} needed")
        if self._max is not None and n > self._max:
            repaired: JSON = None
            if self.on_fail is OnFail.REPAIR:
                cut = text[: self._max]
                if isinstance(output, str):
                    repaired = cut
                elif isinstance(output, dict):
                    repaired = {**output, self._field or "text": cut}
            return ValidationResult(
                self.name, False, self.on_fail, f"{n} characters; at most {self._max} allowed",
                repaired=repaired,
            )
        return ValidationResult(self.name, True, self.on_fail)
