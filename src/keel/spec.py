"""Feature specs: the pydantic models behind keel.yaml, and loading it.

Loading is strict: unknown keys, dangling references (an alias to a missing version,
a version on a missing provider), invalid JSON Schemas or regexes and unreadable label
files are all refused with a :class:`~keel.errors.ConfigError` that names the file, the
field path and what is wrong. ``${VAR}`` and ``${VAR:-default}`` in any string are
replaced from the environment when the file is loaded, never per call.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import jsonschema
import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from keel.errors import ConfigError
from keel.providers.base import OutputKind, template_fields
from keel.spec_cache import CacheSpec
from keel.spec_privacy import PrivacySpec, RetentionSpec
from keel.spec_routing import RoutingSpec
from keel.types import JSON, OnFail


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CircuitSpec(_Strict):
    """When to stop sending calls to a failing target, and when to try it again."""

    failure_threshold: int = Field(default=5, ge=1)
    reset_after_s: float = Field(default=30.0, gt=0)


class ProviderSpec(_Strict):
    """A named connection to a model server (``providers:`` in keel.yaml)."""

    type: str = Field(description="wire protocol: openai (also vLLM, Ollama, LM Studio) or local")
    base_url: str | None = None
    api_key: str | None = Field(default=None, description="use ${ENV_VAR}; never write keys")
    timeout_s: float = Field(default=30.0, gt=0, description="total time for one attempt")
    connect_timeout_s: float = Field(default=5.0, gt=0)
    first_byte_timeout_s: float | None = Field(
        default=None, gt=0,
        description="time to the first byte (streams: the first token); default: timeout_s")
    max_connections: int = Field(default=256, ge=1)
    headers: dict[str, str] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)
    circuit: CircuitSpec = Field(default_factory=CircuitSpec)


DEFAULT_INPUT_SCHEMA: dict[str, JSON] = {
    "type": "object",
    "required": ["text"],
    "properties": {"text": {"type": "string"}},
}


# chat features take the caller's conversation; embedding features a batch of texts
CHAT_INPUT_SCHEMA: dict[str, JSON] = {
    "type": "object",
    "required": ["messages"],
    "properties": {"messages": {"type": "array", "minItems": 1, "items": {"type": "object"}}},
}
EMBEDDING_INPUT_SCHEMA: dict[str, JSON] = {
    "type": "object",
    "required": ["input"],
    "properties": {"input": {"type": "array", "minItems": 1, "maxItems": 2048,
                             # providers refuse an empty string (OpenAI: "'$.input' is invalid")
                             "items": {"type": "string", "minLength": 1}}},
}


class InputSpec(_Strict):
    json_schema: dict[str, JSON] = Field(default=DEFAULT_INPUT_SCHEMA, alias="schema")
    text_field: str | None = Field(default="text", description="field the text checks apply to")
    max_chars: int = Field(default=8000, ge=1)

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, value: dict[str, JSON]) -> dict[str, JSON]:
        try:
            jsonschema.Draft202012Validator.check_schema(value)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"not a valid JSON Schema: {exc.message}") from None
        return value


class OutputSpec(_Strict):
    kind: OutputKind = "label"
    labels: list[str] | None = None
    labels_file: Path | None = Field(default=None, description="a JSON list of label names")
    label_descriptions: dict[str, str] = Field(default_factory=dict)
    label_descriptions_file: Path | None = Field(
        default=None, description="a YAML or JSON mapping label -> one-line description"
    )


class _CheckBase(_Strict):
    """An input guard: runs before any model, concurrently with the others, each with a
    time limit. ``fail`` says what a guard that errs or overruns means: ``open`` lets
    the call through (the failure is recorded), ``closed`` refuses it."""

    action: Literal["refuse", "review", "log"] = "refuse"
    timeout_s: float = Field(default=0.1, gt=0, le=30)
    fail: Literal["open", "closed"] = "open"


class PiiCheckSpec(_CheckBase):
    type: Literal["pii"]
    action: Literal["redact", "refuse", "review", "log"] = "redact"  # type: ignore[assignment]
    kinds: list[Literal["email", "phone", "card", "iban", "national_id"]] | None = None


class InjectionCheckSpec(_CheckBase):
    type: Literal["injection"]
    threshold: float = Field(default=0.5, gt=0, le=1)


class LanguageCheckSpec(_CheckBase):
    type: Literal["language"]
    allowed: list[str] = Field(min_length=1, description="ISO 639-1 codes, e.g. [en, de]")
    min_confidence: float = Field(default=0.5, ge=0, le=1, description="below: not judged")


class EncodingCheckSpec(_CheckBase):
    type: Literal["encoding"]


class TokensCheckSpec(_CheckBase):
    type: Literal["tokens"]
    max_tokens: int = Field(ge=1, description="counted with the local model's tokenizer")


class CustomCheckSpec(_CheckBase):
    type: Literal["custom"]
    name: str = Field(description="a check registered on the Keel object, or module:function")


CheckSpec = Annotated[
    PiiCheckSpec | InjectionCheckSpec | LanguageCheckSpec | EncodingCheckSpec | TokensCheckSpec
    | CustomCheckSpec,
    Field(discriminator="type"),
]


class _ValidatorBase(_Strict):
    on_fail: OnFail = OnFail.REFUSE



class JsonSchemaValidatorSpec(_ValidatorBase):
    type: Literal["json_schema"]
    json_schema: dict[str, JSON] = Field(alias="schema")

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, value: dict[str, JSON]) -> dict[str, JSON]:
        return InputSpec._valid_schema(value)


class AllowedLabelsValidatorSpec(_ValidatorBase):
    type: Literal["allowed_labels"]
    labels: list[str] | None = Field(default=None, description="default: the feature's labels")


class RegexValidatorSpec(_ValidatorBase):
    type: Literal["regex"]
    pattern: str
    field: str | None = Field(default=None, description="output field to match; default: text")
    must_match: bool = True

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class LengthValidatorSpec(_ValidatorBase):
    type: Literal["length"]
    min_chars: int = Field(default=0, ge=0)
    max_chars: int | None = Field(default=None, ge=1)
    field: str | None = None


class PiiValidatorSpec(_ValidatorBase):
    """Personal data leaking into the output; repair redacts it."""

    type: Literal["pii"]
    kinds: list[Literal["email", "phone", "card", "iban", "national_id"]] | None = None
    field: str | None = None


class BannedTermsValidatorSpec(_ValidatorBase):
    """Words the output must not contain; repair masks them."""

    type: Literal["banned_terms"]
    terms: list[str] = Field(min_length=1)
    whole_words: bool = True
    case_sensitive: bool = False
    field: str | None = None


class GroundednessValidatorSpec(_ValidatorBase):
    """Every sentence of the output must be supported by the supplied context: its
    embedding (local model) close enough to some passage of it."""

    type: Literal["groundedness"]
    context_field: str = Field(default="context", description="input field with the source text")
    threshold: float = Field(default=0.5, gt=0, le=1, description="min cosine per sentence")
    field: str | None = None


class PydanticValidatorSpec(_ValidatorBase):
    """The output must validate as a pydantic model (``module:Model``)."""

    type: Literal["pydantic"]
    model: str


class CustomValidatorSpec(_ValidatorBase):
    """A validator registered on the Keel object by name, or ``module:function``."""

    type: Literal["custom"]
    name: str


ValidatorSpec = Annotated[
    JsonSchemaValidatorSpec | AllowedLabelsValidatorSpec | RegexValidatorSpec | LengthValidatorSpec
    | PiiValidatorSpec | BannedTermsValidatorSpec | GroundednessValidatorSpec
    | PydanticValidatorSpec | CustomValidatorSpec,
    Field(discriminator="type"),
]


class PolicySpec(_Strict):
    """Confidence thresholds of the decide stage.

    confidence >= accept_at -> accepted; < refuse_below -> refused; between -> review.
    """

    accept_at: float = Field(default=0.5, ge=0, le=1)
    refuse_below: float = Field(default=0.0, ge=0, le=1)
    unknown_confidence: Literal["accept", "review"] = "accept"

    @model_validator(mode="after")
    def _ordered(self) -> PolicySpec:
        if self.refuse_below > self.accept_at:
            raise ValueError(
                f"refuse_below ({self.refuse_below}) must not exceed accept_at ({self.accept_at})"
            )
        return self


class ReviewSpec(_Strict):
    """How outputs decided ``review`` reach people.

    deferred: the caller gets the output now, marked unreviewed; the verdict is for
    learning. held: the caller waits up to ``hold_timeout_s`` for a verdict, then gets
    the safe default, and is told which happened."""

    mode: Literal["deferred", "held"] = "deferred"
    hold_timeout_s: float = Field(default=30.0, gt=0, le=600)
    overlap: int = Field(default=1, ge=1, le=10, description="reviewers per item")
    order: Literal["confidence", "oldest"] = "confidence"
    lease_s: float = Field(default=600.0, gt=0, description="how long an assignment holds")
    dataset: str | None = Field(default=None, description="where verdicts go; default '<feature>-reviews'")
    audit_rate: float = Field(
        default=0.0, ge=0, le=1,
        description="share of accepted answers also sent to (deferred) review, so "
                    "calibration sees the whole confidence range, not only the doubtful")


class NonInferioritySpec(_Strict):
    """The candidate may be at most ``delta`` worse than the champion on ``metric``: the
    lower bound of a paired bootstrap interval of (candidate - champion) must lie above
    ``-delta``."""

    metric: str = "accuracy"
    delta: float = Field(default=0.02, ge=0, le=1)
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    resamples: int = Field(default=2000, ge=100, le=100_000)
    seed: int = Field(default=0, ge=0, description="bootstrap seed: same runs, same answer")


class GateSpec(_Strict):
    """What a version must pass on a pinned dataset version before it may be champion
    (``keel eval --gate``, promotion, rollout start)."""

    dataset: str | None = Field(
        default=None,
        description="'name@N' pins version N; a bare 'name' uses the pin set with keel data pin")
    split: str | None = Field(default=None, description="evaluate one split only (e.g. eval)")
    floors: dict[str, float] = Field(
        default_factory=dict, description="metric -> minimum, e.g. {accuracy: 0.8}")
    ceilings: dict[str, float] = Field(
        default_factory=dict, description="metric -> maximum, e.g. {latency_p95_ms: 200}")
    non_inferiority: NonInferioritySpec | None = Field(default_factory=NonInferioritySpec)
    max_latency_ratio: float | None = Field(
        default=1.25, gt=0, description="candidate p95 latency / champion's, at most")
    max_cost_ratio: float | None = Field(
        default=1.10, gt=0, description="candidate cost per call / champion's, at most")
    latency_slack_ms: float = Field(
        default=25.0, ge=0, description="a p95 at most this much above the champion's passes "
                                        "whatever the ratio (small latencies are noisy)")


# a business outcome's name (feedback kind outcome, rollout.outcomes)
OUTCOME_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


class RolloutSLOSpec(_Strict):
    """Hard limits for a canary: crossing one rolls back at once."""

    error_rate: float | None = Field(default=0.5, ge=0, le=1)
    validation_failure_rate: float | None = Field(default=None, ge=0, le=1)
    latency_p95_ms: float | None = Field(default=None, gt=0)
    cost_per_call_usd: float | None = Field(default=None, ge=0)
    min_calls: int = Field(default=20, ge=1, description="canary calls before a limit is judged")


class RolloutSpec(_Strict):
    """How a canary version takes traffic from the champion, and how it is judged."""

    steps: list[float] = Field(default_factory=lambda: [0.01, 0.05, 0.25, 0.5, 1.0])
    sticky: Literal["user", "session", "none"] = Field(
        default="user",
        description="user: by the call's user, else its session; session: by session only")
    min_calls: int = Field(default=200, ge=1, description="per version and step before judging")
    min_step_s: float = Field(default=60.0, ge=0, description="least time at each step")
    progress_deadline_s: float = Field(
        default=3600.0, gt=0, description="inconclusive for this long -> roll back")
    alpha: float = Field(default=0.05, gt=0, lt=1,
                         description="false-rollback budget over all metrics and steps")
    min_effect: float = Field(default=0.02, ge=0, le=1,
                              description="least worse rate (absolute) that counts as worse")
    max_latency_ratio: float = Field(default=1.5, gt=1)
    latency_slack_ms: float = Field(
        default=20.0, ge=0,
        description="p95 latency counts as worse only when it is also this much higher: "
                    "ratios of tiny latencies are noise")
    max_cost_ratio: float = Field(default=1.25, gt=1,
                                  description="candidate cost per call / champion's, at most")
    min_verdicts: int = Field(default=30, ge=1,
                              description="human verdicts per version before overrides count")
    slo: RolloutSLOSpec = Field(default_factory=RolloutSLOSpec)
    require_gate: bool = Field(default=True, description="start only with a passing eval")
    outcomes: dict[str, Literal["higher", "lower"]] = Field(
        default_factory=dict,
        description="business outcomes (POST /api/feedback, kind outcome) judged like the "
                    "other rates: name -> which way is better, e.g. {ticket_resolved: higher}")

    @field_validator("outcomes")
    @classmethod
    def _outcome_names(cls, outcomes: dict[str, str]) -> dict[str, str]:
        bad = [name for name in outcomes if not OUTCOME_NAME.fullmatch(name)]
        if bad:
            raise ValueError(f"outcome name {bad[0]!r}: lower-case letters, digits and '_', "
                             "starting with a letter (e.g. ticket_resolved)")
        return outcomes

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: list[float]) -> list[float]:
        if not steps or any(not 0 < w <= 1 for w in steps) or steps != sorted(set(steps)):
            raise ValueError("steps must be increasing shares in (0, 1], e.g. [0.05, 0.5, 1.0]")
        if steps[-1] != 1.0:
            raise ValueError("the last step must be 1.0 (all traffic) so a rollout can finish")
        return steps


class SLOSpec(_Strict):
    """Service-level objectives of a feature over a rolling window, with error budgets and
    multiwindow burn-rate alerts (``keel slo``, ``/api/slo``, docs/observability.md). An
    objective left unset is not tracked."""

    latency_p95_ms: float | None = Field(
        default=None, gt=0, description="95% of calls answer within this (5% may be slower)")
    error_rate: float | None = Field(
        default=None, gt=0, lt=1, description="share of calls that may end in decision error")
    validation_failure_rate: float | None = Field(
        default=None, gt=0, lt=1, description="share of calls with a failed output validator")
    review_rate: float | None = Field(
        default=None, gt=0, lt=1, description="share of calls that may be sent to review")
    cost_per_call_usd: float | None = Field(
        default=None, gt=0, description="mean cost of a call (calls of known cost)")
    window_days: float = Field(default=30.0, ge=1, le=90, description="the SLO window")
    page_burn_rate: float = Field(
        default=14.4, gt=1, description="page when both 1 h and 5 m burn faster than this")
    ticket_burn_rate: float = Field(
        default=6.0, gt=1, description="ticket when both 6 h and 30 m burn faster than this")


class RetrySpec(_Strict):
    max_retries: int = Field(default=2, ge=0, le=10)
    backoff_s: float = Field(default=0.05, ge=0)
    max_backoff_s: float = Field(default=2.0, ge=0)


class PriceSpec(_Strict):
    """USD per million tokens. Cached and cache-write prices default to ``input``."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(default=None, ge=0)
    cache_write: float | None = Field(default=None, ge=0)


