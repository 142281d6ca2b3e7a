"""Budgets and throttles: refuse a call before any model is called when its scope has
spent its money for the period or used up its requests / tokens for the minute.

Every check and reservation happens in one synchronous step on the event loop (no
``await`` between reading a balance and reserving from it), so concurrent calls cannot
all pass a nearly spent budget: a call is admitted while ``spent + reserved < limit``
and reserves its *estimated* cost; the event of the finished call swaps the estimate for
the actual cost. Concurrent calls therefore overspend a budget by at most one call's
estimate (when estimates hold). Exact across processes needs a shared counter: Redis,
with the scaled-out mode.

A budget's spend for the current period is read once from the cost ledger (the first
call of its scope in the period, so a restart does not reset it), then kept in memory.

A feature with ``routing.downgrade_to`` is not refused at the limit: from
``downgrade_at`` of a budget spent, its calls are admitted at that cheaper version's
estimate and ``Call.downgrade`` tells the route to use it (up to ``downgrade_until``).

Throttles are token buckets refilled continuously: requests per minute (one token per
call) and tokens per minute (the call's estimated input tokens at admission, corrected
by its actual tokens when it finishes).
"""

from __future__ import annotations

import asyncio
import calendar
import datetime as dt
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from keel.errors import BudgetExceeded, Throttled
from keel.pricing import Pricing
from keel.spec import BudgetSpec, ThrottleSpec
from keel.types import JSON, Call, Event, Usage

if TYPE_CHECKING:
    from keel.feature import Feature

# how a call's scope value is read for each kind of budget / throttle
SCOPES: dict[str, Callable[[Call], str | None]] = {
    "key": lambda c: c.key,
    "user": lambda c: c.user,
    "feature": lambda c: c.feature,
    "all": lambda c: "*",
}
EVENT_SCOPES: dict[str, Callable[[Event], str | None]] = {
    "key": lambda e: e.key,
    "user": lambda e: e.user,
    "feature": lambda e: e.feature,
    "all": lambda e: "*",
}


def period_bounds(period: str, now: float) -> tuple[float, float]:
    """The UTC day or month ``now`` falls in, as [start, end) timestamps."""
    t = dt.datetime.fromtimestamp(now, dt.UTC)
    if period == "day":
        start = dt.datetime(t.year, t.month, t.day, tzinfo=dt.UTC)
        return start.timestamp(), (start + dt.timedelta(days=1)).timestamp()
    start = dt.datetime(t.year, t.month, 1, tzinfo=dt.UTC)
    days = calendar.monthrange(t.year, t.month)[1]
    return start.timestamp(), (start + dt.timedelta(days=days)).timestamp()


@dataclass(slots=True)
class Balance:
    """One budget for one scope value in one period."""

    spent: float
    period_start: float
    period_end: float
    reserved: float = 0.0
    alerted: set[float] = field(default_factory=set)  # thresholds already announced


@dataclass(slots=True)
class Bucket:
    capacity: float
    level: float
    refill_per_s: float
    updated: float

    def take(self, amount: float, now: float) -> float:
        """Take ``amount`` if it is there; else return the seconds until it will be."""
        self.level = min(self.capacity, self.level + (now - self.updated) * self.refill_per_s)
        self.updated = now
        need = min(amount, self.capacity)  # one call bigger than a minute's worth waits a minute
        if self.level >= need:
            self.level -= amount
            return 0.0
        return (need - self.level) / self.refill_per_s

    def give_back(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)


@dataclass(slots=True)
class Reservation:
    trace_id: str
    cost: float = 0.0
    tokens: int = 0
    balances: list[Balance] = field(default_factory=list)
    buckets: list[Bucket] = field(default_factory=list)


# a balance's spend so far in its period, from the store: (budget, scope value, start, end)
SpendSource = Callable[[BudgetSpec, str, float, float], float]
# called when a balance crosses an alert threshold: (budget, value, balance, threshold)
AlertHook = Callable[[BudgetSpec, str, Balance, float], None]


