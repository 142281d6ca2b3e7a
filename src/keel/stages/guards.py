"""Input guards: policy checks on a well-formed input, before any model is called.

PII (redact or refuse), prompt injection, language, encoding, token limits and custom
checks registered by name. They run concurrently, each under its own time limit; a
guard that errs or overruns fails *open* (the call goes on, the failure is recorded)
or *closed* (the call is refused), as its spec says. Their actions: ``redact`` (the
model and the event see the redacted input), ``refuse`` (the safe default, no model
call), ``review`` (the answer goes to a human), ``log``.

The detectors themselves live in :mod:`keel.guards`; this module wires them in.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from keel.errors import ConfigError
from keel.guards.injection import injection_score
from keel.guards.language import detect_language, is_valid_text
from keel.guards.pii import find_pii, redact
from keel.spec import (
    CheckSpec,
    CustomCheckSpec,
    EncodingCheckSpec,
    FeatureSpec,
    InjectionCheckSpec,
    LanguageCheckSpec,
    PiiCheckSpec,
    TokensCheckSpec,
)
from keel.types import JSON

Input = dict[str, JSON]


@dataclass(frozen=True, slots=True)
class Finding:
    """What one guard found. ``redacted`` replaces the input when set."""

    passed: bool
    message: str | None = None
    redacted: Input | None = None


# a custom check: takes the input, returns True/None (pass), False or a message (fail),
# or a Finding; may be a coroutine function
CustomCheck = Callable[[Input], Any]


@dataclass(slots=True)
class CheckResult:
    check: str
    passed: bool
    action: str
    message: str | None = None
    latency_ms: float = 0.0
    failed_open: bool = False  # the guard itself erred or overran and was let through


@dataclass(slots=True)
class GuardOutcome:
    input: Input
    results: list[CheckResult] = field(default_factory=list)
    refused: str | None = None  # why the call is refused
    review: str | None = None  # why the answer must go to a human


def texts(input: Input, text_field: str | None) -> list[str]:
    """The strings a guard reads: the feature's text field, or a chat's message texts."""
    if text_field:
        value = input.get(text_field)
        return [value] if isinstance(value, str) else []
    out: list[str] = []
    for message in input.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out.extend(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return out


def _rewrite(input: Input, text_field: str | None, fix: Callable[[str], str]) -> Input:
    if text_field:
        value = input.get(text_field)
        return {**input, text_field: fix(value)} if isinstance(value, str) else input
    messages = []
    for message in input.get("messages") or []:
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            message = {**message, "content": fix(message["content"])}
        elif isinstance(message, dict) and isinstance(message.get("content"), list):
            message = {**message, "content": [
                {**p, "text": fix(p["text"])} if isinstance(p, dict) and isinstance(p.get("text"), str) else p
                for p in message["content"]]}
        messages.append(message)
    return {**input, "messages": messages}


class Guard:
    """One configured guard: its spec and a function from input to Finding."""

    def __init__(self, spec: CheckSpec, run: Callable[[Input], Finding | Awaitable[Finding]]) -> None:
        self.spec = spec
        self.name = spec.type if not isinstance(spec, CustomCheckSpec) else f"custom:{spec.name}"
        self._run = run

    async def __call__(self, input: Input) -> tuple[CheckResult, Input | None]:
        """The result, and the redacted input when the guard rewrote it."""
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.spec.timeout_s):
                finding = self._run(input)
                if inspect.isawaitable(finding):
                    finding = await finding
        except Exception as exc:
            why = f"no verdict within {self.spec.timeout_s:g} s" if isinstance(exc, TimeoutError) \
                else f"the check failed: {type(exc).__name__}: {exc}"
            open_ = self.spec.fail == "open"
            return CheckResult(self.name, open_, "refuse" if not open_ else self.spec.action,
                               why, _ms(start), failed_open=open_), None
        assert isinstance(finding, Finding)
        result = CheckResult(self.name, finding.passed, self.spec.action, finding.message, _ms(start))
        return result, finding.redacted


async def run_guards(guards: list[Guard], input: Input) -> GuardOutcome:
    outcome = GuardOutcome(input)
    if not guards:
        return outcome
    results = await asyncio.gather(*(guard(input) for guard in guards))
    for result, redacted in results:
        outcome.results.append(result)
        if result.passed:
            continue
        label = f"{result.check}: {result.message}"
        if result.action == "redact" and redacted is not None:
            outcome.input = redacted
        elif result.action == "refuse":
            outcome.refused = outcome.refused or label
        elif result.action == "review":
            outcome.review = outcome.review or label
    return outcome


def build_guards(feature: FeatureSpec, custom: Mapping[str, CustomCheck],
                 count_tokens: Callable[[str], int] | None = None) -> list[Guard]:
    field_ = feature.input.text_field if feature.output.kind != "chat" else None
    guards = []
    for spec in feature.checks:
        guards.append(Guard(spec, _detector(spec, field_, custom, count_tokens)))
    return guards


def _detector(spec: CheckSpec, field_: str | None, custom: Mapping[str, CustomCheck],
              count_tokens: Callable[[str], int] | None) -> Callable[[Input], Any]:
    if isinstance(spec, PiiCheckSpec):
        kinds = tuple(spec.kinds) if spec.kinds else None

        def pii(input: Input) -> Finding:
            found = [m for t in texts(input, field_) for m in (find_pii(t, kinds) if kinds else find_pii(t))]
            if not found:
                return Finding(True)
            names = ", ".join(sorted({m.kind for m in found}))
            fixed = _rewrite(input, field_, lambda t: redact(t, find_pii(t, kinds) if kinds else find_pii(t)))
            return Finding(False, f"personal data in the input ({names})", fixed)
        return pii
    if isinstance(spec, InjectionCheckSpec):
        def injection(input: Input) -> Finding:
            best = max((injection_score(t) for t in texts(input, field_)), key=lambda r: r.score, default=None)
            if best is None or best.score < spec.threshold:
                return Finding(True)
            return Finding(False, f"likely prompt injection (score {best.score:.2f}: "
                                  f"{', '.join(best.signals[:3])})")
        return injection
    if isinstance(spec, LanguageCheckSpec):
        allowed = {code.lower() for code in spec.allowed}

        def language(input: Input) -> Finding:
            text = " ".join(texts(input, field_))
            guess = detect_language(text)
            if guess.confidence < spec.min_confidence or guess.code in allowed:
                return Finding(True)
            return Finding(False, f"language '{guess.code}' ({guess.confidence:.2f}) is not one of "
                                  f"{', '.join(sorted(allowed))}")
        return language
    if isinstance(spec, EncodingCheckSpec):
        def encoding(input: Input) -> Finding:
            for text in texts(input, field_):
                problem = is_valid_text(text)
                if problem:
                    return Finding(False, problem)
            return Finding(True)
        return encoding
    if isinstance(spec, TokensCheckSpec):
        if count_tokens is None:
            raise ConfigError("tokens check: no tokenizer available")
        counter = count_tokens

        def tokens(input: Input) -> Finding:
            n = sum(counter(t) for t in texts(input, field_))
            return Finding(True) if n <= spec.max_tokens else Finding(
                False, f"{n} tokens; this feature accepts at most {spec.max_tokens}")
        return tokens
    fn = resolve_custom(spec.name, custom)

    async def run_custom(input: Input) -> Finding:
        result = fn(input)
        if inspect.isawaitable(result):
            result = await result
        elif not isinstance(result, Finding | bool | str | type(None)):
            raise TypeError(f"custom check {spec.name} returned {type(result).__name__}")
        if isinstance(result, Finding):
            return result
        if result is True or result is None:
            return Finding(True)
        return Finding(False, result if isinstance(result, str) else f"rejected by {spec.name}")
    return run_custom


def resolve_custom(name: str, registry: Mapping[str, Callable[..., Any]]) -> Callable[..., Any]:
    """A registered callable, or one imported from ``module:attribute``."""
    if name in registry:
        return registry[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"custom '{name}': cannot import it: {exc}") from None
        if callable(fn):
            return fn  # type: ignore[no-any-return]
    known = ", ".join(sorted(registry)) or "none registered"
    raise ConfigError(f"custom '{name}' is not registered ({known}); register it with "
                      "Keel(..., checks={...}) or Keel(..., validators={...}), "
                      "or write module:function")


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)
