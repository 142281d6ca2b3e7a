from __future__ import annotations

from keel.stages.circuit import CircuitBreaker, Circuits, CircuitSettings, CircuitState


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_and_probes_after_the_cooldown() -> None:
    clock = Clock()
    breaker = CircuitBreaker(CircuitSettings(failure_threshold=3, reset_after_s=10), clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state is CircuitState.CLOSED
    breaker.record_failure()
    assert breaker.state is CircuitState.OPEN and not breaker.allow()
    assert breaker.retry_in_s() == 10
    clock.now += 10
    assert breaker.allow()            # the one probe
    assert breaker.state is CircuitState.HALF_OPEN
    assert not breaker.allow()        # nobody else while it is in flight
    breaker.record_success()
    assert breaker.state is CircuitState.CLOSED and breaker.allow()


def test_a_failed_probe_opens_it_again() -> None:
    clock = Clock()
    breaker = CircuitBreaker(CircuitSettings(failure_threshold=1, reset_after_s=5), clock)
    breaker.record_failure()
    clock.now += 5
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is CircuitState.OPEN and not breaker.allow()
    clock.now += 4.9
    assert not breaker.allow()


def test_a_success_resets_the_count() -> None:
    breaker = CircuitBreaker(CircuitSettings(failure_threshold=2))
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state is CircuitState.CLOSED


def test_breakers_are_shared_per_provider_and_model() -> None:
    circuits = Circuits()
    a = circuits.get("openai", "gpt", CircuitSettings())
    assert circuits.get("openai", "gpt", CircuitSettings()) is a
    assert circuits.get("openai", "other", CircuitSettings()) is not a
    a.record_failure()
    assert circuits.snapshot()[0]["consecutive_failures"] == 1
