"""Input checks: rules a call's input must pass before any model is called.

Each check is built once per feature at load and is a plain callable on a
:class:`~keel.types.Call` that raises a :class:`~keel.errors.RequestError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from keel.spec import FeatureSpec
from keel.stages.checks.messages import MessagesCheck
from keel.stages.checks.schema import InputSchemaCheck
from keel.stages.checks.text import TextCheck
from keel.types import Call


class Check(Protocol):
    name: str

    def __call__(self, call: Call) -> None: ...


def build_checks(feature: FeatureSpec) -> list[Check]:
    checks: list[Check] = [InputSchemaCheck(feature.input.json_schema)]
    if feature.input.text_field:
        checks.append(TextCheck(feature.input.text_field, feature.input.max_chars))
    if feature.output.kind == "chat":
        checks.append(MessagesCheck(feature.input.max_chars))
    return checks


def run_checks(checks: Sequence[Check], call: Call) -> None:
    for check in checks:
        check(call)


__all__ = ["Check", "build_checks", "run_checks"]
