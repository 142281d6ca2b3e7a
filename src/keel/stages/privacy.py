"""What of a call is kept: the record stage's last look before anything is written.

Every :class:`~keel.types.Event` and :class:`~keel.types.ReviewRequest` goes through one
:class:`Sanitizer` on its way to the writer (before the journal, the store or a spill
file see it):

* secrets are masked everywhere a string can hold one (:mod:`keel.stages.scrub`): the
  input, the output, the attempts' error messages, validator and guard messages, the
  reason, a repaired output;
* the feature's ``privacy`` policy decides what an event keeps of the input and of the
  output: ``full``, ``redacted`` (personal data masked by the detectors of
  :mod:`keel.guards.pii`: ``[EMAIL]``, ``[PHONE]``, ...) or ``none``. A policy that is
  not ``full`` also reaches the parts that quote the same text: a validator's repaired
  output and its message for the output, the guards' messages for the input, the reason.
  ``Settings.store_payloads = False`` still stores no payload at all, whatever the policy;
* review items are for people to judge, so they keep their input and output, masked
  (``redacted``) unless the policy is ``full``.

Values are copied only where something changes: the caller's answer is never touched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from keel.guards.pii import ALL_KINDS, PiiKind, find_pii, redact
from keel.stages.scrub import Scrubber
from keel.types import Attempt, Event, Outcome, ReviewRequest, ValidationResult

StoreMode = Literal["full", "redacted", "none"]
Record = Event | ReviewRequest
_R = TypeVar("_R", Event, ReviewRequest)
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Policy:
    input: StoreMode = "full"
    output: StoreMode = "full"
    kinds: tuple[PiiKind, ...] = ALL_KINDS

    @property
    def full(self) -> bool:
        return self.input == "full" and self.output == "full"

    @classmethod
    def of(cls, spec: Any) -> Policy:
        """From a feature's ``privacy`` spec (``keel.spec.PrivacySpec``)."""
        kinds = tuple(spec.kinds) if spec.kinds else ALL_KINDS
        return cls(spec.store_input, spec.store_output, kinds)


FULL = Policy()


def redact_value(value: Any, kinds: tuple[PiiKind, ...] = ALL_KINDS) -> Any:
    """A JSON value (or dataclass) with personal data masked in every string; the same
    object when there was none."""
    return _walk(value, lambda text: _redact_text(text, kinds))


def _redact_text(text: str, kinds: tuple[PiiKind, ...]) -> str:
    found = find_pii(text, kinds)
    return redact(text, found) if found else text


def _walk(value: Any, fix: Callable[[str], str]) -> Any:
    if type(value) is str:
        return fix(value)
    if isinstance(value, dict):
        out: dict[Any, Any] | None = None
        for k, v in value.items():
            new = _walk(v, fix)
            if new is not v:
                if out is None:
                    out = dict(value)
                out[k] = new
        return value if out is None else out
    if isinstance(value, list | tuple):
        items = [_walk(v, fix) for v in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return items if isinstance(value, list) else tuple(items)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {}
        for f in dataclasses.fields(value):
            old = getattr(value, f.name)
            new = _walk(old, fix)
            if new is not old:
                changes[f.name] = new
        return dataclasses.replace(value, **changes) if changes else value
    return value


class Sanitizer:
    """``sanitize(record)``: the record as it may be kept (see the module doc)."""

    def __init__(self, scrubber: Scrubber, policies: Mapping[str, Policy] | None = None) -> None:
        self.scrubber = scrubber
        self.policies = dict(policies or {})

    def __call__(self, record: Record) -> Record:
        policy = self.policies.get(record.feature, FULL)
        if isinstance(record, Event):
            return self._event(record, policy)
        return self._review(record, policy)

    def _keep(self, value: Any, mode: StoreMode, kinds: tuple[PiiKind, ...]) -> Any:
        if value is None or mode == "none":
            return None
        if mode == "redacted":
            value = redact_value(value, kinds)
        return self.scrubber.value(value)

    def _text(self, text: str | None, redacted: bool, kinds: tuple[PiiKind, ...]) -> str | None:
        if text is None:
            return None
        text = self.scrubber.text(text)
        return _redact_text(text, kinds) if redacted else text

    def _event(self, e: Event, policy: Policy) -> Event:
        # only the fields that carry text from outside: ids, codes and numbers are Keel's
        kinds, out_full = policy.kinds, policy.output == "full"
        text = self._text

        def attempt(a: Attempt) -> Attempt:
            error = text(a.error, False, kinds)
            return a if error is a.error else dataclasses.replace(a, error=error)

        def validation(v: ValidationResult) -> ValidationResult:
            message = text(v.message, not out_full, kinds)
            repaired = self._keep(v.repaired, policy.output, kinds)
            if message is v.message and repaired is v.repaired:
                return v
            return dataclasses.replace(v, message=message, repaired=repaired)

        def check(c: Any) -> Any:
            message = getattr(c, "message", None)
            if not isinstance(message, str):
                return self.scrubber.value(c)
            new = text(message, policy.input != "full", kinds)
            return c if new is message else dataclasses.replace(c, message=new)

        return _replace(e, {
            "input": self._keep(e.input, policy.input, kinds),
            "output": self._keep(e.output, policy.output, kinds),
            "attempts": _each(e.attempts, attempt),
            "validations": _each(e.validations, validation),
            "checks": _each(e.checks, check),
            "reason": text(e.reason, not policy.full, kinds),
        })

    def _review(self, r: ReviewRequest, policy: Policy) -> ReviewRequest:
        masked = not policy.full
        kinds = policy.kinds

        def keep(value: Any) -> Any:
            return self._keep(value, "redacted" if masked else "full", kinds)

        changes: dict[str, Any] = {
            "input": keep(r.input), "output": keep(r.output), "reason": keep(r.reason),
            "validations": keep(r.validations),
        }
        return _replace(r, changes)


def _each(items: list[_T], fix: Callable[[_T], _T]) -> list[_T]:
    """``fix`` applied to each item: the same list when no item changed."""
    fixed = [fix(x) for x in items]
    return items if all(a is b for a, b in zip(fixed, items, strict=True)) else fixed


def _replace(record: _R, changes: dict[str, Any]) -> _R:
    changed = {k: v for k, v in changes.items() if v is not getattr(record, k)}
    return dataclasses.replace(record, **changed) if changed else record


def scrub_outcome(outcome: Outcome, scrubber: Scrubber) -> Outcome:
    """Secrets out of what a failed call tells its caller: the error and the attempts'
    errors quote upstream answers, and an upstream may echo the key Keel sent it."""
    if outcome.error is not None:
        outcome.error = scrubber.text(outcome.error)
    if any(a.error for a in outcome.attempts):
        outcome.attempts = scrubber.value(outcome.attempts)
    return outcome
