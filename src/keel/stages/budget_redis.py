"""Budgets and throttles shared by every Keel process, in Redis (``KEEL_REDIS_URL``).

:class:`keel.stages.budget.Limits` keeps balances and token buckets in one process's
memory; :class:`RedisLimits` keeps them in Redis and checks-and-reserves a call in
**one Lua script** (Redis runs scripts atomically), so budgets are exact across
processes: concurrent calls overspend by at most one call's estimate, wherever they run.

Per (budget, scope value, period) one hash ``{prefix}b:{name}:{value}:{start}`` holds
``spent`` (actual cost of recorded calls) and ``reserved`` (estimates of calls in
flight), with a sorted set of the reservations by expiry: a process that dies with
calls in flight leaks nothing for longer than ``reservation_ttl_s``. ``spent`` is seeded
from the cost ledger the first time any process needs it in a period (``HSETNX``) and
reconciled upwards from it now and then (``reconcile``), so a Redis restart or flush
loses nothing the ledger has. Token buckets are hashes refilled by Redis's own clock.
Alerts are announced once across processes (``SADD`` on the period's set).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from keel.errors import BudgetExceeded, LimitsUnavailable, Throttled
from keel.spec import BudgetSpec, ThrottleSpec
from keel.stages.budget import (
    EVENT_SCOPES,
    AlertHook,
    Balance,
    Limits,
    Reservation,
    SpendSource,
    period_bounds,
)
from keel.types import Call, Event

log = logging.getLogger("keel.budget")

# KEYS: per budget (hash, zset) pairs, then per bucket one hash
# ARGV: now, n_budgets, n_buckets, trace_id, estimate, ttl, then per budget its limit,
#       then per bucket (capacity, refill_per_s, amount)
# returns {0, shares...} when admitted, {1, i, spent, reserved} when budget i is spent,
# {2, j, wait_s} when bucket j is empty
_ADMIT = """
local now = tonumber(ARGV[1])
local nb = tonumber(ARGV[2])
local nt = tonumber(ARGV[3])
local trace = ARGV[4]
local estimate = tonumber(ARGV[5])
local ttl = tonumber(ARGV[6])
local shares = {}
for i = 1, nb do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  local expired = redis.call('ZRANGEBYSCORE', z, '-inf', now)
  for _, member in ipairs(expired) do
    local amount = tonumber(string.match(member, '|([^|]+)$'))
    redis.call('HINCRBYFLOAT', h, 'reserved', -amount)
  end
  if #expired > 0 then redis.call('ZREMRANGEBYSCORE', z, '-inf', now) end
  local spent = tonumber(redis.call('HGET', h, 'spent') or '0')
  local reserved = math.max(0, tonumber(redis.call('HGET', h, 'reserved') or '0'))
  local limit = tonumber(ARGV[6 + i])
  if spent + reserved >= limit then
    return {1, i, tostring(spent), tostring(reserved)}
  end
  shares[i] = tostring((spent + reserved + estimate) / limit)
end
local base = 2 * nb
local arg = 6 + nb
for j = 1, nt do
  local k = KEYS[base + j]
  local capacity = tonumber(ARGV[arg + 3 * j - 2])
  local rate = tonumber(ARGV[arg + 3 * j - 1])
  local amount = tonumber(ARGV[arg + 3 * j])
  local level = tonumber(redis.call('HGET', k, 'level') or capacity)
  local updated = tonumber(redis.call('HGET', k, 'updated') or now)
  level = math.min(capacity, level + math.max(0, now - updated) * rate)
  local need = math.min(amount, capacity)
  if level < need then
    for back = 1, j - 1 do
      redis.call('HINCRBYFLOAT', KEYS[base + back], 'level', tonumber(ARGV[arg + 3 * back]))
    end
    return {2, j, tostring((need - level) / rate)}
  end
  redis.call('HSET', k, 'level', tostring(level - amount), 'updated', tostring(now))
  redis.call('EXPIRE', k, 120)
end
for i = 1, nb do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  redis.call('HINCRBYFLOAT', h, 'reserved', estimate)
  redis.call('ZADD', z, now + ttl, trace .. '|' .. tostring(estimate))
end
table.insert(shares, 1, 0)
return shares
"""

# KEYS: per budget (hash, zset); ARGV: trace_id, estimate, cost
# returns per budget {spent before, spent after}
_SETTLE = """
local out = {}
for i = 1, #KEYS / 2 do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  local member = ARGV[1] .. '|' .. ARGV[2]
  if redis.call('ZREM', z, member) == 1 then
    redis.call('HINCRBYFLOAT', h, 'reserved', -tonumber(ARGV[2]))
  end
  local before = tonumber(redis.call('HGET', h, 'spent') or '0')
  local after = before
  if tonumber(ARGV[3]) > 0 then
    after = tonumber(redis.call('HINCRBYFLOAT', h, 'spent', ARGV[3]))
  end
  table.insert(out, tostring(before))
  table.insert(out, tostring(after))
