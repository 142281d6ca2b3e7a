"""Budgets and throttles as a unit: periods, atomic admission under concurrency,
settlement with actual costs, token buckets, alerts at thresholds."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from keel.errors import BudgetExceeded, Throttled
from keel.spec import BudgetSpec, ThrottleSpec
from keel.stages.budget import Limits, period_bounds
from keel.types import Call, Decision, Event

NOW = dt.datetime(2026, 11, 22, 15, 30, tzinfo=dt.UTC).timestamp()


class Clock:
    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def event(trace_id: str, cost: float, *, user: str = "u1", key: str | None = "k1",
          ts: float = NOW, tokens: tuple[int, int] = (10, 5)) -> Event:
    return Event(trace_id=trace_id, ts=ts, feature="f", version="v1", decision=Decision.ACCEPTED,
                 confidence=0.9, latency_ms=5.0, timings_ms={}, input_tokens=tokens[0],
                 output_tokens=tokens[1], cost_usd=cost, attempts=[], validations=[],
                 input=None, output=None, user=user, key=key)


def limits(budgets: list[BudgetSpec], throttles: list[ThrottleSpec] | None = None,
           spent: float = 0.0, clock: Clock | None = None,
           alerts: list[tuple[str, str, float]] | None = None) -> Limits:
    out = Limits(budgets, throttles or [], spend=lambda b, v, s, e: spent, clock=clock or Clock(),
                 on_alert=(lambda b, v, bal, t: alerts.append((b.name, v, t)))
                 if alerts is not None else None)
    return out


def admit(lim: Limits, trace_id: str, cost: float, tokens: int = 10, user: str = "u1") -> None:
    call = Call("f", {"text": "x"}, trace_id, user=user, key="k1")
    for budget, value in lim.needs_loading(call):
        lim.load(budget, value)
    lim.admit(call, cost, tokens)


def test_period_bounds_are_utc_days_and_months() -> None:
    start, end = period_bounds("day", NOW)
    assert dt.datetime.fromtimestamp(start, dt.UTC) == dt.datetime(2026, 11, 22, tzinfo=dt.UTC)
    assert end - start == 86400
    start, end = period_bounds("month", NOW)
    assert dt.datetime.fromtimestamp(start, dt.UTC) == dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    assert dt.datetime.fromtimestamp(end, dt.UTC) == dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    feb = dt.datetime(2028, 2, 10, tzinfo=dt.UTC).timestamp()
    assert period_bounds("month", feb)[1] - period_bounds("month", feb)[0] == 29 * 86400


def test_a_spent_budget_refuses_until_the_next_period() -> None:
    clock = Clock()
    lim = limits([BudgetSpec(name="daily", scope="user", period="day", limit_usd=1.0)],
                 spent=0.999, clock=clock)
    admit(lim, "t1", 0.01)  # not yet spent: admitted, reserves its estimate
    with pytest.raises(BudgetExceeded) as refused:
        admit(lim, "t2", 0.01)
    assert refused.value.code == "budget_exceeded" and refused.value.status == 429
    assert "budget 'daily' for user 'u1'" in refused.value.message
    midnight = period_bounds("day", NOW)[1]
    assert refused.value.retry_after == pytest.approx(midnight - NOW)
    admit(lim, "t3", 0.01, user="u2")  # each user has their own
    clock.t = midnight + 1  # a new day: the ledger says nothing spent yet
    lim._spend = lambda b, v, s, e: 0.0
    admit(lim, "t4", 0.01)


def test_a_budget_with_match_only_binds_that_value() -> None:
    lim = limits([BudgetSpec(name="vip", scope="user", match="u1", limit_usd=1.0)], spent=5.0)
    with pytest.raises(BudgetExceeded):
        admit(lim, "t1", 0.01)
    admit(lim, "t2", 0.01, user="someone-else")


async def test_concurrent_calls_overspend_by_at_most_one_estimate() -> None:
    """100 calls at once against $0.025 left, each estimated (and costing) $0.01: three get
    in (0.0, 0.01, 0.02 committed before each), the rest are refused."""
    lim = limits([BudgetSpec(name="all", scope="all", limit_usd=1.0)], spent=0.975)
    admitted, refused = [], []

    async def one(i: int) -> None:
        await asyncio.sleep(0)
        try:
            admit(lim, f"t{i}", 0.01)
        except BudgetExceeded:
            refused.append(i)
            return
        admitted.append(i)
        await asyncio.sleep(0.01)  # the model runs; the others arrive meanwhile
        lim.observe(event(f"t{i}", 0.01))

    await asyncio.gather(*(one(i) for i in range(100)))
    assert len(admitted) == 3 and len(refused) == 97
    balance = lim.balances[("all", "*")]
    assert balance.reserved == pytest.approx(0.0)
    assert balance.spent == pytest.approx(1.005)  # over by less than one call's estimate
    assert balance.spent - 1.0 < 0.01


def test_settlement_swaps_the_estimate_for_the_actual_cost() -> None:
    lim = limits([BudgetSpec(name="d", scope="key", limit_usd=1.0)])
    admit(lim, "t1", 0.30)
    balance = lim.balances[("d", "k1")]
    assert balance.reserved == pytest.approx(0.30)
    lim.observe(event("t1", 0.05))
    assert (balance.reserved, balance.spent) == (pytest.approx(0.0), pytest.approx(0.05))
    lim.observe(event("never-admitted-here", 0.10))  # another process's call of this key
    assert balance.spent == pytest.approx(0.15)
    lim.release("t-unknown")  # nothing reserved: nothing happens


def test_alerts_fire_once_per_threshold_per_period() -> None:
    alerts: list[tuple[str, str, float]] = []
    lim = limits([BudgetSpec(name="d", scope="user", limit_usd=1.0)], alerts=alerts)
    admit(lim, "t0", 0.0)
    for i, cost in enumerate((0.3, 0.3, 0.3, 0.3)):
        lim.observe(event(f"c{i}", cost))
    assert alerts == [("d", "u1", 0.5), ("d", "u1", 0.8), ("d", "u1", 1.0)]
    lim.observe(event("more", 0.3))
    assert len(alerts) == 3


def test_a_restart_does_not_repeat_alerts_the_ledger_shows_crossed() -> None:
    alerts: list[tuple[str, str, float]] = []
    lim = limits([BudgetSpec(name="d", scope="user", limit_usd=1.0)], spent=0.6, alerts=alerts)
    admit(lim, "t0", 0.0)
    lim.observe(event("c", 0.25))
    assert alerts == [("d", "u1", 0.8)]


def test_request_throttle_refills_over_the_minute() -> None:
    clock = Clock()
    lim = limits([], [ThrottleSpec(name="rpm", scope="user", requests_per_minute=3)], clock=clock)
    for i in range(3):
        admit(lim, f"t{i}", 0.0)
    with pytest.raises(Throttled) as refused:
        admit(lim, "t3", 0.0)
    assert refused.value.code == "rate_limited" and refused.value.retry_after == pytest.approx(20.0)
    admit(lim, "other-user", 0.0, user="u2")
    clock.t += 20
    admit(lim, "t4", 0.0)


def test_token_throttle_charges_actual_tokens_and_refuses_without_leaking() -> None:
    clock = Clock()
    lim = limits([], [ThrottleSpec(name="t", scope="key", requests_per_minute=100,
                                   tokens_per_minute=1000)], clock=clock)
    admit(lim, "t1", 0.0, tokens=100)
    lim.observe(event("t1", 0.0, tokens=(500, 400)))  # it really used 900
    tokens = lim.buckets[("t", "k1", "tokens")]
    requests = lim.buckets[("t", "k1", "requests")]
    assert tokens.level == pytest.approx(100)
    with pytest.raises(Throttled, match="tokens per minute"):
        admit(lim, "t2", 0.0, tokens=200)
    assert requests.level == pytest.approx(99)  # the refused call's request was given back

