"""Prometheus metrics of the event writer: is the store up, and what waits for it
(keel.stages.record; docs/resilience.md). Read at scrape time from its counters."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from keel.stages.record import EventWriter


class WriterCollector(Collector):
    def __init__(self, writer: EventWriter) -> None:
        self.writer = writer

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def _families(self) -> list[Metric]:
        w = self.writer
        metrics: list[tuple[type[GaugeMetricFamily] | type[CounterMetricFamily], str, str,
                            float]] = [
            (GaugeMetricFamily, "keel_store_up",
             "1 while the event writer can write to the store, 0 while it is down",
             1.0 if w.link.up else 0.0),
            (GaugeMetricFamily, "keel_events_queued",
             "Records handed to the event writer and not taken yet (grows while a write "
             "stalls)", w.queued),
            (GaugeMetricFamily, "keel_events_buffered",
             "Events and review items in memory, waiting for the store", w.buffered),
            (GaugeMetricFamily, "keel_events_spill_pending",
             "Records in spill files and journals of stopped processes, not in the store yet",
             w.spill_pending),
            (CounterMetricFamily, "keel_events_spilled",
             "Records written to a spill file because the store was down and memory full",
             w.spilled),
            (CounterMetricFamily, "keel_events_dropped",
             "Records neither stored nor spilled (spill_max_bytes reached, or the disk failed)",
             w.dropped),
            (CounterMetricFamily, "keel_events_rejected",
             "Records the store refused for good (kept in rejected-*.jsonl)", w.link.rejected),
            (CounterMetricFamily, "keel_events_replayed",
             "Records replayed into the store from journals of processes that stopped",
             w.replayed),
            (CounterMetricFamily, "keel_journal_errors",
             "Records the write-ahead journal could not append", w.journal_errors),
        ]
        return [kind(name, doc, value=value) for kind, name, doc, value in metrics]

    def collect(self) -> Iterable[Metric]:
        return self._families()
