from __future__ import annotations

import random

import pytest

from keel.errors import (
    ProviderBadResponse,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
)
from keel.providers.base import ProviderRequest
from keel.spec import ProviderSpec, RetrySpec
from keel.stages.invoke import backoff_delay, invoke_target
from keel.types import Attempt, Completion
from tests.conftest import ScriptedProvider

RETRY = RetrySpec(max_retries=2, backoff_s=0.001, max_backoff_s=0.01)


def request(timeout: float = 0.2) -> ProviderRequest:
    return ProviderRequest("f", "v1", "m", {"text": "x"}, "label", timeout)


def provider(*script: object) -> ScriptedProvider:
    p = ScriptedProvider("p", ProviderSpec(type="scripted"))
    p.script = list(script)  # type: ignore[arg-type]
    return p


async def test_retryable_errors_are_retried_and_every_attempt_recorded() -> None:
    p = provider(ProviderUnavailable("p: 500"), ProviderTimeout("p: slow"))
    attempts: list[Attempt] = []
    completion = await invoke_target(p, request(), RETRY, attempts, random.Random(0))
    assert isinstance(completion, Completion)
    assert [(a.ok, a.retry, a.error_code) for a in attempts] == [
        (False, 0, "provider_unavailable"), (False, 1, "provider_timeout"), (True, 2, None)]


@pytest.mark.parametrize("error", [ProviderRejected("p: 400"), ProviderBadResponse("p: bad json")])
async def test_non_retryable_errors_are_not_retried(error: Exception) -> None:
    p = provider(error)
    attempts: list[Attempt] = []
    with pytest.raises(type(error)):
        await invoke_target(p, request(), RETRY, attempts, random.Random(0))
    assert len(attempts) == 1 and len(p.requests) == 1


async def test_a_hanging_target_times_out() -> None:
    p = provider(5.0, 5.0, 5.0)
    attempts: list[Attempt] = []
    with pytest.raises(ProviderTimeout, match=r"no answer within 0\.05 s"):
        await invoke_target(p, request(timeout=0.05), RETRY, attempts, random.Random(0))
    assert [a.error_code for a in attempts] == ["provider_timeout"] * 3


async def test_a_long_retry_after_skips_to_the_next_target() -> None:
    p = provider(ProviderRateLimited("p: 429", retry_after=30))
    attempts: list[Attempt] = []
    with pytest.raises(ProviderRateLimited):
        await invoke_target(p, request(), RETRY, attempts, random.Random(0))
    assert len(attempts) == 1


def test_backoff_grows_and_honours_retry_after() -> None:
    spec = RetrySpec(max_retries=5, backoff_s=0.1, max_backoff_s=1.0)
    rng = random.Random(1)
    for retry in range(5):
        assert 0 <= backoff_delay(retry, spec, None, rng) <= min(1.0, 0.1 * 2**retry)
    assert backoff_delay(0, spec, 0.7, rng) >= 0.7
