"""Prometheus metrics of the cache (:mod:`keel.stages.cache`), read at scrape time from
the cache stage's own counters: lookups by result, the cost hits avoided, the hit ratio,
failures, invalidations and the entries this process holds. Listed in
docs/observability.md and docs/caching.md."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from keel.stages.cache import HIT_EXACT, HIT_SEMANTIC, MISS, RESULTS

if TYPE_CHECKING:
    from keel.gateway import Keel


class CacheCollector(Collector):
    def __init__(self, keel: Keel) -> None:
        self.keel = keel

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, CounterMetricFamily, GaugeMetricFamily,
                             CounterMetricFamily, CounterMetricFamily, GaugeMetricFamily]:
        return (
            CounterMetricFamily("keel_cache_lookups",
                                "Calls of features with a cache, by result: hit-exact, "
                                "hit-semantic, miss, bypass", labels=["feature", "result"]),
            CounterMetricFamily("keel_cache_saved_usd",
                                "Cost of the model calls that cache hits avoided (USD)",
                                labels=["feature"]),
            GaugeMetricFamily("keel_cache_hit_ratio",
                              "Hits / (hits + misses) since this process started",
                              labels=["feature"]),
            CounterMetricFamily("keel_cache_errors",
                                "Cache lookups, embeddings or saves that failed (the call "
                                "was served without the cache)", labels=["feature"]),
            CounterMetricFamily("keel_cache_invalidations",
                                "Times a feature's cache was emptied by a champion or "
                                "canary move", labels=[]),
            GaugeMetricFamily("keel_cache_entries",
                              "Entries this process holds (memory backend; with Redis: the "
                              "local semantic mirror)", labels=["feature", "kind"]),
        )

    def collect(self) -> Iterable[Metric]:
        families = self._families()
        cache = getattr(self.keel, "cache", None)
        if cache is None:  # no feature has a cache: the families, empty
            return list(families)
        lookups, saved, ratio, errors, invalidations, entries = families
        for name, feature in sorted(cache.features.items()):
            counts = dict(feature.counts)
            for result in RESULTS:
                lookups.add_metric([name, result], counts[result])
            saved.add_metric([name], feature.saved_usd)
            hits = counts[HIT_EXACT] + counts[HIT_SEMANTIC]
            if hits + counts[MISS]:
                ratio.add_metric([name], hits / (hits + counts[MISS]))
            errors.add_metric([name], counts["errors"])
            exact, semantic = cache.backend.sizes(name)
            if exact >= 0:
                entries.add_metric([name, "exact"], exact)
            entries.add_metric([name, "semantic"], semantic)
        invalidations.add_metric([], cache.invalidations)
        return [lookups, saved, ratio, errors, invalidations, entries]
