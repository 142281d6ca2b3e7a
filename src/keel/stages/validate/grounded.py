"""Groundedness: each sentence of the output must be supported by the call's context.

Sentences of the output and passages of the context are embedded with the local model
(all-MiniLM-L6-v2); a sentence is supported when its cosine similarity to the closest
passage reaches the threshold. The score is the weakest sentence's best similarity.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

import numpy as np
import numpy.typing as npt

from keel.spec import GroundednessValidatorSpec
from keel.stages.validate.fields import field_text
from keel.types import JSON, ValidationResult

Embed = Callable[[list[str]], Awaitable[npt.NDArray[np.float32]]]

_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text) if len(s.strip()) > 2]


class GroundednessValidator:
    name = "groundedness"

    def __init__(self, spec: GroundednessValidatorSpec, embed: Embed) -> None:
        self.on_fail = spec.on_fail
        self._spec = spec
        self._embed = embed

    async def __call__(self, output: JSON, input: JSON = None) -> ValidationResult:
        text = field_text(output, self._spec.field)
        context = input.get(self._spec.context_field) if isinstance(input, dict) else None
        if not isinstance(context, str) or not context.strip():
            return ValidationResult(self.name, False, self.on_fail,
                                    f"no context to check against (input.{self._spec.context_field})")
        claims = sentences(text or "")
        if not claims:
            return ValidationResult(self.name, True, self.on_fail)
        passages = sentences(context) or [context]
        vectors = await self._embed(claims + passages)
        sims = vectors[: len(claims)] @ vectors[len(claims):].T
        best = sims.max(axis=1)
        weakest = int(best.argmin())
        if float(best[weakest]) >= self._spec.threshold:
            return ValidationResult(self.name, True, self.on_fail)
        return ValidationResult(
            self.name, False, self.on_fail,
            f"not supported by the context (similarity {float(best[weakest]):.2f} < "
            f"{self._spec.threshold}): {claims[weakest][:120]!r}")
