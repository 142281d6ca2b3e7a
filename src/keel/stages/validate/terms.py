"""Banned terms must not appear in the output; repair masks them."""

from __future__ import annotations

from keel.guards.terms import TermMatcher
from keel.spec import BannedTermsValidatorSpec
from keel.stages.validate.fields import field_text, replace_text
from keel.types import JSON, OnFail, ValidationResult


class BannedTermsValidator:
    name = "banned_terms"

    def __init__(self, spec: BannedTermsValidatorSpec) -> None:
        self.on_fail = spec.on_fail
        self._field = spec.field
        self._matcher = TermMatcher(spec.terms, whole_words=spec.whole_words,
                                    case_sensitive=spec.case_sensitive)

    def __call__(self, output: JSON, input: JSON = None) -> ValidationResult:
        text = field_text(output, self._field)
        found = self._matcher.find(text) if text else []
        if not found:
            return ValidationResult(self.name, True, self.on_fail)
        repaired = None
        if self.on_fail is OnFail.REPAIR and text is not None:
            masked = text
            for match in sorted(found, key=lambda m: m.start, reverse=True):
                masked = masked[: match.start] + "*" * (match.end - match.start) + masked[match.end:]
            repaired = replace_text(output, self._field, masked)
        terms = ", ".join(sorted({text[m.start:m.end].lower() for m in found} if text else set()))
        return ValidationResult(self.name, False, self.on_fail, f"banned term(s): {terms}",
                                repaired=repaired)
