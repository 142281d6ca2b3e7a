"""The input's JSON Schema, compiled once per feature."""

from __future__ import annotations

from typing import Any

import jsonschema

from keel.errors import InputSchemaError
from keel.types import Call


class InputSchemaCheck:
    name = "input_schema"

    def __init__(self, schema: dict[str, Any]) -> None:
        self._validator = jsonschema.Draft202012Validator(schema)

    def __call__(self, call: Call) -> None:
        error = jsonschema.exceptions.best_match(self._validator.iter_errors(call.input))
        if error is None:
            return
        path = "input" + "".join(
            f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path
        )
        raise InputSchemaError(f"{path}: {error.message}", param=path)
