"""Keel's one exception tree. Every error has a stable ``code`` and an HTTP status.

::

    KeelError
    ├── ConfigError                  keel.yaml is wrong (never reaches HTTP)
    ├── RequestError            400  the caller sent something we cannot use
    │   ├── EmptyBody           400  empty_body
    │   ├── InvalidJSON         400  invalid_json
    │   ├── InvalidEncoding     400  invalid_encoding
    │   ├── BodyTooLarge        413  body_too_large
    │   ├── InvalidRequest      400  invalid_request       (wrong envelope shape/types)
    │   ├── InputSchemaError    400  input_schema_violation
    │   ├── EmptyText           400  empty_text
    │   ├── TextTooLong         400  text_too_long
    │   └── InvalidFeedback     422  invalid_feedback      (well-formed JSON, unusable feedback)
    ├── NotFound                404
    │   ├── FeatureNotFound     404  feature_not_found
    │   ├── ReviewNotFound      404  review_not_found
    │   ├── VersionNotFound     404  version_not_found
    │   ├── DatasetNotFound     404  dataset_not_found     (no such dataset or dataset version)
    │   ├── EvalRunNotFound     404  eval_run_not_found
    │   ├── RolloutNotFound     404  rollout_not_found     (no rollout, or none active)
    │   ├── EventNotFound       404  event_not_found       (no event with this trace id)
    │   ├── KeyNotFound         404  key_not_found         (no API key with this id)
    │   └── RouteNotFound       404  not_found
    ├── ProviderError           502  one attempt at one target failed
    │   ├── ProviderTimeout     504  provider_timeout      (retryable)
    │   ├── ProviderUnavailable 502  provider_unavailable  (retryable: 5xx, connect errors)
    │   ├── ProviderRateLimited 429  provider_rate_limited (retryable, may carry retry_after)
    │   ├── ProviderBadResponse 502  provider_bad_response (malformed body; next target)
    │   └── ProviderRejected    502  provider_rejected     (4xx from upstream; not retryable)
    ├── ReviewConflict          409  the verdict cannot be taken in the item's state
    │   ├── ReviewClosed        409  review_closed
    │   └── ReviewDuplicate     409  review_duplicate      (same reviewer twice)
    ├── ControlConflict         409  a control-plane change the current state forbids
    │   ├── VersionExists       409  version_exists        (versions are immutable)
    │   ├── GateRequired        409  gate_required         (champion needs a passing eval)
    │   ├── RolloutConflict     409  rollout_conflict      (one active rollout per feature)
    │   └── KeyExists           409  key_exists            (a live API key has this name)
    ├── InvalidApiKey           401  invalid_api_key       (gateway keys are set; none valid)
    ├── PermissionDenied        403  permission_denied     (the key's role or features do not allow it)
    ├── AuthUnavailable         503  auth_unavailable      (the API keys cannot be read from the store)
    ├── UpstreamRateLimited     429  upstream_rate_limited (every target was rate-limited)
    ├── BudgetExceeded          429  budget_exceeded       (a spending budget is used up; Retry-After)
    ├── Throttled               429  rate_limited          (over a requests/tokens-per-minute throttle)
    ├── LimitsUnavailable       503  limits_unavailable    (Redis is down and budgets fail closed)
    └── AllTargetsFailed        502  all_targets_failed    (every target of the route failed)

Bad input is 400 everywhere (as OpenAI answers it, so its SDK raises BadRequestError),
except a feedback payload that parses but cannot be used: 422 (``/api/feedback`` is no
OpenAI route).
The HTTP layer also answers a failing store (``keel.store.db.DB_ERRORS``) with 503
``store_unavailable`` and Retry-After.
The HTTP layer turns any of these into ``{"error": {"code", "message", "type", "param"}}``,
which is also the shape OpenAI's SDK parses into its own exception types.
"""

from __future__ import annotations


class KeelError(Exception):
    code: str = "keel_error"
    status: int = 500
    # OpenAI's error "type" for the same situation, so its SDK maps it right
    type: str = "api_error"
    retryable: bool = False
    # seconds until trying again can succeed; the HTTP layer sends it as Retry-After
    retry_after: float | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def to_dict(self) -> dict[str, str | None]:
        return {"code": self.code, "message": self.message, "type": self.type, "param": self.param}


class ConfigError(KeelError):
    """A keel.yaml that cannot be used. ``message`` names the file and the field path."""

    code = "config_invalid"


