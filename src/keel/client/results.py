"""What the client returns: typed views of the server's JSON.

A feature call returns the same :class:`keel.Outcome` the in-process library does; the
rest are small frozen dataclasses, each with ``from_json`` (unknown fields are ignored,
so a newer server does not break an older client).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from keel.types import JSON, Attempt, Decision, OnFail, Outcome, Usage, ValidationResult


def outcome_from_json(body: dict[str, Any]) -> Outcome:
    """A feature call's answer (``POST /v1/features/{name}``) as an :class:`Outcome`."""
    usage = body.get("usage") or {}
    return Outcome(
        trace_id=body["trace_id"], feature=body["feature"], version=body.get("version"),
        output=body.get("output"), decision=Decision(body["decision"]),
        confidence=body.get("confidence"), timings_ms=dict(body.get("timings_ms") or {}),
        cost_usd=body.get("cost_usd"),
        usage=Usage(int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))),
        attempts=[Attempt(a["version"], a["provider"], bool(a["ok"]), float(a["latency_ms"]),
                          int(a.get("retry", 0)), a.get("error_code"), a.get("error"),
                          a.get("rejected_by")) for a in body.get("attempts") or []],
        validations=[ValidationResult(v["validator"], bool(v["passed"]), OnFail(v["on_fail"]),
                                      v.get("message")) for v in body.get("validations") or []],
        reviewed=bool(body.get("reviewed", False)), reason=body.get("reason"),
        review=body.get("review"))


@dataclass(frozen=True, slots=True)
class FeatureInfo:
    """One feature as ``GET /v1/features`` lists it."""

    name: str
    description: str | None
    output_kind: str
    labels: list[str] | None
    versions: dict[str, dict[str, str]]
    aliases: dict[str, str]
    fallbacks: list[str]

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> FeatureInfo:
        return cls(body["name"], body.get("description"), body.get("output_kind", ""),
                   body.get("labels"), dict(body.get("versions") or {}),
                   dict(body.get("aliases") or {}), list(body.get("fallbacks") or []))


@dataclass(frozen=True, slots=True)
class FeedbackRecord:
    """One stored piece of feedback. ``value``: ``"up"``/``"down"`` for thumbs, the number
    of a rating or outcome, else None."""

    id: str
    trace_id: str
    feature: str
    version: str | None
    routed: str | None
    kind: str
    name: str | None
    source: str
    value: float | str | None
    comment: str | None
    output: JSON
    metadata: dict[str, JSON]
    user: str | None
    revision: int
    created_at: float
    updated_at: float

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> FeedbackRecord:
        return cls(body["id"], body["trace_id"], body["feature"], body.get("version"),
                   body.get("routed"), body["kind"], body.get("name"), body["source"],
                   body.get("value"), body.get("comment"), body.get("output"),
                   dict(body.get("metadata") or {}), body.get("user"), int(body["revision"]),
                   float(body["created_at"]), float(body["updated_at"]))


@dataclass(frozen=True, slots=True)
class WeakLabel:
    """The dataset example a piece of feedback wrote (``label``: correction, thumbs_up or
    thumbs_down)."""

    dataset: str
    example_id: str
    label: str


@dataclass(frozen=True, slots=True)
class FeedbackResult:
    """``result``: created, unchanged (the same payload again) or updated (``changed``
    names the fields)."""

    result: str
    feedback: FeedbackRecord
    changed: tuple[str, ...] = ()
    example: WeakLabel | None = None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> FeedbackResult:
        example = body.get("example")
        return cls(body["result"], FeedbackRecord.from_json(body["feedback"]),
                   tuple(body.get("changed") or ()),
                   None if not example else WeakLabel(example["dataset"], example["example_id"],
                                                      example["label"]))


@dataclass(frozen=True, slots=True)
class FeedbackPage:
    items: list[FeedbackRecord]
    total: int
    limit: int
    offset: int


@dataclass(frozen=True, slots=True)
class OutcomeStats:
    calls: int  # calls that had the outcome
    rate: float | None  # of all calls
    value_sum: float
    value_mean: float | None


@dataclass(frozen=True, slots=True)
class VersionFeedback:
    """Feedback on one version (``None``: the feature's totals)."""

    version: str | None
    calls: int
    with_feedback: int
    thumbs_up: int
    thumbs_down: int
    thumbs_up_rate: float | None
    ratings: int
    rating_mean: float | None
    comments: int
    corrections: int
    correction_rate: float | None
    outcomes: dict[str, OutcomeStats] = field(default_factory=dict)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> VersionFeedback:
        thumbs, ratings, corrections = body["thumbs"], body["ratings"], body["corrections"]
        return cls(body.get("version"), body["calls"], body["with_feedback"], thumbs["up"],
                   thumbs["down"], thumbs.get("up_rate"), ratings["count"], ratings.get("mean"),
                   body["comments"], corrections["calls"], corrections.get("rate"),
                   {name: OutcomeStats(o["calls"], o.get("rate"), o["value_sum"],
                                       o.get("value_mean"))
                    for name, o in (body.get("outcomes") or {}).items()})


@dataclass(frozen=True, slots=True)
class FeedbackStats:
    feature: str
    since: float
    until: float
    totals: VersionFeedback
    versions: list[VersionFeedback]

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> FeedbackStats:
        return cls(body["feature"], body["since"], body["until"],
                   VersionFeedback.from_json(body["totals"]),
                   [VersionFeedback.from_json(v) for v in body["versions"]])


@dataclass(frozen=True, slots=True)
class Review:
    """A review item (``/api/reviews``): ``votes`` and ``final`` as the server sends them."""

    trace_id: str
    feature: str
    version: str | None
    status: str  # pending | done
    mode: str  # deferred | held
    confidence: float | None
    reason: str | None
    input: JSON
    output: JSON
    created_at: float
    votes: list[dict[str, JSON]]
    final: dict[str, JSON] | None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Review:
        return cls(body["trace_id"], body["feature"], body.get("version"), body["status"],
                   body["mode"], body.get("confidence"), body.get("reason"), body.get("input"),
                   body.get("output"), float(body["created_at"]), list(body.get("votes") or []),
                   body.get("final"))


@dataclass(frozen=True, slots=True)
class ReviewPage:
    items: list[Review]
    total: int
    limit: int
    offset: int