end
return out
"""


@dataclass(slots=True)
class _Held:
    """A call admitted here and not settled yet: which balances it reserved from."""

    estimate: float
    tokens: int
    budgets: list[tuple[BudgetSpec, str, float]] = field(default_factory=list)
    buckets: list[str] = field(default_factory=list)  # token buckets charged at admission


class RedisLimits(Limits):
    """:class:`Limits` with its state in Redis; same calls, exact across processes."""

    def __init__(self, budgets: list[BudgetSpec], throttles: list[ThrottleSpec], *,
                 spend: SpendSource, client: Any, prefix: str = "keel:",
                 thresholds: list[float] | None = None, on_alert: AlertHook | None = None,
                 clock: Callable[[], float] = time.time,
                 reservation_ttl_s: float = 300.0, fail_open: bool = False) -> None:
        super().__init__(budgets, throttles, spend=spend, thresholds=thresholds,
                         on_alert=on_alert, clock=clock)
        self.redis = client
        self.prefix = prefix
        self.reservation_ttl_s = reservation_ttl_s
        self.fail_open = fail_open
        self._warned = -math.inf
        self._admit = client.register_script(_ADMIT)
        self._settle = client.register_script(_SETTLE)
        self._seeded: dict[tuple[str, str], float] = {}  # -> the period start seeded
        self._held: dict[str, _Held] = {}
        self._shares: dict[tuple[str, str], float] = {}

    def _key(self, budget: BudgetSpec, value: str, start: float) -> str:
        return f"{self.prefix}b:{budget.name}:{value}:{int(start)}"

    def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run a script; when Redis does not answer: None if limits fail open (the call
        goes on unchecked, logged at most once a minute), else LimitsUnavailable."""
        from redis.exceptions import RedisError

        try:
            return script(keys=keys, args=args)
        except RedisError as exc:
            if not self.fail_open:
                raise LimitsUnavailable(
                    f"budgets and throttles are kept in Redis, which did not answer "
                    f"({type(exc).__name__}); retry shortly (KEEL_LIMITS_FAIL=open lets calls "
                    "through unchecked while Redis is down)") from exc
            now = time.monotonic()
            if now - self._warned > 60:
                self._warned = now
                log.warning("Redis did not answer (%s): budgets and throttles are not checked "
                            "until it does (KEEL_LIMITS_FAIL=open)", exc)
            return None

    # --- admission ----------------------------------------------------------------

    def needs_loading(self, call: Call) -> list[tuple[BudgetSpec, str]]:
        now = self.clock()
        return [(budget, value) for budget, value in self._budgets_for(call)
                if self._seeded.get((budget.name, value)) != period_bounds(budget.period, now)[0]]

    def load(self, budget: BudgetSpec, value: str) -> None:
        """Seed the period's balance from the ledger unless a process did already."""
        start, end = period_bounds(budget.period, self.clock())
        key = self._key(budget, value, start)
        spent = self._spend(budget, value, start, end)
        pipe = self.redis.pipeline()
        pipe.hsetnx(key, "spent", repr(spent))
        pipe.expireat(key, int(end) + 86_400)
        pipe.expireat(key + ":r", int(end) + 86_400)
        pipe.execute()
        self._seeded[(budget.name, value)] = start
        # what the ledger shows crossed was announced before (by some process)
        self.balances[(budget.name, value)] = Balance(
            spent, start, end, alerted={t for t in self.thresholds if spent >= t * budget.limit_usd})

    def admit(self, call: Call, estimated_cost: float, estimated_tokens: int, *,
              ceiling: float = 1.0) -> Reservation | None:
        if not self.active:
            return None
        now = self.clock()
        budgets = self._budgets_for(call)
        keys: list[str] = []
        limits: list[float] = []
        held = _Held(estimated_cost, estimated_tokens)
        for budget, value in budgets:
            start = period_bounds(budget.period, now)[0]
            key = self._key(budget, value, start)
            keys += [key, key + ":r"]
            limits.append(budget.limit_usd * ceiling)
            held.budgets.append((budget, value, start))
        bucket_args: list[float] = []
        throttled: list[tuple[ThrottleSpec, str, str, int]] = []
        for throttle, value in self._throttles_for(call):
            for unit, rate, amount in (("requests", throttle.requests_per_minute, 1.0),
                                       ("tokens", throttle.tokens_per_minute, float(estimated_tokens))):
                if rate is None:
                    continue
                key = f"{self.prefix}t:{throttle.name}:{value}:{unit}"
                keys.append(key)
                bucket_args += [float(rate), rate / 60.0, amount]
                throttled.append((throttle, value, unit, rate))
                if unit == "tokens":
                    held.buckets.append(key)
        if not keys:
            return None
        result = self._run(self._admit, keys, [
            now, len(budgets), len(throttled), call.trace_id,
            repr(estimated_cost if budgets else 0.0), self.reservation_ttl_s,
            *(repr(x) for x in limits), *(repr(x) for x in bucket_args)])
        if result is None:  # Redis is down and limits fail open
            return None
        code = int(result[0])
        if code == 1:
            budget, value = budgets[int(result[1]) - 1]
            spent = float(result[2])
            who = "" if budget.scope == "all" else f" for {budget.scope} '{value}'"
            end = period_bounds(budget.period, now)[1]
            raise BudgetExceeded(
                f"budget '{budget.name}'{who} is spent: ${spent:.4f} of ${budget.limit_usd:g} "
                f"this {budget.period} (UTC); it renews at the start of the next {budget.period}",
                retry_after=max(1.0, end - now))
        if code == 2:
            throttle, value, unit, rate = throttled[int(result[1]) - 1]
            wait = float(result[2])
            who = "" if throttle.scope == "all" else f" for {throttle.scope} '{value}'"
            raise Throttled(f"throttle '{throttle.name}'{who}: over {rate} {unit} per minute; "
                            f"retry in {math.ceil(wait)} s", retry_after=wait)
        for (budget, value), share in zip(budgets, result[1:], strict=True):
            self._shares[(budget.name, value)] = float(share)
        if budgets or held.buckets:
            self._held[call.trace_id] = held
        return Reservation(call.trace_id, estimated_cost, estimated_tokens)

    def pressure(self, call: Call) -> float:
        """The largest share of the call's budgets, as Redis last told this process."""
        return max((self._shares.get((b.name, v), 0.0) for b, v in self._budgets_for(call)),
                   default=0.0)

    # --- settlement ---------------------------------------------------------------

    def observe(self, event: Event) -> None:
        held = self._held.pop(event.trace_id, None)
        cost = event.cost_usd or 0.0
        if held is not None:
            extra = event.input_tokens + event.output_tokens - held.tokens
            if extra and held.buckets:
                pipe = self.redis.pipeline()
                for key in held.buckets:
                    pipe.hincrbyfloat(key, "level", -extra)
                pipe.execute()
            targets = held.budgets
        else:  # recorded here but admitted elsewhere (or not at all): charge the period
            targets = [(b, v, period_bounds(b.period, event.ts)[0]) for b in self.budgets
                       if (v := EVENT_SCOPES[b.scope](event)) is not None
                       and (b.match is None or b.match == v)]
            if not cost:
                return
        keys = [k for b, v, start in targets for k in (self._key(b, v, start), self._key(b, v, start) + ":r")]
        if not keys:
            return
        estimate = held.estimate if held is not None else 0.0
        out = self._run(self._settle, keys, [event.trace_id, repr(estimate), repr(cost)])
        if out is None:
            return
        for i, (budget, value, start) in enumerate(targets):
            before, after = float(out[2 * i]), float(out[2 * i + 1])
            self._shares[(budget.name, value)] = after / budget.limit_usd
            balance = self.balances.get((budget.name, value))
            if balance is not None and balance.period_start == start:
                balance.spent = after
                self._announce(budget, value, balance, before, start)

    def _announce(self, budget: BudgetSpec, value: str, balance: Balance, before: float,
                  start: float) -> None:
        for threshold in self.thresholds:
            mark = threshold * budget.limit_usd
            if before < mark <= balance.spent and threshold not in balance.alerted:
                balance.alerted.add(threshold)
                first = self.redis.sadd(self._key(budget, value, start) + ":alerted", repr(threshold))
                if first and self.on_alert is not None:
                    self.on_alert(budget, value, balance, threshold)

    def release(self, trace_id: str) -> None:
        held = self._held.pop(trace_id, None)
        if held is None or not held.budgets:
            return
        keys = [k for b, v, start in held.budgets
                for k in (self._key(b, v, start), self._key(b, v, start) + ":r")]
        self._run(self._settle, keys, [trace_id, repr(held.estimate), "0"])

    def reconcile(self) -> None:
        """Raise each seeded balance's ``spent`` to the ledger's where Redis has less (it
        was restarted or flushed); never lower it (calls not in the ledger yet)."""
        now = self.clock()
        for budget in self.budgets:
            start, end = period_bounds(budget.period, now)
            for (name, value), seeded in list(self._seeded.items()):
                if name != budget.name or seeded != start:
                    continue
                ledger = self._spend(budget, value, start, end)
                key = self._key(budget, value, start)
                current = float(self.redis.hget(key, "spent") or 0.0)
                if ledger > current:
                    self.redis.hincrbyfloat(key, "spent", ledger - current)
