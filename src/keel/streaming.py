"""A streamed call: the same stages as :mod:`keel.pipeline`, with the answer handed on
delta by delta.

    checks -> route -> open stream (+ retries, + fallback before the first delta)
           -> deltas to the caller -> validate -> decide -> record

Until the first delta the caller has seen nothing, so failures retry and fall back
exactly as in a plain call. After it, the call is committed to that target: a break
raises :class:`~keel.errors.ProviderStreamInterrupted` (the server turns it into an
explicit error event, never a clean-looking end) and is recorded. Validators run on
the whole answer once it is complete; their decision is recorded and reported in the
final :class:`~keel.types.Outcome`, but what was streamed cannot be taken back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from keel.errors import (
    AllTargetsFailed,
    KeelError,
    ProviderError,
    ProviderRateLimited,
    ProviderStreamInterrupted,
    UpstreamRateLimited,
)
from keel.stages.decide import USABLE, decide
from keel.stages.invoke_stream import aclose_quietly, open_stream
from keel.stages.route_policy import plan_route, settle
from keel.stages.validate import run_validators
from keel.types import JSON, Attempt, Call, Completion, Decision, Delta, Outcome, Usage

if TYPE_CHECKING:
    from keel.pipeline import Pipeline

STREAMABLE = frozenset({"chat", "text"})


class StreamFailed(KeelError):
    """No delta could be produced: every target failed before its first token."""

    code = AllTargetsFailed.code
    status = 502

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.error or "every target failed")
        self.outcome = outcome


@dataclass(frozen=True, slots=True)
class StreamStart:
    """Yielded once, before the first delta: which version is answering."""

    trace_id: str
    version: str


class Accumulator:
    """Reassembles streamed deltas into one answer (content and tool calls)."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.usage = Usage()
        self.chunks = 0

    def add(self, delta: Delta) -> None:
        self.chunks += 1
        if delta.text:
            self.parts.append(delta.text)
        for call in delta.tool_calls or ():
            index = int(call.get("index", 0))
            slot = self.tool_calls.setdefault(
                index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
            if call.get("id"):
                slot["id"] = call["id"]
            function = call.get("function") or {}
            if function.get("name"):
                slot["function"]["name"] += function["name"]
            if function.get("arguments"):
                slot["function"]["arguments"] += function["arguments"]
        if delta.finish_reason:
            self.finish_reason = delta.finish_reason
        if delta.usage is not None:
            self.usage = delta.usage

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def output(self, kind: str) -> JSON:
        if kind == "text":
            return {"text": self.text}
        message: dict[str, JSON] = {"role": "assistant", "content": self.text or None}
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        return message


async def stream_call(pipeline: Pipeline, call: Call) -> AsyncIterator[StreamStart | Delta | Outcome]:
    """A StreamStart, the deltas as they come, then the final Outcome; or only an Outcome
    when an input guard refused the call or the cache had the answer. Raises RequestError
    for bad input, StreamFailed when no target produced a first delta,
    ProviderStreamInterrupted when the chosen target broke mid-stream (all recorded)."""
    feature = pipeline.feature(call.feature)
    clock = time.perf_counter
    start = clock()
    timings: dict[str, float] = {}
    guarded, refusal = await pipeline.admit(feature, call, start, timings)
    if refusal is not None:
        yield refusal
        return
    t = clock()
    route = feature.router.route(call)
    call.routed = route.versions[0]
    plan = plan_route(feature, call, route, pipeline.rng, streaming=True)  # routing policy
    route = plan.route
    timings["route"] = _ms(t)
    # cache (keel.stages.cache): a hit is the whole answer at once, like a refusal
    lookup = None if pipeline.cache is None else await pipeline.cache.lookup(
        feature, call, guarded, timings)
    if lookup is not None and lookup.hit is not None:
        pipeline.emit(call, start, timings, lookup.hit)
        yield lookup.hit
        return

    attempts: list[Attempt] = []
    last_error: ProviderError | None = None
    for index, version in enumerate(route.versions):
        target = feature.targets[version]
        request = feature.request(version, call.input, call.options)
        try:
            first, rest, began = await open_stream(
                target.provider, request, feature.spec.retry, attempts, pipeline.rng, target.breaker)
        except ProviderError as exc:
            last_error = exc
            continue
        timings["first_token"] = _ms(start)
        acc = Accumulator()
        acc.add(first)
        failure: ProviderStreamInterrupted | None = None
        closed_by_caller = False
        try:
            yield StreamStart(call.trace_id, version)
            yield first
            async for delta in rest:
                acc.add(delta)
                yield delta
        except ProviderError as exc:
            failure = exc if isinstance(exc, ProviderStreamInterrupted) else ProviderStreamInterrupted(
                f"{target.provider.name}: the stream broke after {acc.chunks} chunk(s): {exc.message}")
        except (GeneratorExit, asyncio.CancelledError):
            closed_by_caller = True
            raise
        finally:
            if failure is not None or closed_by_caller:
                await aclose_quietly(rest)
                code = failure.code if failure else "client_closed"
                message = failure.message if failure else "the caller closed the stream"
                attempts.append(Attempt(version, target.provider.name, False, _ms(began),
                                        error_code=code, error=message))
                if failure is not None:
                    target.breaker.record_failure()
                cost = pipeline.pricing.cost_usd(
                    target.provider_type, feature.spec.versions[version], acc.usage)
                pipeline.emit(call, start, timings, _outcome(
                    call, feature.name, version=version, attempts=attempts, usage=acc.usage,
                    cost=cost, output=acc.output(request.output_kind), code=code, message=message))
        if failure is not None:
            raise failure
        target.breaker.record_success()
        attempts.append(Attempt(version, target.provider.name, True, _ms(began)))
        t_val = clock()
        output = acc.output(request.output_kind)
        validations, output = await run_validators(feature.validators, output, call.input)
        timings["validate"] = _ms(t_val)
        verdict = decide(output, None, validations, feature.spec.policy, feature.spec.safe_default,
                         from_fallback=index >= plan.planned)
        reason = verdict.reason
        decision = verdict.decision
        if guarded is not None and guarded.review and decision in USABLE:
            decision, reason = Decision.REVIEW, guarded.review
        outcome = Outcome(
            trace_id=call.trace_id, feature=feature.name, version=version, output=output,
            decision=decision, confidence=None, timings_ms=timings,
            cost_usd=pipeline.pricing.cost_usd(
                target.provider_type, feature.spec.versions[version], acc.usage),
            usage=acc.usage, attempts=attempts, validations=validations, reason=reason,
            checks=guarded.results if guarded is not None else [],
            finish_reason=acc.finish_reason or "stop",
        )
        settle(plan, feature, pipeline.pricing, outcome,
               (index, version, Completion(output, usage=acc.usage), output))
        if outcome.decision is Decision.REVIEW:  # already streamed: held review cannot apply
            pipeline.queue_review(feature, call, outcome, "deferred")
            outcome.review = "pending"
        if lookup is not None:
            await lookup.save(outcome)  # cache: kept when accepted / repaired
        pipeline.emit(call, start, timings, outcome)
        yield outcome
        return

    limited = isinstance(last_error, ProviderRateLimited)
    outcome = _outcome(
        call, feature.name, attempts=attempts,
        code=UpstreamRateLimited.code if limited else AllTargetsFailed.code,
        message=f"every target failed before its first token ({', '.join(route.versions)}); "
                f"last error: {last_error.message if last_error else 'none'}")
    if isinstance(last_error, ProviderRateLimited):
        outcome.retry_after = last_error.retry_after
    settle(plan, feature, pipeline.pricing, outcome, None)
    pipeline.emit(call, start, timings, outcome)
    raise StreamFailed(outcome)


def _outcome(call: Call, feature: str, *, version: str | None = None, attempts: list[Attempt] | None = None,
             usage: Usage | None = None, cost: float | None = 0.0, output: JSON = None,
             code: str | None = None, message: str | None = None) -> Outcome:
    return Outcome(
        trace_id=call.trace_id, feature=feature, version=version, output=output,
        decision=Decision.ERROR, confidence=None, timings_ms={}, cost_usd=cost,
        usage=usage or Usage(), attempts=attempts or [], validations=[],
        error_code=code, error=message,
    )


def _ms(start: float, end: float | None = None) -> float:
    return round(((end if end is not None else time.perf_counter()) - start) * 1000, 3)
