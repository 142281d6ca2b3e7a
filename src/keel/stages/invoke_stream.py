"""Opening a stream on one target: retries and fallback happen only before the first
delta, while the caller has seen nothing. Once a delta has been handed on, the call
is committed to that target; a later failure ends the caller's stream with an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator

from keel.errors import (
    CircuitOpen,
    ProviderBadResponse,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
)
from keel.providers.base import Provider, ProviderRequest
from keel.spec import RetrySpec
from keel.stages.circuit import CircuitBreaker
from keel.stages.invoke import backoff_delay
from keel.types import Attempt, Delta


async def open_stream(
    provider: Provider,
    request: ProviderRequest,
    retry: RetrySpec,
    attempts: list[Attempt],
    rng: random.Random,
    breaker: CircuitBreaker | None = None,
) -> tuple[Delta, AsyncIterator[Delta], float]:
    """The first delta, the rest of the stream, and when the attempt started.

    The first delta must arrive within ``first_byte_timeout_s`` (else ``timeout_s``).
    Raises the last ProviderError when every try failed before its first delta."""
    for n in range(retry.max_retries + 1):
        if breaker is not None and not breaker.allow():
            error: ProviderError = CircuitOpen(f"{provider.name}: circuit open")
            attempts.append(Attempt(request.version, provider.name, False, 0.0, retry=n,
                                    error_code=error.code, error=error.message))
            raise error
        start = time.perf_counter()
        stream = provider.stream(request).__aiter__()
        first_wait = request.first_byte_timeout_s or request.timeout_s
        try:
            async with asyncio.timeout(first_wait):
                first = await anext(stream)
        except TimeoutError:
            error = ProviderTimeout(f"{provider.name}: no first token within {first_wait:g} s")
        except StopAsyncIteration:
            error = ProviderBadResponse(f"{provider.name}: the stream ended before any content")
        except ProviderError as exc:
            error = exc
        else:
            return first, stream, start
        await aclose_quietly(stream)
        attempts.append(Attempt(request.version, provider.name, False, _ms(start), retry=n,
                                error_code=error.code, error=error.message))
        if breaker is not None and not isinstance(error, ProviderRejected):
            breaker.record_failure()
        retry_after = error.retry_after if isinstance(error, ProviderRateLimited) else None
        if not error.retryable or n == retry.max_retries:
            raise error
        if retry_after is not None and retry_after > retry.max_backoff_s:
            raise error
        await asyncio.sleep(backoff_delay(n, retry, retry_after, rng))
    raise AssertionError("unreachable")


async def aclose_quietly(stream: AsyncIterator[Delta]) -> None:
    """Close a provider's stream; a broken one may fail to close, and is gone either way."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)
