"""The seam between Keel and a model: one interface every wire protocol implements.

A provider is built once per process from its config and reused for every call. The
invoke stage hands it a :class:`ProviderRequest` and gets a :class:`~keel.types.Completion`
back, or one of the :class:`~keel.errors.ProviderError` subclasses: those say whether a
retry can help (``retryable``), which is all the invoke stage needs to know.
"""

from __future__ import annotations

import string
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import orjson

from keel.types import JSON, Completion, Delta, Embeddings

# label: {"label": ...}; text: {"text": ...}; json: the parsed object; chat: the
# assistant message {"role", "content", "tool_calls"?}; embedding: vectors
OutputKind = Literal["label", "json", "text", "chat", "embedding"]


@dataclass(slots=True)
class ProviderRequest:
    """Everything one attempt needs; built by the invoke stage, never by the caller."""

    feature: str
    version: str
    model: str
    input: dict[str, JSON]
    output_kind: OutputKind
    timeout_s: float  # total, for one attempt
    prompt: str | None = None  # the version's template, already hashed into the version
    system: str | None = None
    labels: list[str] | None = None
    label_descriptions: dict[str, str] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    # chat features: the caller's OpenAI-shaped messages, and its per-call Chat
    # Completions options (tools, tool_choice, response_format, temperature, ...),
    # which override the version's params
    messages: list[dict[str, Any]] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    # time to the first byte of the answer (a stream's first token); None: timeout_s
    first_byte_timeout_s: float | None = None
    # turns appended after the built conversation: a reask sends the model's previous
    # answer and what was wrong with it
    followup: list[dict[str, Any]] = field(default_factory=list)


class Provider(Protocol):
    """One wire protocol. Implementations live one per module under ``keel.providers``."""

    name: str

    async def start(self) -> None:
        """Open connections, load weights. Called once before the first call."""

    async def prepare(self, request: ProviderRequest) -> None:
        """Load what one version needs (label embeddings, a trained head) before traffic.

        Called once per (feature, version) at start with an empty ``input``."""

    async def complete(self, request: ProviderRequest) -> Completion:
        """One attempt. Raise a ProviderError subclass on failure."""

    def stream(self, request: ProviderRequest) -> AsyncIterator[Delta]:
        """One streamed attempt, as an async generator of deltas.

        A failure before the first delta raises a ProviderError like ``complete``; a
        failure after it raises :class:`~keel.errors.ProviderStreamInterrupted`.
        Providers that cannot stream raise ProviderRejected on the first iteration."""

    async def embed(self, request: ProviderRequest, texts: list[str]) -> Embeddings:
        """Embeddings for ``texts``; ProviderRejected where the provider has none."""

    async def close(self) -> None:
        """Release connections and threads. Called once at shutdown."""


class _Template(string.Formatter):
    """``{field}`` placeholders filled from the call's input; non-string values as JSON."""

    def format_field(self, value: Any, format_spec: str) -> str:
        if isinstance(value, str):
            return str(super().format_field(value, format_spec))
        return orjson.dumps(value).decode()


_FORMATTER = _Template()


def render_prompt(template: str, input: dict[str, JSON]) -> str:
    """Fill a version's prompt template. ``{input}`` is the whole input as JSON."""
    values = dict(input)
    values.setdefault("input", input)
    return _FORMATTER.vformat(template, (), values)


def template_fields(template: str) -> set[str]:
    """The placeholder names a template uses (checked against the input schema at load)."""
    return {name for _, name, _, _ in _FORMATTER.parse(template) if name}


def shape_output(kind: OutputKind, text: str) -> JSON:
    """Turn a generative model's text into the feature's output shape.

    ``json`` output that does not parse stays a string, so the JSON validator sees it,
    fails, and can repair it (e.g. pull JSON out of a fenced block).
    """
    if kind == "label":
        return {"label": text.strip().strip("\"'`.").strip()}
    if kind == "text":
        return {"text": text}
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
