"""Calling one target: a timeout per attempt, retries with backoff for retryable errors.

Every attempt, good or bad, is appended to the call's attempt list. Moving on to the
next target of the route is the pipeline's job; this module handles one target.
"""

from __future__ import annotations

import asyncio
import random
import time

from keel.errors import (
    CircuitOpen,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
)
from keel.providers.base import Provider, ProviderRequest
from keel.spec import RetrySpec
from keel.stages.circuit import CircuitBreaker
from keel.types import Attempt, Completion


def backoff_delay(retry: int, spec: RetrySpec, retry_after: float | None, rng: random.Random) -> float:
    """Full-jitter exponential backoff; a server's Retry-After wins when it says more."""
    ceiling = min(spec.max_backoff_s, spec.backoff_s * (2**retry))
    delay = rng.uniform(0, ceiling)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


async def invoke_target(
    provider: Provider,
    request: ProviderRequest,
    retry: RetrySpec,
    attempts: list[Attempt],
    rng: random.Random,
    breaker: CircuitBreaker | None = None,
) -> Completion:
    """One target with its retries. Raises the last ProviderError when all fail.

    An open circuit skips the target at once; failures other than the caller's own
    (a 4xx rejection) count against the circuit."""
    for n in range(retry.max_retries + 1):
        if breaker is not None and not breaker.allow():
            retry_in = breaker.retry_in_s()
            error: ProviderError = CircuitOpen(
                f"{provider.name}: circuit open after {breaker.consecutive_failures} "
                f"consecutive failures" + (f"; next probe in {retry_in:.1f} s" if retry_in else ""))
            attempts.append(Attempt(request.version, provider.name, False, 0.0, retry=n,
                                    error_code=error.code, error=error.message))
            raise error
        start = time.perf_counter()
        try:
            async with asyncio.timeout(request.timeout_s):
                completion = await attempt(provider, request)
        except TimeoutError:
            error = ProviderTimeout(
                f"{provider.name}: no answer within {request.timeout_s:g} s"
            )
        except ProviderError as exc:
            error = exc
        else:
            if breaker is not None:
                breaker.record_success()
            attempts.append(Attempt(request.version, provider.name, True, _ms(start), retry=n))
            return completion
        if breaker is not None and not isinstance(error, ProviderRejected):
            breaker.record_failure()
        attempts.append(
            Attempt(request.version, provider.name, False, _ms(start), retry=n,
                    error_code=error.code, error=error.message)
        )
        retry_after = error.retry_after if isinstance(error, ProviderRateLimited) else None
        if not error.retryable or n == retry.max_retries:
            raise error
        if retry_after is not None and retry_after > retry.max_backoff_s:
            raise error  # waiting that long is worse than the next target
        await asyncio.sleep(backoff_delay(n, retry, retry_after, rng))
    raise AssertionError("unreachable")


async def attempt(provider: Provider, request: ProviderRequest) -> Completion:
    """One call to the provider; embedding features go through ``embed``."""
    if request.output_kind == "embedding":
        texts = request.input.get("input")
        embeddings = await provider.embed(request, texts if isinstance(texts, list) else [])
        return Completion(output=embeddings.vectors, usage=embeddings.usage, model=embeddings.model,
                          finish_reason="stop")
    return await provider.complete(request)


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)
