"""Budgets and throttles in Redis (the scaled-out mode), against the real Redis server:
exact across "processes" (separate RedisLimits on separate connections), seeded from
the ledger, reservations of dead processes expire, alerts once, Redis down."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
import redis

from keel.errors import BudgetExceeded, LimitsUnavailable, Throttled
from keel.spec import BudgetSpec, ThrottleSpec
from keel.stages.budget_redis import RedisLimits
from keel.types import Call
from tests.backends import REDIS_URL
from tests.stages.test_budget import Clock, event

DAILY = BudgetSpec(name="daily", scope="all", limit_usd=0.025)


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"keel-test:{uuid.uuid4().hex[:8]}:"
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=name + "*"):
        client.delete(key)
    client.close()


def process(prefix: str, budgets: list[BudgetSpec], throttles: list[ThrottleSpec] | None = None, *,
            spent: float = 0.0, clock: Clock | None = None, url: str = REDIS_URL,
            alerts: list[tuple[str, str, float]] | None = None,
            fail_open: bool = False) -> RedisLimits:
    """One Keel process's limits: its own Redis connection, the shared keys."""
    return RedisLimits(budgets, throttles or [], spend=lambda b, v, s, e: spent,
                       client=redis.Redis.from_url(url, socket_connect_timeout=0.5),
                       prefix=prefix, clock=clock or Clock(), fail_open=fail_open,
                       on_alert=(lambda b, v, bal, t: alerts.append((b.name, v, t)))
                       if alerts is not None else None)


def admit(lim: RedisLimits, trace_id: str, cost: float, tokens: int = 10, user: str = "u1") -> None:
    call = Call("f", {"text": "x"}, trace_id, user=user, key="k1")
    for budget, value in lim.needs_loading(call):
        lim.load(budget, value)
    lim.admit(call, cost, tokens)


def test_concurrent_calls_across_processes_overspend_by_at_most_one_estimate(prefix: str) -> None:
    procs = [process(prefix, [DAILY]) for _ in range(4)]
    admitted: list[str] = []
    refused: list[str] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        for j in range(25):
            trace = f"t{i}-{j}"
            try:
                admit(procs[i], trace, 0.01)
            except BudgetExceeded:
                with lock:
                    refused.append(trace)
            else:
                with lock:
                    admitted.append(trace)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # admitted while spent + reserved < 0.025: 0, 0.01, 0.02 -> three calls, 0.005 over
    assert len(admitted) == 3 and len(refused) == 97


def test_actual_costs_settle_and_refusals_name_the_budget(prefix: str) -> None:
    a, b = process(prefix, [DAILY]), process(prefix, [DAILY])
    admit(a, "t1", 0.01)
    admit(b, "t2", 0.01)
    a.observe(event("t1", 0.002))  # cheaper than estimated: frees room
    b.observe(event("t2", 0.003))
    admit(a, "t3", 0.01)
    admit(b, "t4", 0.01)
    with pytest.raises(BudgetExceeded) as refused:
        admit(a, "t5", 0.01)
    assert "budget 'daily' is spent" in str(refused.value) and refused.value.retry_after >= 1
    a.observe(event("t3", 0.01))
    b.observe(event("t4", 0.01))
    spent = float(redis.Redis.from_url(REDIS_URL).hget(a._key(DAILY, "*", a.balances[("daily", "*")].period_start), "spent") or 0)
    assert spent == pytest.approx(0.025)


def test_the_ledger_seeds_the_period_once(prefix: str) -> None:
    first = process(prefix, [DAILY], spent=0.02)
    admit(first, "t1", 0.001)
    # a second process whose ledger read is stale does not overwrite the shared balance
    second = process(prefix, [DAILY], spent=0.0)
    first.observe(event("t1", 0.006))  # 0.026 spent: over the limit
    with pytest.raises(BudgetExceeded):
        admit(second, "t2", 0.001)


