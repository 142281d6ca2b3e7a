"""The ``cache:`` block of a feature in keel.yaml: answers worth reusing, served again
without a model call (see docs/caching.md and :mod:`keel.stages.cache`)::

    cache:
      exact: {ttl_s: 3600}                      # same normalized input and parameters
      semantic: {threshold: 0.95, ttl_s: 600}   # a close enough text (local embeddings)

Off unless a feature asks for it. Either kind or both; with both, the exact cache is
asked first.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DAY_S = 86400.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExactCacheSpec(_Strict):
    """Served again for the same input (strings Unicode-NFC, trimmed, inner whitespace
    collapsed), the same per-call parameters and the same version."""

    ttl_s: float = Field(default=3600.0, gt=0, le=30 * DAY_S, description="how long an answer is reused")
    ignore_case: bool = Field(default=False, description="also fold case when comparing inputs")


class SemanticCacheSpec(_Strict):
    """Served again for a text whose embedding (the local all-MiniLM-L6-v2) is at least
    ``threshold`` cosine-similar to a cached one, when everything else about the call
    (the other input fields, earlier chat messages, parameters, version) is the same."""

    threshold: float = Field(default=0.95, gt=0, le=1, description="least cosine similarity")
    ttl_s: float = Field(default=3600.0, gt=0, le=30 * DAY_S)
    field: str | None = Field(
        default=None, description="the input field compared; default: the input's text "
                                  "field (chat: the last user message)")


class CacheSpec(_Strict):
    exact: ExactCacheSpec | None = None
    semantic: SemanticCacheSpec | None = None
    scope: Literal["key", "user"] = Field(
        default="key", description="who may share answers: callers of one API key, or "
                                   "only one user of one key")
    max_entries: int = Field(default=100_000, ge=1, le=10_000_000,
                             description="per kind and feature (memory: per process)")

    @model_validator(mode="after")
    def _some_kind(self) -> CacheSpec:
        if self.exact is None and self.semantic is None:
            raise ValueError("cache needs exact and/or semantic, e.g. {exact: {ttl_s: 3600}}")
        return self

    def check_feature(self, kind: str, text_field: str | None) -> None:
        """The semantic cache compares one text: the feature must have one."""
        if self.semantic is None:
            return
        if kind == "embedding":
            raise ValueError("cache.semantic: an embedding feature has no text to compare; "
                             "use cache.exact")
        if kind != "chat" and self.semantic.field is None and not text_field:
            raise ValueError("cache.semantic: name the input field to compare (field: ...), "
                             "the input has no text_field")
