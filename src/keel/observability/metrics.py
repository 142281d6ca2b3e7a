"""Prometheus metrics of one Keel app: counters and histograms fed by an observer of
every recorded :class:`~keel.types.Event`, and gauges read at scrape time.

Each app has its own :class:`~prometheus_client.CollectorRegistry` (never the global
one), so several apps in one process never share numbers.

The observer is called on the event loop inside each call, before the caller has its
answer, so it only queues the event; the counting runs on the loop's next turn, after
the response is written (:meth:`Metrics.drain`). Counting is kept cheap too (~5 µs an
event, see tests/observability): it adds to plain ints, floats and bucket lists, found
through dicts keyed by the event's own fields, and builds nothing else. prometheus_client's
metric objects took ~35 µs an event here (a lock and checks per ``inc``, a linear bucket
scan per ``observe``, ~19 of them an event). The numbers become metric families only at
scrape time (:class:`CallCollector`). A scrape in another thread may see one event half
counted; each histogram's count is the sum of its buckets, so it stays consistent.

Scrape-time gauges (review queue, circuits, canary weights, SLO burn rates) read the
store, so :meth:`Metrics.render` belongs in a worker thread.

Every metric and label is listed in docs/observability.md.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from keel.observability.cache_metrics import CacheCollector
from keel.observability.store_health import WriterCollector
from keel.store.db import DB_ERRORS
from keel.types import Event

if TYPE_CHECKING:
    from keel.gateway import Keel

log = logging.getLogger("keel.observability")

# calls: 1 ms .. 60 s; stages and attempts also go down to 100 µs (checks, route, decide)
CALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0)
STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, *CALL_BUCKETS)
# the same bounds in milliseconds, as events time things
_CALL_MS = tuple(b * 1000 for b in CALL_BUCKETS)
_STAGE_MS = tuple(b * 1000 for b in STAGE_BUCKETS)
MAX_PENDING = 256  # events queued before they are counted at once anyway
NO_VERSION = "none"  # the version label of calls no version answered (errors, refusals)
_SKIP_STAGES = frozenset({"total"})  # the call's duration has its own histogram


class Hist:
    """Observations in milliseconds: a count per bucket (the last is +Inf) and a sum."""

    __slots__ = ("bounds", "counts", "sum_ms")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum_ms = 0.0

    def observe(self, ms: float) -> None:
        self.counts[bisect_left(self.bounds, ms)] += 1  # the first bound >= ms: le
        self.sum_ms += ms

    def merge(self, other: Hist) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.sum_ms += other.sum_ms


class _PerCall:
    """What one (feature, version, decision) accumulates."""

    __slots__ = ("calls", "cost", "duration", "tokens_in", "tokens_out")

    def __init__(self) -> None:
        self.calls = 0
        self.duration = Hist(_CALL_MS)
        self.tokens_in = 0
        self.tokens_out = 0
        self.cost = 0.0


class _PerAttempt:
    """What one (feature, version, provider, error code) accumulates."""

    __slots__ = ("count", "duration")

    def __init__(self, timed: bool) -> None:
        self.count = 0
        self.duration = Hist(_CALL_MS) if timed else None


class Metrics:
    """The metrics of one app. :meth:`observe` is the ``Keel.observers`` hook."""

    def __init__(self, keel: Keel) -> None:
        self.keel = keel
        self.observer_errors = 0
        self._pending: list[Event] = []
        self.calls: dict[tuple[str, str | None, str], _PerCall] = {}
        self.stages: dict[str, dict[str, Hist]] = {}  # feature -> stage -> durations
        self.attempts: dict[tuple[str, str, str, str | None], _PerAttempt] = {}
        self.validation_failures: dict[tuple[str, str], int] = {}
        self.registry = CollectorRegistry()
        self.registry.register(CallCollector(self))
        self.registry.register(StateCollector(keel))
        self.registry.register(SLOCollector(keel))
        self.registry.register(CacheCollector(keel))  # keel.observability.cache_metrics
        self.registry.register(WriterCollector(keel.writer))  # the store up, and what waits
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(_Forward(collector))

    # --- the hot path ---------------------------------------------------------------

    def observe(self, event: Event) -> None:
        """Queue one recorded call; it is counted just after, once the caller has its
        answer (the event loop's next turn), so counting adds nothing to a call's
        latency. Without a running loop it is counted at once."""
        pending = self._pending
        pending.append(event)
        if len(pending) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.drain)
            except RuntimeError:
                self.drain()
        elif len(pending) >= MAX_PENDING:  # calls that never yield to the loop
            self.drain()

    def drain(self) -> None:
        """Count the queued calls. Never raises: a failure is logged once and counted.
        Runs on the event loop's thread (or where there is none), never beside it."""
        pending, self._pending = self._pending, []
        for event in pending:
            try:
                self._observe(event)
            except Exception:
                self.observer_errors += 1
                if self.observer_errors == 1:
                    log.exception("metrics: could not count an event (counting the rest goes on)")

    def _observe(self, event: Event) -> None:
        feature = event.feature
        key = (feature, event.version, event.decision)
        per = self.calls.get(key)
        if per is None:
            per = self.calls[key] = _PerCall()
        per.calls += 1
        per.duration.observe(event.latency_ms)
        per.tokens_in += event.input_tokens
        per.tokens_out += event.output_tokens
        if event.cost_usd:
            per.cost += event.cost_usd
        stages = self.stages.get(feature)
        if stages is None:
            stages = self.stages[feature] = {}
        for stage, ms in event.timings_ms.items():
            hist = stages.get(stage)
            if hist is None:
                if stage in _SKIP_STAGES:
                    continue
                hist = stages[stage] = Hist(_STAGE_MS)
            hist.observe(ms)
        for attempt in event.attempts:
            akey = (feature, attempt.version, attempt.provider, attempt.error_code)
            tried = self.attempts.get(akey)
            if tried is None:
                # an attempt an open circuit skipped never reached the provider: no latency
                tried = self.attempts[akey] = _PerAttempt(attempt.error_code != "circuit_open")
            tried.count += 1
            if tried.duration is not None:
                tried.duration.observe(attempt.latency_ms)
        for result in event.validations:
            if not result.passed:
                vkey = (feature, result.validator)
                self.validation_failures[vkey] = self.validation_failures.get(vkey, 0) + 1

    # --- scraping -------------------------------------------------------------------

    def model(self, feature: str, version: str) -> str:
        known = self.keel.features.get(feature)
        target = known.targets.get(version) if known is not None else None
        return target.template.model if target is not None else ""

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """Count what is queued, then :meth:`encode` (which reads the store)."""
        self.drain()
        return self.encode(accept)

    def encode(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition for an ``Accept`` header: OpenMetrics when asked, else the
        Prometheus text format. Reads the store: fit for a worker thread (it only reads
        what the event loop's thread counts)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


def _buckets(hist: Hist, bounds: tuple[float, ...]) -> list[tuple[str, float]]:
    """Cumulative buckets labelled ``le`` (in seconds), as the exposition wants them."""
    out, total = [], 0
    for bound, count in zip((*map(repr, bounds), "+Inf"), hist.counts, strict=True):
        total += count
        out.append((bound, float(total)))
    return out


class CallCollector(Collector):
    """The observer's numbers as counter and histogram families (seconds, as Prometheus
    wants them), summed over the keys the observer does not label by."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def _families(self) -> tuple[CounterMetricFamily, HistogramMetricFamily, HistogramMetricFamily,
                                 CounterMetricFamily, HistogramMetricFamily, CounterMetricFamily,
                                 CounterMetricFamily, CounterMetricFamily]:
        return (
            CounterMetricFamily("keel_calls", "Calls served, by decision",
                                labels=["feature", "version", "decision"]),
            HistogramMetricFamily("keel_call_duration_seconds",
                                  "Time Keel took to answer a call, every stage included",
                                  labels=["feature", "version"]),
            HistogramMetricFamily("keel_stage_duration_seconds",
                                  "Time spent in each stage of a call (first_token: from the "
                                  "call's start)", labels=["feature", "stage"]),
            CounterMetricFamily("keel_provider_attempts",
                                "Attempts at a provider target (retries and fallbacks each count)",
                                labels=["provider", "model", "outcome", "error_code"]),
            HistogramMetricFamily("keel_provider_attempt_duration_seconds",
                                  "Duration of one attempt at a provider (attempts an open "
                                  "circuit skipped excluded)", labels=["provider", "model", "outcome"]),
            CounterMetricFamily("keel_tokens", "Tokens the providers reported",
                                labels=["feature", "version", "direction"]),
            CounterMetricFamily("keel_cost_usd", "Cost of the calls in USD (calls of known cost)",
                                labels=["feature", "version"]),
            CounterMetricFamily("keel_validation_failures",
                                "Output validations that failed, by validator",
                                labels=["feature", "validator"]),
        )

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        calls, duration, stages, attempts, attempt_duration, tokens, cost, failures = self._families()
        per_version: dict[tuple[str, str], tuple[Hist, list[float]]] = {}
        for (feature, version, decision), per in sorted(list(m.calls.items()), key=_sort_key):
            v = version or NO_VERSION
            calls.add_metric([feature, v, str(decision)], per.calls)
            hist, sums = per_version.setdefault((feature, v), (Hist(_CALL_MS), [0.0, 0.0, 0.0]))
            hist.merge(per.duration)
            sums[0] += per.tokens_in
            sums[1] += per.tokens_out
            sums[2] += per.cost
        for (feature, v), (hist, sums) in per_version.items():
            duration.add_metric([feature, v], _buckets(hist, CALL_BUCKETS), hist.sum_ms / 1000)
            tokens.add_metric([feature, v, "input"], sums[0])
            tokens.add_metric([feature, v, "output"], sums[1])
            cost.add_metric([feature, v], sums[2])
        for feature, per_stage in sorted(list(m.stages.items())):
            for stage, hist in sorted(list(per_stage.items())):
                stages.add_metric([feature, stage], _buckets(hist, STAGE_BUCKETS), hist.sum_ms / 1000)
        counts: dict[tuple[str, str, str, str], int] = {}
        timed: dict[tuple[str, str, str], Hist] = {}
        for (feature, version, provider, code), tried in list(m.attempts.items()):
            model = m.model(feature, version)
            outcome = "ok" if code is None else "error"
            ckey = (provider, model, outcome, code or "")
            counts[ckey] = counts.get(ckey, 0) + tried.count
            if tried.duration is not None:
                timed.setdefault((provider, model, outcome), Hist(_CALL_MS)).merge(tried.duration)
        for ckey, count in sorted(counts.items()):
            attempts.add_metric(list(ckey), count)
        for tkey, hist in sorted(timed.items()):
            attempt_duration.add_metric(list(tkey), _buckets(hist, CALL_BUCKETS), hist.sum_ms / 1000)
        for vkey, count in sorted(list(m.validation_failures.items())):
            failures.add_metric(list(vkey), count)
        yield from (calls, duration, stages, attempts, attempt_duration, tokens, cost, failures)


def _sort_key(item: tuple[tuple[str, str | None, str], _PerCall]) -> tuple[str, str, str]:
    (feature, version, decision), _ = item
    return feature, version or "", str(decision)


class _Forward(Collector):
    """A process-wide collector (process, platform, GC) in an app's own registry."""

    def __init__(self, inner: Collector) -> None:
        self._inner = inner

    def collect(self) -> Iterable[Metric]:
        return self._inner.collect()


class StateCollector(Collector):
    """Gauges read at scrape time: pending review items per feature, circuit breaker
    states per target, and the canary's share of traffic per feature."""

    def __init__(self, keel: Keel) -> None:
        self.keel = keel

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("keel_review_queue_pending", "Review items waiting for a verdict",
                              labels=["feature"]),
            GaugeMetricFamily("keel_circuit_state",
                              "Circuit breaker state per target: 1 for the current state",
                              labels=["provider", "model", "state"]),
            GaugeMetricFamily("keel_rollout_canary_weight",
                              "Share of the feature's traffic routed to the canary (0: no rollout)",
                              labels=["feature"]),
        )

    def collect(self) -> Iterable[Metric]:
        pending, circuits, weights = self._families()
        keel = self.keel
        try:
            counts = self._pending()
        except DB_ERRORS as exc:  # a store not migrated yet: leave the gauge out
            log.debug("metrics: review queue unreadable: %s", exc)
        else:
            for name in sorted(keel.features):
                pending.add_metric([name], counts.get(name, 0))
            yield pending
        for circuit in keel.circuits.snapshot():
            for state in ("closed", "open", "half_open"):
                circuits.add_metric([circuit["provider"], circuit["model"], state],
                                    1.0 if circuit["state"] == state else 0.0)
        yield circuits
        for name, feature in sorted(keel.features.items()):
            split = feature.router.split
            canary = split is not None and "canary" in feature.router.aliases
            weights.add_metric([name], split.weight if canary and split is not None else 0.0)
        yield weights

    def _pending(self) -> dict[str, int]:
        conn = self.keel.store.connect()
        try:
            rows = conn.execute("SELECT feature, COUNT(*) FROM review_items"
                                " WHERE status = 'pending' GROUP BY feature").fetchall()
        finally:
            conn.close()
        return {str(r[0]): int(r[1]) for r in rows}


class SLOCollector(Collector):
    """The SLOs' burn rates and error budgets (keel.control.slo), computed from the
    store at most every ``settings.slo_cache_s`` seconds."""

    def __init__(self, keel: Keel) -> None:
        self.keel = keel
        self._lock = threading.Lock()
        self._cached: list[Metric] = []
        self._at = float("-inf")

    def describe(self) -> Iterable[Metric]:
        return _slo_families()

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            now = time.monotonic()
            if now - self._at >= self.keel.settings.slo_cache_s:
                try:
                    self._cached = self._compute()
                except DB_ERRORS as exc:
                    log.debug("metrics: SLOs unreadable: %s", exc)
                    self._cached = []
                self._at = now
            return list(self._cached)

    def _compute(self) -> list[Metric]:
        from keel.control.slo import slo_status  # the control plane, only when scraped

        burn, budget, alerting = _slo_families()
        now = time.time()
        for name, feature in sorted(self.keel.features.items()):
            for status in slo_status(self.keel.store, name, feature.spec.slo, now, exact_p95=False):
                for window, rate in status.burn_rates.items():
                    if rate is not None:
                        burn.add_metric([name, status.objective, window], rate)
                budget.add_metric([name, status.objective], status.budget_remaining)
                alerting.add_metric([name, status.objective, "page"], float(status.page))
                alerting.add_metric([name, status.objective, "ticket"], float(status.ticket))
        return [burn, budget, alerting]


def _slo_families() -> list[GaugeMetricFamily]:
    return [
        GaugeMetricFamily("keel_slo_burn_rate",
                          "Error-budget burn rate per window (1: the budget lasts exactly the SLO window)",
                          labels=["feature", "objective", "window"]),
        GaugeMetricFamily("keel_slo_error_budget_remaining",
                          "Share of the SLO window's error budget left (negative: overspent)",
                          labels=["feature", "objective"]),
        GaugeMetricFamily("keel_slo_alerting",
                          "1 when the multiwindow burn-rate rule fires (page: 1 h and 5 m; "
                          "ticket: 6 h and 30 m)", labels=["feature", "objective", "severity"]),
    ]