def test_a_dead_processes_reservations_expire(prefix: str) -> None:
    clock = Clock()
    dead = process(prefix, [DAILY], clock=clock)
    admit(dead, "t1", 0.024)  # the process dies before its event: never settled
    alive = process(prefix, [DAILY], clock=clock)
    admit(alive, "t2", 0.001)
    with pytest.raises(BudgetExceeded):
        admit(alive, "t3", 0.001)
    clock.t += alive.reservation_ttl_s + 1
    admit(alive, "t4", 0.001)  # the dead reservation has expired


def test_throttles_are_shared(prefix: str) -> None:
    clock = Clock()
    rpm = ThrottleSpec(name="rpm", scope="user", requests_per_minute=5)
    a, b = process(prefix, [], [rpm], clock=clock), process(prefix, [], [rpm], clock=clock)
    for i in range(5):
        admit(a if i % 2 else b, f"t{i}", 0.0)
    with pytest.raises(Throttled) as throttled:
        admit(a, "t5", 0.0)
    assert 0 < throttled.value.retry_after <= 12 and "5 requests per minute" in str(throttled.value)
    admit(b, "t6", 0.0, user="u2")  # another user has their own bucket
    clock.t += 12.5  # one request's worth refilled
    admit(b, "t7", 0.0)


def test_a_refused_throttle_takes_nothing(prefix: str) -> None:
    both = ThrottleSpec(name="both", scope="user", requests_per_minute=100, tokens_per_minute=50)
    lim = process(prefix, [], [both])
    admit(lim, "t1", 0.0, tokens=40)
    with pytest.raises(Throttled):
        admit(lim, "t2", 0.0, tokens=40)  # tokens refused: the request token is given back
    for i in range(98):
        admit(lim, f"r{i}", 0.0, tokens=0)


def test_alerts_are_announced_once_across_processes(prefix: str) -> None:
    alerts: list[tuple[str, str, float]] = []
    budget = BudgetSpec(name="b", scope="all", limit_usd=1.0)
    a = process(prefix, [budget], alerts=alerts)
    b = process(prefix, [budget], alerts=alerts)
    admit(a, "t1", 0.1)
    admit(b, "t2", 0.1)
    a.observe(event("t1", 0.3))
    b.observe(event("t2", 0.3))  # crosses 0.5: b announces it
    a.observe(event("t3", 0.0))
    assert alerts == [("b", "*", 0.5)]


def test_redis_down_fails_closed_or_open_by_setting(prefix: str) -> None:
    down = "redis://127.0.0.1:1/0"  # nothing listens there
    closed = process(prefix, [DAILY], url=down)
    closed._seeded[("daily", "*")] = closed.clock() // 86400 * 86400  # skip the ledger seed
    with pytest.raises(LimitsUnavailable) as refused:
        closed.admit(Call("f", {"text": "x"}, "t1"), 0.01, 10)
    assert refused.value.status == 503 and "KEEL_LIMITS_FAIL=open" in str(refused.value)
    opened = process(prefix, [DAILY], url=down, fail_open=True)
    assert opened.admit(Call("f", {"text": "x"}, "t2"), 0.01, 10) is None
    opened.observe(event("t2", 0.01))  # settling does not raise either




def test_reconcile_restores_what_a_flushed_redis_forgot(prefix: str) -> None:
    ledger = {"spent": 0.0}
    lim = RedisLimits([DAILY], [], spend=lambda b, v, s, e: ledger["spent"],
                      client=redis.Redis.from_url(REDIS_URL), prefix=prefix, clock=Clock())
    admit(lim, "t1", 0.01)
    lim.observe(event("t1", 0.02))
    ledger["spent"] = 0.02  # the event reached the ledger
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=prefix + "*"):  # Redis restarted without its data
        client.delete(key)
    lim.reconcile()
    admit(lim, "t2", 0.01)  # 0.02 spent < 0.025
    with pytest.raises(BudgetExceeded):  # 0.02 spent + 0.01 reserved: without the
        admit(lim, "t3", 0.01)           # reconcile Redis would think nothing was spent
