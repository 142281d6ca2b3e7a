"""Personal data must not leak into the output; repair redacts it."""

from __future__ import annotations

from keel.guards.pii import find_pii, redact
from keel.spec import PiiValidatorSpec
from keel.stages.validate.fields import field_text, replace_text
from keel.types import JSON, OnFail, ValidationResult


class PiiLeakValidator:
    name = "pii"

    def __init__(self, spec: PiiValidatorSpec) -> None:
        self.on_fail = spec.on_fail
        self._kinds = tuple(spec.kinds) if spec.kinds else None
        self._field = spec.field

    def _find(self, text: str) -> list:  # type: ignore[type-arg]
        return find_pii(text, self._kinds) if self._kinds else find_pii(text)

    def __call__(self, output: JSON, input: JSON = None) -> ValidationResult:
        text = field_text(output, self._field)
        if text is None:
            return ValidationResult(self.name, True, self.on_fail)
        found = self._find(text)
        if not found:
            return ValidationResult(self.name, True, self.on_fail)
        kinds = ", ".join(sorted({m.kind for m in found}))
        repaired = (replace_text(output, self._field, redact(text, found))
                    if self.on_fail is OnFail.REPAIR else None)
        return ValidationResult(self.name, False, self.on_fail,
                                f"personal data in the output ({kinds})", repaired=repaired)