class RequestError(KeelError):
    code = "bad_request"
    status = 400
    type = "invalid_request_error"


class EmptyBody(RequestError):
    code = "empty_body"


class InvalidJSON(RequestError):
    code = "invalid_json"


class InvalidEncoding(RequestError):
    code = "invalid_encoding"


class BodyTooLarge(RequestError):
    code = "body_too_large"
    status = 413


class InvalidRequest(RequestError):
    code = "invalid_request"


class InputSchemaError(RequestError):
    code = "input_schema_violation"


class EmptyText(RequestError):
    code = "empty_text"


class TextTooLong(RequestError):
    code = "text_too_long"


class InvalidFeedback(RequestError):
    """A feedback payload that parses but cannot be used (``POST /api/feedback``): an
    unknown kind, a value of the wrong type or range, a correction in the wrong shape."""

    code = "invalid_feedback"
    status = 422


class NotFound(KeelError):
    code = "not_found"
    status = 404
    type = "not_found_error"


class FeatureNotFound(NotFound):
    code = "feature_not_found"


class ReviewNotFound(NotFound):
    code = "review_not_found"


class VersionNotFound(NotFound):
    code = "version_not_found"


class DatasetNotFound(NotFound):
    code = "dataset_not_found"


class EvalRunNotFound(NotFound):
    code = "eval_run_not_found"


class RolloutNotFound(NotFound):
    code = "rollout_not_found"


class EventNotFound(NotFound):
    code = "event_not_found"


class KeyNotFound(NotFound):
    code = "key_not_found"


class RouteNotFound(NotFound):
    code = "not_found"


class ProviderError(KeelError):
    code = "provider_error"
    status = 502


class ProviderTimeout(ProviderError):
    code = "provider_timeout"
    status = 504
    retryable = True


class ProviderUnavailable(ProviderError):
    code = "provider_unavailable"
    retryable = True


class ProviderRateLimited(ProviderError):
    code = "provider_rate_limited"
    status = 429
    type = "rate_limit_error"
    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ProviderBadResponse(ProviderError):
    code = "provider_bad_response"


class ProviderRejected(ProviderError):
    code = "provider_rejected"


class ProviderStreamInterrupted(ProviderError):
    """The stream broke after content reached the caller: nothing can be retried."""

    code = "provider_stream_interrupted"


class CircuitOpen(ProviderError):
    code = "circuit_open"
    status = 503


class ReviewConflict(KeelError):
    """The verdict cannot be taken in the item's current state."""

    code = "review_conflict"
    status = 409
    type = "invalid_request_error"


class ReviewClosed(ReviewConflict):
    code = "review_closed"


class ReviewDuplicate(ReviewConflict):
    code = "review_duplicate"


class ControlConflict(KeelError):
    """A control-plane change (alias move, registration, rollout) the state forbids."""

    code = "control_conflict"
    status = 409
    type = "invalid_request_error"


class VersionExists(ControlConflict):
    code = "version_exists"


class GateRequired(ControlConflict):
    code = "gate_required"


class RolloutConflict(ControlConflict):
    code = "rollout_conflict"


class KeyExists(ControlConflict):
    code = "key_exists"


class InvalidApiKey(KeelError):
    code = "invalid_api_key"
    status = 401
    type = "authentication_error"


class PermissionDenied(KeelError):
    """A valid key whose role, or whose feature list, does not cover the request; the
    message names the role needed (OpenAI's SDK raises PermissionDeniedError)."""

    code = "permission_denied"
    status = 403
    type = "permission_error"


class AuthUnavailable(KeelError):
    code = "auth_unavailable"
    status = 503


class UpstreamRateLimited(KeelError):
    code = "upstream_rate_limited"
    status = 429
    type = "rate_limit_error"


class BudgetExceeded(KeelError):
    """Refused before any model was called: a budget of this call's scope is spent."""

    code = "budget_exceeded"
    status = 429
    type = "insufficient_quota"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Throttled(KeelError):
    """Refused before any model was called: over a requests- or tokens-per-minute limit."""

    code = "rate_limited"
    status = 429
    type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class LimitsUnavailable(KeelError):
    """Budgets and throttles live in Redis, Redis did not answer, and they fail closed."""

    code = "limits_unavailable"
    status = 503


class AllTargetsFailed(KeelError):
    code = "all_targets_failed"
    status = 502

    def __init__(self, message: str, *, trace_id: str) -> None:
        super().__init__(message)
        self.trace_id = trace_id