class VersionSpec(_Strict):
    provider: str = "local"
    model: str
    prompt: str | None = None
    system: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float | None = Field(default=None, gt=0, description="default: the provider's")
    price: PriceSpec | None = None


class FeatureSpec(_Strict):
    description: str = ""
    input: InputSpec = Field(default_factory=InputSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    versions: dict[str, VersionSpec]
    aliases: dict[str, str]
    fallbacks: list[str] = Field(default_factory=list)
    checks: list[CheckSpec] = Field(default_factory=list)
    validators: list[ValidatorSpec] = Field(default_factory=list)
    policy: PolicySpec = Field(default_factory=PolicySpec)
    retry: RetrySpec = Field(default_factory=RetrySpec)
    review: ReviewSpec = Field(default_factory=ReviewSpec)
    gate: GateSpec = Field(default_factory=GateSpec)
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    slo: SLOSpec = Field(default_factory=SLOSpec)
    privacy: PrivacySpec = Field(default_factory=PrivacySpec)
    routing: RoutingSpec | None = Field(
        default=None, description="cost-aware routing policy (docs/routing.md)")
    cache: CacheSpec | None = Field(
        default=None, description="reuse accepted answers: exact and/or semantic (docs/caching.md)")
    safe_default: JSON = None

    @model_validator(mode="before")
    @classmethod
    def _input_for_kind(cls, data: Any) -> Any:
        """Chat and embedding features get their own input contract unless one is given."""
        if isinstance(data, dict) and "input" not in data:
            kind = (data.get("output") or {}).get("kind") if isinstance(data.get("output"), dict) else None
            if kind == "chat":
                return {**data, "input": {"schema": CHAT_INPUT_SCHEMA, "text_field": None,
                                          "max_chars": 200_000}}
            if kind == "embedding":
                return {**data, "input": {"schema": EMBEDDING_INPUT_SCHEMA, "text_field": None,
                                          "max_chars": 200_000}}
        return data

    @model_validator(mode="after")
    def _references(self) -> FeatureSpec:
        if not self.versions:
            raise ValueError("at least one version is needed")
        if "champion" not in self.aliases:
            raise ValueError("aliases must name a 'champion' version")
        for alias, version in self.aliases.items():
            if version not in self.versions:
                raise ValueError(
                    f"alias '{alias}' points at unknown version '{version}' "
                    f"(versions: {', '.join(self.versions)})"
                )
        for version in self.fallbacks:
            if version not in self.versions:
                raise ValueError(
                    f"fallback '{version}' is not a version (versions: {', '.join(self.versions)})"
                )
        if self.routing is not None:
            self.routing.check_versions(self.versions)
        if self.cache is not None:
            self.cache.check_feature(self.output.kind, self.input.text_field)
        return self


Scope = Literal["key", "user", "feature", "all"]


class BudgetSpec(_Strict):
    """Money a scope may spend per UTC day or month. With ``match`` the budget is one
    key / user / feature's; without it, every key / user / feature gets its own."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    scope: Scope
    match: str | None = Field(default=None, description="the key id, user or feature it is for")
    period: Literal["day", "month"] = "day"
    limit_usd: float = Field(gt=0)

    @model_validator(mode="after")
    def _match_fits_scope(self) -> BudgetSpec:
        if self.scope == "all" and self.match is not None:
            raise ValueError("a budget with scope 'all' has no match")
        return self


class ThrottleSpec(_Strict):
    """Requests and tokens per minute a scope may use (each key / user / feature its own
    unless ``match`` names one)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    scope: Scope
    match: str | None = None
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _some_limit(self) -> ThrottleSpec:
        if self.requests_per_minute is None and self.tokens_per_minute is None:
            raise ValueError("a throttle needs requests_per_minute and/or tokens_per_minute")
        if self.scope == "all" and self.match is not None:
            raise ValueError("a throttle with scope 'all' has no match")
        return self


class AlertsSpec(_Strict):
    """Where budget alerts (50/80/100% spent) go besides the store and the dashboard."""

    webhook: str | None = Field(default=None, description="POSTed a JSON alert; use ${ENV}")
    thresholds: list[float] = Field(default_factory=lambda: [0.5, 0.8, 1.0])
    timeout_s: float = Field(default=5.0, gt=0)


class KeelSpec(_Strict):
    providers: dict[str, ProviderSpec] = Field(default_factory=dict)
    pricing: dict[str, PriceSpec] = Field(
        default_factory=dict, description="model id -> price; overrides the packaged table"
    )
    features: dict[str, FeatureSpec]
    budgets: list[BudgetSpec] = Field(default_factory=list)
    throttles: list[ThrottleSpec] = Field(default_factory=list)
    alerts: AlertsSpec = Field(default_factory=AlertsSpec)
    retention: RetentionSpec = Field(default_factory=RetentionSpec)

    @model_validator(mode="after")
    def _unique_limit_names(self) -> KeelSpec:
        for kind, items in (("budgets", self.budgets), ("throttles", self.throttles)):
            names = [b.name for b in items]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{kind}: names must be unique ({', '.join(dupes)} repeated)")
        return self

    @model_validator(mode="after")
    def _providers_exist(self) -> KeelSpec:
        known = {"local", *self.providers}
        for fname, feature in self.features.items():
            for vname, version in feature.versions.items():
                if version.provider not in known:
                    raise ValueError(
                        f"features.{fname}.versions.{vname}.provider: unknown provider "
                        f"'{version.provider}' (known: {', '.join(sorted(known))})"
                    )
        return self


# --- loading -------------------------------------------------------------------------

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(value: Any, path: str, env: dict[str, str], file: str) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, f"{path}.{k}" if path else str(k), env, file) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, f"{path}[{i}]", env, file) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def sub(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(
            f"{file}: {path}: environment variable {name} is not set "
            f"(set it, or write ${{{name}:-default}})"
        )

    return _ENV.sub(sub, value)


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("json_schema",):
            out += ".schema"
        else:
            out += f".{part}" if out else str(part)
    return out


def _format_validation(file: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        # drop the discriminator tag pydantic adds for tagged unions
        tags = {"json_schema", "allowed_labels", "regex", "length", "pii", "banned_terms",
                "groundedness", "pydantic", "custom", "injection", "language", "encoding", "tokens"}
        loc = tuple(p for p in err["loc"] if p not in tags or p == err["loc"][-1])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see README: keel.yaml reference)"
        where = _loc(loc)
        lines.append(f"{file}: {where}: {msg}" if where else f"{file}: {msg}")
    return "\n".join(lines)


def _resolve_labels(spec: KeelSpec, base: Path, file: str) -> KeelSpec:
    """Read label files once at load (paths relative to keel.yaml's folder)."""
    features = {}
    for fname, feature in spec.features.items():
        out = feature.output
        if out.labels_file is not None:
            path = out.labels_file if out.labels_file.is_absolute() else base / out.labels_file
            where = f"{file}: features.{fname}.output.labels_file"
            try:
                labels = orjson.loads(path.read_bytes())
            except FileNotFoundError:
                raise ConfigError(f"{where}: file not found: {path}") from None
            except orjson.JSONDecodeError as exc:
                raise ConfigError(f"{where}: {path} is not JSON: {exc}") from None
            if not (isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels)):
                raise ConfigError(f"{where}: {path} must hold a non-empty JSON list of strings")
            out = out.model_copy(update={"labels": labels, "labels_file": path})
        if out.label_descriptions_file is not None:
            out = out.model_copy(update={"label_descriptions": {
                **_read_descriptions(out.label_descriptions_file, base, f"{file}: features.{fname}.output.label_descriptions_file"),
                **out.label_descriptions}})
        unknown = set(out.label_descriptions) - set(out.labels or [])
        if out.labels and unknown:
            raise ConfigError(
                f"{file}: features.{fname}.output.label_descriptions: not labels of this "
                f"feature: {', '.join(sorted(unknown)[:5])}"
            )
        if out.kind == "label" and not out.labels:
            raise ConfigError(
                f"{file}: features.{fname}.output: a 'label' feature needs labels or labels_file"
            )
        for i, validator in enumerate(feature.validators):
            if isinstance(validator, AllowedLabelsValidatorSpec) and not (validator.labels or out.labels):
                raise ConfigError(
                    f"{file}: features.{fname}.validators[{i}]: allowed_labels needs labels "
                    "here or on the feature's output"
                )
        for vname, version in feature.versions.items():
            if version.prompt is None:
                continue
            allowed = {"input", *feature.input.json_schema.get("properties", {})}
            missing = template_fields(version.prompt) - allowed
            if missing:
                raise ConfigError(
                    f"{file}: features.{fname}.versions.{vname}.prompt: placeholder(s) "
                    f"{', '.join(sorted(missing))} are not input properties "
                    f"(known: {', '.join(sorted(allowed))})"
                )
        versions = {}
        for vname, version in feature.versions.items():
            head = version.params.get("head")
            if isinstance(head, str) and not Path(head).is_absolute():
                version = version.model_copy(update={"params": {**version.params, "head": str(base / head)}})
            versions[vname] = version
        features[fname] = feature.model_copy(update={"output": out, "versions": versions})
    return spec.model_copy(update={"features": features})


def _read_descriptions(path: Path, base: Path, where: str) -> dict[str, str]:
    path = path if path.is_absolute() else base / path
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{where}: file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: {path} is not YAML or JSON: {exc}") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise ConfigError(f"{where}: {path} must map each label to a one-line description")
    return data


def parse_spec(data: Any, *, file: str = "keel.yaml", base: Path | None = None,
               env: dict[str, str] | None = None) -> KeelSpec:
    """Validate an already-parsed keel.yaml document."""
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: the top level must be a mapping with a 'features' key")
    data = _interpolate(data, "", dict(os.environ) if env is None else env, file)
    try:
        spec = KeelSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation(file, exc)) from None
    return _resolve_labels(spec, base or Path.cwd(), file)


def load_spec(path: str | os.PathLike[str], env: dict[str, str] | None = None) -> KeelSpec:
    """Read and validate keel.yaml. Raises ConfigError with a message fit for a person."""
    p = Path(path)
    file = str(p)
    try:
        raw = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{file}: file not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{file}: {where}invalid YAML: {problem}") from None
    return parse_spec(data, file=file, base=p.resolve().parent, env=env)