class Limits:
    def __init__(self, budgets: list[BudgetSpec], throttles: list[ThrottleSpec], *,
                 spend: SpendSource, thresholds: list[float] | None = None,
                 on_alert: AlertHook | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.budgets = budgets
        self.throttles = throttles
        self._spend = spend
        self.thresholds = sorted(thresholds or [0.5, 0.8, 1.0])
        self.on_alert = on_alert
        self.clock = clock
        self.balances: dict[tuple[str, str], Balance] = {}
        self.buckets: dict[tuple[str, str, str], Bucket] = {}
        self.pending: dict[str, Reservation] = {}

    @property
    def active(self) -> bool:
        return bool(self.budgets or self.throttles)

    # --- admission ----------------------------------------------------------------

    def needs_loading(self, call: Call) -> list[tuple[BudgetSpec, str]]:
        """The (budget, value) balances this call needs that are not in memory yet for the
        current period: load them (off the loop) with :meth:`load` before :meth:`admit`."""
        now = self.clock()
        out = []
        for budget, value in self._budgets_for(call):
            balance = self.balances.get((budget.name, value))
            if balance is None or now >= balance.period_end:
                out.append((budget, value))
        return out

    def load(self, budget: BudgetSpec, value: str) -> None:
        """Read a balance's spend this period from the store (blocking)."""
        start, end = period_bounds(budget.period, self.clock())
        spent = self._spend(budget, value, start, end)
        key = (budget.name, value)
        current = self.balances.get(key)
        if current is None or current.period_start != start:
            balance = Balance(spent, start, end)
            # a restart must not announce again what the ledger shows was already crossed
            balance.alerted = {t for t in self.thresholds if spent >= t * budget.limit_usd}
            self.balances[key] = balance

    def admit(self, call: Call, estimated_cost: float, estimated_tokens: int, *,
              ceiling: float = 1.0) -> Reservation | None:
        """Check every budget and throttle of the call and reserve from them, or raise
        BudgetExceeded / Throttled having reserved nothing. Synchronous on purpose.
        ``ceiling``: the share of a budget at which the call is refused (a downgraded
        call's may be above 1, or infinite)."""
        if not self.active:
            return None
        now = self.clock()
        balances: list[Balance] = []
        for budget, value in self._budgets_for(call):
            balance = self.balances[(budget.name, value)]
            if balance.spent + balance.reserved >= budget.limit_usd * ceiling:
                who = "" if budget.scope == "all" else f" for {budget.scope} '{value}'"
                raise BudgetExceeded(
                    f"budget '{budget.name}'{who} is spent: ${balance.spent:.4f} of "
                    f"${budget.limit_usd:g} this {budget.period} (UTC); it renews at the "
                    f"start of the next {budget.period}",
                    retry_after=max(1.0, balance.period_end - now))
            balances.append(balance)
        taken: list[tuple[Bucket, str, float]] = []
        for throttle, value in self._throttles_for(call):
            for unit, rate, amount in (("requests", throttle.requests_per_minute, 1.0),
                                       ("tokens", throttle.tokens_per_minute, float(estimated_tokens))):
                if rate is None:
                    continue
                bucket = self._bucket(throttle.name, value, unit, rate, now)
                wait = bucket.take(amount, now)
                if wait > 0:
                    for done, _, got in taken:
                        done.give_back(got)
                    who = "" if throttle.scope == "all" else f" for {throttle.scope} '{value}'"
                    raise Throttled(
                        f"throttle '{throttle.name}'{who}: over {rate} {unit} per minute; "
                        f"retry in {math.ceil(wait)} s", retry_after=wait)
                taken.append((bucket, unit, amount))
        for balance in balances:
            balance.reserved += estimated_cost
        reservation = Reservation(call.trace_id, estimated_cost, estimated_tokens, balances,
                                  [b for b, unit, _ in taken if unit == "tokens"])
        self.pending[call.trace_id] = reservation
        return reservation

    def pressure(self, call: Call) -> float:
        """The largest share (spent + reserved) / limit of the call's loaded budgets."""
        shares = [(b.spent + b.reserved) / budget.limit_usd for budget, value in
                  self._budgets_for(call)
                  if (b := self.balances.get((budget.name, value))) is not None]
        return max(shares, default=0.0)

    def _bucket(self, name: str, value: str, unit: str, per_minute: int, now: float) -> Bucket:
        key = (name, value, unit)
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = Bucket(per_minute, per_minute, per_minute / 60.0, now)
        return bucket

    def _budgets_for(self, call: Call) -> list[tuple[BudgetSpec, str]]:
        out = []
        for budget in self.budgets:
            value = SCOPES[budget.scope](call)
            if value is not None and (budget.match is None or budget.match == value):
                out.append((budget, value))
        return out

    def _throttles_for(self, call: Call) -> list[tuple[ThrottleSpec, str]]:
        out = []
        for throttle in self.throttles:
            value = SCOPES[throttle.scope](call)
            if value is not None and (throttle.match is None or throttle.match == value):
                out.append((throttle, value))
        return out

    # --- settlement ---------------------------------------------------------------

    def observe(self, event: Event) -> None:
        """An event was recorded: swap its reservation for what it really cost, and
        charge (or refund) token buckets the difference from the estimate."""
        reservation = self.pending.pop(event.trace_id, None)
        if reservation is not None:
            for balance in reservation.balances:
                balance.reserved = max(0.0, balance.reserved - reservation.cost)
            extra = event.input_tokens + event.output_tokens - reservation.tokens
            for bucket in reservation.buckets:
                bucket.level = min(bucket.capacity, bucket.level - extra)
        cost = event.cost_usd or 0.0
        if not cost:
            return
        for budget in self.budgets:
            value = EVENT_SCOPES[budget.scope](event)
            if value is None or (budget.match is not None and budget.match != value):
                continue
            current = self.balances.get((budget.name, value))
            if current is None or not current.period_start <= event.ts < current.period_end:
                continue  # not loaded (no admission here) or another period
            before = current.spent
            current.spent += cost
            self._alerts(budget, value, current, before)

    def _alerts(self, budget: BudgetSpec, value: str, balance: Balance, before: float) -> None:
        for threshold in self.thresholds:
            mark = threshold * budget.limit_usd
            if before < mark <= balance.spent and threshold not in balance.alerted:
                balance.alerted.add(threshold)
                if self.on_alert is not None:
                    self.on_alert(budget, value, balance, threshold)

    def release(self, trace_id: str) -> None:
        """A call admitted but never recorded (e.g. an eval call): free its reservation."""
        reservation = self.pending.pop(trace_id, None)
        if reservation is not None:
            for balance in reservation.balances:
                balance.reserved = max(0.0, balance.reserved - reservation.cost)


class BudgetGate:
    """The pipeline's side of :class:`Limits`: estimate a call, load balances it needs
    (off the event loop, once per scope and period), then admit it synchronously."""

    def __init__(self, limits: Limits, pricing: Pricing) -> None:
        self.limits = limits
        self.pricing = pricing
        self._output_tokens: dict[str, float] = {}  # per feature, moving average

    async def admit(self, feature: Feature, call: Call) -> None:
        for budget, value in self.limits.needs_loading(call):
            await asyncio.to_thread(self.limits.load, budget, value)
        routing = feature.spec.routing
        down = routing.downgrade_to if routing is not None else None
        if (routing is not None and down is not None and down in feature.targets
                and self.limits.pressure(call) >= routing.downgrade_at):
            # nearly spent and the feature allows it: a cheaper version serves the call
            # (keel.stages.route_policy) instead of a refusal at the limit
            call.downgrade = down
            cost, tokens = self.estimate(feature, call, down)
            self.limits.admit(call, cost, tokens, ceiling=routing.downgrade_until or math.inf)
            return
        cost, tokens = self.estimate(feature, call)
        self.limits.admit(call, cost, tokens)

    def estimate(self, feature: Feature, call: Call,
                 version: str | None = None) -> tuple[float, int]:
        """(cost, tokens) of a call before it runs: ~4 characters per input token; the
        caller's max_tokens, else this feature's average answer, for the output; priced
        as ``version`` (default: the champion's)."""
        chars = _chars(call.input)
        input_tokens = max(1, math.ceil(chars / 4))
        asked = call.options.get("max_tokens") or call.options.get("max_completion_tokens")
        output_tokens = int(asked) if isinstance(asked, int) else round(
            self._output_tokens.get(feature.name, DEFAULT_OUTPUT_TOKENS))
        version = version or feature.router.aliases.get("champion")
        target = feature.targets.get(version) if version else None
        if target is None or version is None:
            return 0.0, input_tokens + output_tokens
        cost = self.pricing.cost_usd(target.provider_type, feature.spec.versions[version],
                                     Usage(input_tokens, output_tokens))
        return cost or 0.0, input_tokens + output_tokens

    def observe(self, event: Event) -> None:
        if event.output_tokens:
            mean = self._output_tokens.get(event.feature, float(event.output_tokens))
            self._output_tokens[event.feature] = 0.9 * mean + 0.1 * event.output_tokens
        self.limits.observe(event)


DEFAULT_OUTPUT_TOKENS = 256.0


def _chars(value: JSON) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_chars(v) for v in value.values())
    if isinstance(value, list):
        return sum(_chars(v) for v in value)
    return 0
