"""The shared vocabulary of one call. Every stage, provider and surface speaks it.

A :class:`Call` goes in; the stages fill a :class:`CallState`; an :class:`Outcome`
comes out and is recorded as an :class:`Event`. See DESIGN.md for the words.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

JSON = Any  # a value that round-trips through JSON


class Decision(enum.StrEnum):
    """How one call ended."""

    ACCEPTED = "accepted"
    REPAIRED = "repaired"
    FALLBACK = "fallback"
    REVIEW = "review"
    REFUSED = "refused"
    ERROR = "error"


class OnFail(enum.StrEnum):
    """What a failed validator asks the decide stage to do."""

    REPAIR = "repair"
    REASK = "reask"
    FALLBACK = "fallback"
    REVIEW = "review"
    REFUSE = "refuse"
    LOG = "log"


@dataclass(slots=True)
class Call:
    """One request for a feature, as every surface hands it to the pipeline."""

    feature: str
    input: dict[str, JSON]
    trace_id: str
    user: str | None = None
    key: str | None = None
    # bytes of the raw request body when it came over HTTP (for the size check)
    body_bytes: int = 0
    # per-call Chat Completions options (tools, temperature, ...) for chat features
    options: dict[str, JSON] = field(default_factory=dict)
    # the session a canary split sticks to when there is no user (the feature API's
    # "session", or the X-Keel-Session header)
    session: str | None = None
    # evaluation: serve exactly this version (no split, no fallback), record no event
    # and queue no review, so eval traffic never counts as live traffic
    pin: str | None = None
    # set by the route stage: the version chosen first (events group canary metrics by it)
    routed: str | None = None
    # set by the budget stage when a budget is nearly spent and the feature allows it
    # (routing.downgrade_to): the cheaper version that serves the call instead
    downgrade: str | None = None
    # the cache (keel.stages.cache): "use"; "refresh" (no lookup, the answer is saved);
    # "bypass" (neither): from x-keel-cache / Cache-Control, or Keel.call(cache=...)
    cache_mode: str = "use"


@dataclass(slots=True)
class Usage:
    """Tokens a provider reports for one attempt. ``cached_input_tokens`` and
    ``cache_write_tokens`` are parts of ``input_tokens``; ``reasoning_tokens`` is part
    of ``output_tokens``."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    def add(self, other: Usage) -> None:
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cached_input_tokens += other.cached_input_tokens
        self.cache_write_tokens += other.cache_write_tokens
        self.reasoning_tokens += other.reasoning_tokens


@dataclass(slots=True)
class Delta:
    """One piece of a streamed answer, with OpenAI chunk semantics: ``text`` is appended
    to the content; ``tool_calls`` are OpenAI-shaped tool-call deltas
    (``{"index", "id"?, "type"?, "function": {"name"?, "arguments"}}``); the last
    pieces carry ``finish_reason`` and ``usage``."""

    text: str = ""
    tool_calls: list[dict[str, JSON]] | None = None
    finish_reason: str | None = None
    usage: Usage | None = None


@dataclass(slots=True)
class Embeddings:
    """Vectors for a batch of texts, in order."""

    vectors: list[list[float]]
    usage: Usage = field(default_factory=Usage)
    model: str | None = None


@dataclass(slots=True)
class Completion:
    """What a provider returns for one successful attempt.

    ``output`` is the feature's answer (a label dict for classifiers, text or parsed
    JSON for generators); ``text`` is the raw model text when there is one.
    """

    output: JSON
    confidence: float | None = None
    usage: Usage = field(default_factory=Usage)
    text: str | None = None
    model: str | None = None
    # OpenAI's vocabulary: stop, length, tool_calls, content_filter
    finish_reason: str | None = None


@dataclass(slots=True)
class Attempt:
    """One try at one target: recorded whether it worked or not."""

    version: str
    provider: str
    ok: bool
    latency_ms: float
    retry: int = 0
    error_code: str | None = None
    error: str | None = None
    # why this attempt did not produce the answer, when it succeeded at the wire
    # level but a validator sent the call on (e.g. "validator:allowed_labels")
    rejected_by: str | None = None


@dataclass(slots=True)
class ValidationResult:
    validator: str
    passed: bool
    on_fail: OnFail
    message: str | None = None
    repaired: JSON = None  # the repaired output when the validator could fix it


@dataclass(slots=True)
class Outcome:
    """The answer to one call: what the caller sees and what is recorded."""

    trace_id: str
    feature: str
    version: str | None
    output: JSON
    decision: Decision
    confidence: float | None
    timings_ms: dict[str, float]
    cost_usd: float | None
    usage: Usage
    attempts: list[Attempt]
    validations: list[ValidationResult]
    reviewed: bool = False
    reason: str | None = None  # why the decision is not plain "accepted"
    error_code: str | None = None
    error: str | None = None
    finish_reason: str | None = None
    retry_after: float | None = None  # when every target was rate-limited
    # review decisions: "pending" (deferred: answered now, verdict later); held calls:
    # "approved", "edited", "rejected" or "timed_out" (the safe default was returned)
    review: str | None = None
    checks: list[Any] = field(default_factory=list)  # input guards' CheckResults
    # the routing policy's choice and what it saved vs. its baseline (keel.stages.route_policy)
    policy: str | None = None
    saved_usd: float | None = None
    # for features with a cache: hit-exact, hit-semantic, miss or bypass (on a hit,
    # saved_usd is the cost of the call it avoided)
    cache: str | None = None


@dataclass(slots=True)
class ReviewRequest:
    """An output the decide stage sent to people: what the review queue stores."""

    trace_id: str
    ts: float
    feature: str
    version: str | None
    mode: str  # deferred | held
    confidence: float | None
    reason: str | None
    input: JSON
    output: JSON
    validations: list[ValidationResult]
    overlap: int = 1
    # chosen by an independent coin (review.audit_rate), whatever the decision: these
    # items are an unbiased sample for calibration
    audit: bool = False


@dataclass(slots=True)
class Event:
    """One record of one call, as the store keeps it."""

    trace_id: str
    ts: float
    feature: str
    version: str | None
    decision: Decision
    confidence: float | None
    latency_ms: float
    timings_ms: dict[str, float]
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    attempts: list[Attempt]
    validations: list[ValidationResult]
    input: JSON
    output: JSON
    user: str | None = None
    key: str | None = None
    reason: str | None = None
    error_code: str | None = None
    checks: list[Any] = field(default_factory=list)
    routed: str | None = None
    # where the answer came from when not from a model call: "exact" or "semantic" cache
    cache: str | None = None
    # what the call cost less than its baseline: the avoided call on a cache hit, the
    # cheaper target a routing policy chose (USD; None: nothing saved)
    saved_usd: float | None = None
    # the routing policy's choice, e.g. "cascade:escalated" (None: the fixed route)
    policy: str | None = None
