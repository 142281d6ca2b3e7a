"""The order of one call's stages, in one place:

    checks -> route -> cache -> invoke (+ fallback) -> validate -> decide -> record

Each stage lives in its own module under :mod:`keel.stages`; this module only wires
them together, times them and builds the :class:`~keel.types.Outcome`. It is async and
does no blocking I/O: recording hands the event to a background writer.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Callable, Mapping

import orjson

from keel.errors import (
    AllTargetsFailed,
    BudgetExceeded,
    FeatureNotFound,
    KeelError,
    ProviderError,
    ProviderRateLimited,
    RequestError,
    Throttled,
    UpstreamRateLimited,
)
from keel.feature import Feature
from keel.pricing import Pricing
from keel.spec import RetrySpec
from keel.stages.budget import BudgetGate
from keel.stages.cache import CacheStage, source
from keel.stages.checks import run_checks
from keel.stages.decide import USABLE, decide
from keel.stages.guards import GuardOutcome, run_guards
from keel.stages.hold import ReviewHub
from keel.stages.invoke import invoke_target
from keel.stages.route_policy import plan_route, settle
from keel.stages.validate import run_validators
from keel.streaming import StreamStart, stream_call
from keel.types import (
    Attempt,
    Call,
    Decision,
    Delta,
    Event,
    OnFail,
    Outcome,
    ReviewRequest,
    Usage,
    ValidationResult,
)


class Pipeline:
    def __init__(
        self,
        features: Mapping[str, Feature],
        record: Callable[[Event | ReviewRequest], None],
        pricing: Pricing,
        *,
        hub: ReviewHub | None = None,
        store_payloads: bool = True,
        rng: random.Random | None = None,
    ) -> None:
        self.features = features
        self._record = record
        self.hub = hub or ReviewHub()
        self.pricing = pricing
        self._store_payloads = store_payloads
        self.rng = rng or random.Random()
        self.budgets: BudgetGate | None = None  # set when keel.yaml has budgets or throttles
        self.cache: CacheStage | None = None  # set when a feature has cache: in keel.yaml

    def feature(self, name: str) -> Feature:
        try:
            return self.features[name]
        except KeyError:
            known = ", ".join(sorted(self.features)) or "none"
            raise FeatureNotFound(f"no feature named '{name}' (features: {known})") from None

    def stream(self, call: Call) -> AsyncIterator[StreamStart | Delta | Outcome]:
        """Serve one call as a stream: see :mod:`keel.streaming`."""
        return stream_call(self, call)

    async def admit(self, feature: Feature, call: Call, start: float,
                    timings: dict[str, float]) -> tuple[GuardOutcome | None, Outcome | None]:
        """The input stages every call passes, streamed or not: the contract checks (bad
        input raises a RequestError, recorded) and the guards (which may redact the input,
        or refuse the call: then the recorded refusal Outcome is returned)."""
        clock = time.perf_counter
        try:
            run_checks(feature.checks, call)
        except RequestError as exc:
            timings["checks"] = _ms(start)
            self.emit(call, start, timings, _failed(call, feature.name, exc, timings))
            raise
        t = clock()
        timings["checks"] = _ms(start, t)
        if not feature.guards:
            await self._limits(feature, call, start, timings)
            return None, None
        guarded = await run_guards(feature.guards, call.input)
        call.input = guarded.input  # redacted: the model, the event and reviewers see this
        timings["guards"] = _ms(t)
        if guarded.refused is None:
            await self._limits(feature, call, start, timings)
            return guarded, None
        outcome = Outcome(
            trace_id=call.trace_id, feature=feature.name, version=None,
            output=feature.spec.safe_default, decision=Decision.REFUSED, confidence=None,
            timings_ms=timings, cost_usd=0.0, usage=Usage(), attempts=[], validations=[],
            reason=guarded.refused, finish_reason="content_filter", checks=guarded.results)
        self.emit(call, start, timings, outcome)
        return guarded, outcome

    async def _limits(self, feature: Feature, call: Call, start: float,
                      timings: dict[str, float]) -> None:
        """Budgets and throttles: refuse (recorded, then raised as a 429) before any
        model is called. Eval calls (pinned) are not tenant traffic and pass."""
        if self.budgets is None or call.pin is not None:
            return
        t = time.perf_counter()
        try:
            await self.budgets.admit(feature, call)
        except (BudgetExceeded, Throttled) as exc:
            timings["limits"] = _ms(t)
            outcome = _failed(call, feature.name, exc, timings)
            outcome.decision, outcome.reason = Decision.REFUSED, exc.message
            self.emit(call, start, timings, outcome)
            raise
        timings["limits"] = _ms(t)

    async def run(self, call: Call) -> Outcome:
        """Serve one call. Bad input raises a RequestError (and is recorded); every other
        ending, a failed upstream included, is an Outcome with its decision."""
        feature = self.feature(call.feature)
        clock = time.perf_counter
        start = clock()
        timings: dict[str, float] = {}

        guarded, refusal = await self.admit(feature, call, start, timings)
        if refusal is not None:
            return refusal
        t = clock()

        route = feature.router.route(call)

        call.routed = route.versions[0]
        # routing policy (keel.stages.route_policy): reorders the route's targets
        plan = plan_route(feature, call, route, self.rng)
        route = plan.route
        t2 = clock()
        timings["route"] = _ms(t, t2)

        # cache (keel.stages.cache): a hit answers here; the decided answer is saved below
        lookup = None if self.cache is None else await self.cache.lookup(feature, call, guarded, timings)
        if lookup is not None and lookup.hit is not None:
            self.emit(call, start, timings, lookup.hit)
            return lookup.hit

        attempts: list[Attempt] = []
        validations: list[ValidationResult] = []
        usage = Usage()
        cost: float | None = 0.0
        invoke_ms = validate_ms = 0.0
        last_error: ProviderError | None = None
        answer = None
        rejected = None  # an answer a validator sent on to a target that then failed
        for index, version in enumerate(route.versions):
            target = feature.targets[version]
            t_inv = clock()
            try:
                completion = await invoke_target(
                    target.provider, feature.request(version, call.input, call.options),
                    feature.spec.retry, attempts, self.rng, target.breaker,
                )
            except ProviderError as exc:
                invoke_ms += _ms(t_inv)
                last_error = exc
                continue
            t_val = clock()
            invoke_ms += _ms(t_inv, t_val)
            usage.add(completion.usage)
            attempt_cost = self.pricing.cost_usd(
                target.provider_type, feature.spec.versions[version], completion.usage)
            cost = None if cost is None or attempt_cost is None else cost + attempt_cost
            validations, output = await run_validators(feature.validators, completion.output,
                                                       call.input)
            validate_ms += _ms(t_val)
            reask = next((v for v in validations if not v.passed and v.on_fail is OnFail.REASK), None)
            if reask is not None and target.provider_type not in _CANNOT_REASK:
                # one more call carrying the validation error; its time and cost count
                t_re = clock()
                attempts[-1].rejected_by = f"validator:{reask.validator} (reasked)"
                retry = feature.request(version, call.input, call.options)
                retry.followup = [
                    {"role": "assistant", "content": completion.text or orjson.dumps(output).decode()},
                    {"role": "user", "content": f"That answer failed a check ({reask.validator}: "
                                                f"{reask.message}). Answer again, fixing it."}]
                try:
                    completion = await invoke_target(target.provider, retry, _NO_RETRY, attempts,
                                                     self.rng, target.breaker)
                except ProviderError:
                    pass  # keep the first answer; its failed validation decides
                else:
                    usage.add(completion.usage)
                    again = self.pricing.cost_usd(
                        target.provider_type, feature.spec.versions[version], completion.usage)
                    cost = None if cost is None or again is None else cost + again
                    validations, output = await run_validators(
                        feature.validators, completion.output, call.input)
                invoke_ms += _ms(t_re)
            more_targets = index + 1 < len(route.versions)
            sent_on = next(
                (v for v in validations if not v.passed and v.on_fail is OnFail.FALLBACK), None
            )
            if sent_on is not None and more_targets:
                attempts[-1].rejected_by = f"validator:{sent_on.validator}"
                rejected = (index, version, completion, output, validations)
                continue
            escalate = plan.escalate(index, completion.confidence, validations)  # cascade
            if escalate is not None and more_targets:
                attempts[-1].rejected_by = escalate
                rejected = (index, version, completion, output, validations)
                continue
            answer = (index, version, completion, output)
            break

        timings["invoke"] = round(invoke_ms, 3)
        timings["validate"] = round(validate_ms, 3)
        t_dec = clock()
        if answer is None and rejected is not None:
            *head, validations = rejected
            answer = (head[0], head[1], head[2], head[3])
        if answer is None:
            limited = isinstance(last_error, ProviderRateLimited)
            outcome = Outcome(
                trace_id=call.trace_id, feature=feature.name, version=None, output=None,
                decision=Decision.ERROR, confidence=None, timings_ms=timings, cost_usd=cost,
                usage=usage, attempts=attempts, validations=validations,
                error_code=UpstreamRateLimited.code if limited else AllTargetsFailed.code,
                error=_all_failed_message(route.versions, last_error, validations),
                retry_after=last_error.retry_after if isinstance(last_error, ProviderRateLimited) else None,
            )
        else:
            index, version, completion, output = answer
            verdict = decide(
                output, completion.confidence, validations, feature.spec.policy,
                feature.spec.safe_default, from_fallback=index >= plan.planned,
            )
            outcome = Outcome(
                trace_id=call.trace_id, feature=feature.name, version=version,
                output=verdict.output, decision=verdict.decision,
                confidence=completion.confidence, timings_ms=timings, cost_usd=cost,
                usage=usage, attempts=attempts, validations=validations,
                reviewed=False, reason=verdict.reason,
                finish_reason="content_filter" if verdict.decision is Decision.REFUSED
                else completion.finish_reason,
            )
        settle(plan, feature, self.pricing, outcome, answer)  # routing policy: label, saved
        timings["decide"] = _ms(t_dec)
        if guarded is not None:
            outcome.checks = guarded.results
            if guarded.review and outcome.decision in USABLE:
                outcome.decision, outcome.reason = Decision.REVIEW, guarded.review
        # one coin per call, whatever the decision: audited items are an unbiased sample
        audit = bool(feature.spec.review.audit_rate) and self.rng.random() < feature.spec.review.audit_rate
        if call.pin is not None:
            pass  # an eval call: people review live traffic, not evaluation runs
        elif outcome.decision is Decision.REVIEW:
            await self._review(feature, call, outcome, timings, audit)
        elif audit and outcome.decision in USABLE:
            self.queue_review(feature, call, outcome, "deferred", reason="audit sample", audit=True)
        if lookup is not None:
            await lookup.save(outcome)  # cache: only accepted / repaired answers are kept
        self.emit(call, start, timings, outcome)
        return outcome

    def queue_review(self, feature: Feature, call: Call, outcome: Outcome, mode: str,
                     reason: str | None = None, audit: bool = False) -> None:
        spec = feature.spec.review
        self._record(ReviewRequest(
            trace_id=call.trace_id, ts=time.time(), feature=feature.name,
            version=outcome.version, mode=mode, confidence=outcome.confidence,
            reason=reason or outcome.reason, input=call.input, output=outcome.output,
            validations=outcome.validations, overlap=spec.overlap, audit=audit))

    async def _review(self, feature: Feature, call: Call, outcome: Outcome,
                      timings: dict[str, float], audit: bool = False) -> None:
        """Queue the output for people; for held review, wait for their verdict."""
        spec = feature.spec.review
        self.queue_review(feature, call, outcome, spec.mode, audit=audit)
        if spec.mode == "deferred":
            outcome.review = "pending"
            return
        t = time.perf_counter()
        final = await self.hub.wait(call.trace_id, spec.hold_timeout_s)
        timings["hold"] = _ms(t)
        if final is None:
            outcome.review, outcome.output = "timed_out", feature.spec.safe_default
            return
        outcome.reviewed = True
        if final.verdict == "reject":
            outcome.review, outcome.output = "rejected", feature.spec.safe_default
        else:
            outcome.review = "approved" if final.verdict == "approve" else "edited"
            outcome.output = final.output

    def emit(self, call: Call, start: float, timings: dict[str, float], outcome: Outcome) -> None:
        t = time.perf_counter()
        if call.pin is not None:  # eval traffic is stored by its eval run, not as live events
            timings["total"] = _ms(start, t)
            return
        latency = _ms(start, t)
        feature = self.features.get(outcome.feature)
        # vectors are large and say nothing a person reads: keep them out of events
        keep_output = self._store_payloads and (
            feature is None or feature.spec.output.kind != "embedding")
        timings["total"] = latency
        self._record(
            Event(
                trace_id=outcome.trace_id, ts=time.time(), feature=outcome.feature,
                version=outcome.version, decision=outcome.decision,
                confidence=outcome.confidence, latency_ms=latency, timings_ms=timings,
                input_tokens=outcome.usage.input_tokens,
                output_tokens=outcome.usage.output_tokens, cost_usd=outcome.cost_usd,
                attempts=outcome.attempts, validations=outcome.validations,
                input=call.input if self._store_payloads else None,
                output=outcome.output if keep_output else None,
                user=call.user, key=call.key, reason=outcome.reason,
                error_code=outcome.error_code, checks=outcome.checks, routed=call.routed,
                policy=outcome.policy, saved_usd=outcome.saved_usd,
                cache=source(outcome.cache),
            )
        )


# classifiers answer the same input the same way: asking again cannot help
_CANNOT_REASK = frozenset({"local"})
_NO_RETRY = RetrySpec(max_retries=0)


def _failed(call: Call, feature: str, exc: KeelError, timings: dict[str, float]) -> Outcome:
    return Outcome(
        trace_id=call.trace_id, feature=feature, version=None, output=None,
        decision=Decision.ERROR, confidence=None, timings_ms=timings, cost_usd=0.0,
        usage=Usage(), attempts=[], validations=[], error_code=exc.code, error=exc.message,
    )


def _all_failed_message(versions: tuple[str, ...], last: ProviderError | None,
                        validations: list[ValidationResult]) -> str:
    if last is None:
        failed = next((v for v in validations if not v.passed), None)
        why = f"{failed.validator}: {failed.message}" if failed else "no answer"
    else:
        why = last.message
    return f"every target failed ({', '.join(versions)}); last error: {why}"


def _ms(start: float, end: float | None = None) -> float:
    return round(((end if end is not None else time.perf_counter()) - start) * 1000, 3)
