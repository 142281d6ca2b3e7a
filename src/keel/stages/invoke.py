"""Calling one target: a timeout per attempt, retries with backoff for retryable errors.

Every attempt, good or bad, is appended to the call's attempt list. Moving on to the
next target of the route is the pipeline's job; this module handles one target.
"""

from __future__ import annotations

import asyncio
import random
import time

from keel.errors import ProviderError, ProviderRateLimited, ProviderTimeout
from keel.providers.base import Provider, ProviderRequest
from keel.spec import RetrySpec
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
) -> Completion:
    """One target with its retries. Raises the last ProviderError when all fail."""
    for n in range(retry.max_retries + 1):
        start = time.perf_counter()
        try:
            async with asyncio.timeout(request.timeout_s):
                completion = await provider.complete(request)
        except TimeoutError:
            error: ProviderError = ProviderTimeout(
                f"{provider.name}: no answer within {request.timeout_s:g} s"
            )
        except ProviderError as exc:
            error = exc
        else:
            attempts.append(Attempt(request.version, provider.name, True, _ms(start), retry=n))
            return completion
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


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)
