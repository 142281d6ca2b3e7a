"""Circuit breakers: one per target (provider + model), shared by every feature using it.

closed --(failure_threshold consecutive failures)--> open
open --(reset_after_s elapsed; one probe allowed)--> half_open
half_open --probe succeeds--> closed;  --probe fails--> open again

While a circuit is open the invoke stage skips the target at once (the attempt is
recorded with the code ``circuit_open``) and the call goes on to its next target, so a
dead upstream costs its callers nothing after the first few failures.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class CircuitState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class CircuitSettings:
    failure_threshold: int = 5
    reset_after_s: float = 30.0


class CircuitBreaker:
    def __init__(self, settings: CircuitSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self.state = CircuitState.CLOSED
        self.consecutive_failures = 0
        self.opened_at: float | None = None
        self._probe_in_flight = False
        self.total_failures = 0
        self.total_successes = 0

    def allow(self) -> bool:
        """May an attempt go to this target now? Moves open -> half_open when it is time."""
        if self.state is CircuitState.CLOSED:
            return True
        if self.state is CircuitState.OPEN:
            assert self.opened_at is not None
            if self._clock() - self.opened_at < self.settings.reset_after_s:
                return False
            self.state = CircuitState.HALF_OPEN
            self._probe_in_flight = False
        if self._probe_in_flight:
            return False
        self._probe_in_flight = True
        return True

    def record_success(self) -> None:
        self.total_successes += 1
        self.consecutive_failures = 0
        self.state = CircuitState.CLOSED
        self.opened_at = None
        self._probe_in_flight = False

    def record_failure(self) -> None:
        self.total_failures += 1
        self.consecutive_failures += 1
        if self.state is CircuitState.HALF_OPEN or (
            self.state is CircuitState.CLOSED
            and self.consecutive_failures >= self.settings.failure_threshold
        ):
            self.state = CircuitState.OPEN
            self.opened_at = self._clock()
        self._probe_in_flight = False

    def retry_in_s(self) -> float | None:
        if self.state is not CircuitState.OPEN or self.opened_at is None:
            return None
        return max(0.0, self.settings.reset_after_s - (self._clock() - self.opened_at))

    def snapshot(self) -> dict[str, Any]:
        return {
            "state": str(self.state),
            "consecutive_failures": self.consecutive_failures,
            "failures": self.total_failures,
            "successes": self.total_successes,
            "retry_in_s": self.retry_in_s(),
            "failure_threshold": self.settings.failure_threshold,
            "reset_after_s": self.settings.reset_after_s,
        }


class Circuits:
    """The breakers of one process, keyed by (provider name, model)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._breakers: dict[tuple[str, str], CircuitBreaker] = {}

    def get(self, provider: str, model: str, settings: CircuitSettings) -> CircuitBreaker:
        key = (provider, model)
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = self._breakers[key] = CircuitBreaker(settings, self._clock)
        return breaker

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {"provider": provider, "model": model, **breaker.snapshot()}
            for (provider, model), breaker in sorted(self._breakers.items())
        ]
