"""The input's JSON Schema, compiled once per feature.

The hot path runs a schema compiled to Python by fastjsonschema (well under a
microsecond for a typical input); only when that fails does ``jsonschema`` run, to
find the most relevant error and word it for a person. Schemas fastjsonschema cannot
compile (it knows drafts 4–7) are checked by ``jsonschema`` alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import fastjsonschema
import jsonschema

from keel.errors import InputSchemaError
from keel.types import Call


def compile_fast(schema: dict[str, Any]) -> Callable[[Any], Any] | None:
    try:
        return fastjsonschema.compile(schema)  # type: ignore[no-any-return]
    except (fastjsonschema.JsonSchemaDefinitionException, ValueError, KeyError):
        return None


class InputSchemaCheck:
    name = "input_schema"

    def __init__(self, schema: dict[str, Any]) -> None:
        self._validator = jsonschema.Draft202012Validator(schema)
        self._fast = compile_fast(schema)

    def __call__(self, call: Call) -> None:
        if self._fast is not None:
            try:
                self._fast(call.input)
                return
            except fastjsonschema.JsonSchemaValueException:
                pass
        error = jsonschema.exceptions.best_match(self._validator.iter_errors(call.input))
        if error is None:
            return  # the drafts disagree; the 2020-12 validator is the reference
        path = "input" + "".join(
            f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path
        )
        raise InputSchemaError(f"{path}: {error.message}", param=path)
