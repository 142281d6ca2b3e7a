"""Output label must be one of the allowed labels; repair maps near-misses onto one."""

from __future__ import annotations

import re

from keel.spec import AllowedLabelsValidatorSpec
from keel.types import JSON, OnFail, ValidationResult


def _norm(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


class AllowedLabelsValidator:
    name = "allowed_labels"

    def __init__(self, spec: AllowedLabelsValidatorSpec, labels: list[str]) -> None:
        self.on_fail = spec.on_fail
        self._labels = frozenset(labels)
        self._by_norm = {_norm(label): label for label in labels}

    def __call__(self, output: JSON, input: JSON = None) -> ValidationResult:
        label = output.get("label") if isinstance(output, dict) else None
        if isinstance(label, str) and label in self._labels:
            return ValidationResult(self.name, True, self.on_fail)
        repaired = None
        if self.on_fail is OnFail.REPAIR and isinstance(label, str):
            fixed = self._by_norm.get(_norm(label))
            repaired = None if fixed is None else {**output, "label": fixed}
        shown = repr(label) if label is not None else "no label"
        return ValidationResult(
            self.name, False, self.on_fail, f"{shown} is not an allowed label", repaired=repaired
        )
