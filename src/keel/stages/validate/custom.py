"""Validators written in Python: a pydantic model, or any callable registered by name."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from keel.errors import ConfigError
from keel.spec import CustomValidatorSpec, PydanticValidatorSpec
from keel.stages.guards import resolve_custom
from keel.types import JSON, OnFail, ValidationResult

# a custom validator: (output, input) -> True/None (pass), False or a message (fail), or
# a ValidationResult; may be a coroutine function
CustomValidator = Callable[[JSON, JSON], Any]


class PydanticValidator:
    name = "pydantic"

    def __init__(self, spec: PydanticValidatorSpec) -> None:
        self.on_fail = spec.on_fail
        model = resolve_custom(spec.model, {})
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise ConfigError(f"pydantic validator: {spec.model} is not a pydantic model")
        self._model: type[BaseModel] = model

    def __call__(self, output: JSON, input: JSON = None) -> ValidationResult:
        try:
            parsed = self._model.model_validate(output)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "output"
            return ValidationResult(self.name, False, self.on_fail, f"{where}: {first['msg']}")
        # a repair normalises the output to the model's own serialisation (defaults, coercions)
        repaired = parsed.model_dump(mode="json") if self.on_fail is OnFail.REPAIR else None
        if repaired is not None and repaired != output:
            return ValidationResult(self.name, False, self.on_fail, "normalised", repaired=repaired)
        return ValidationResult(self.name, True, self.on_fail)


class CustomValidatorWrapper:
    def __init__(self, spec: CustomValidatorSpec, registry: dict[str, CustomValidator]) -> None:
        self.name = f"custom:{spec.name}"
        self.on_fail = spec.on_fail
        self._fn = resolve_custom(spec.name, registry)

    async def __call__(self, output: JSON, input: JSON = None) -> ValidationResult:
        try:
            result = self._fn(output, input)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            return ValidationResult(self.name, False, self.on_fail,
                                    f"the validator failed: {type(exc).__name__}: {exc}")
        if isinstance(result, ValidationResult):
            return result
        if result is True or result is None:
            return ValidationResult(self.name, True, self.on_fail)
        message = result if isinstance(result, str) else "rejected"
        return ValidationResult(self.name, False, self.on_fail, message)
