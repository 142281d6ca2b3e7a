"""What an operator sees of a running Keel: Prometheus metrics (:mod:`.metrics`) and
OpenTelemetry traces (:mod:`.tracing`), both fed by ``Keel.observers`` from every
recorded event. SLOs are computed by the control plane (:mod:`keel.control.slo`) and
exported with the metrics. See docs/observability.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from keel.observability.metrics import Metrics

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from keel.gateway import Keel
    from keel.observability.tracing import Tracing

__all__ = ["Metrics", "Observability"]


class Observability:
    """The metrics and traces of one app, as its settings ask."""

    def __init__(self, keel: Keel) -> None:
        self.keel = keel
        self.metrics: Metrics | None = None
        self.tracing: Tracing | None = None

    @classmethod
    def attach(cls, keel: Keel) -> Observability:
        """Metrics unless ``settings.metrics`` is off; traces when an exporter is set
        (only then is opentelemetry imported)."""
        obs = cls(keel)
        if keel.settings.metrics:
            obs.metrics = Metrics(keel)
            keel.observers.append(obs.metrics.observe)
        if keel.settings.traces_exporters:
            from keel.observability.tracing import build_exporters

            obs.trace_to(build_exporters(keel.settings.traces_exporters))
        return obs

    def trace_to(self, exporters: Sequence[SpanExporter], *, synchronous: bool = False) -> Tracing:
        """Send every call's spans to ``exporters`` from now on (e.g. an
        ``InMemorySpanExporter`` in tests)."""
        from keel.observability.tracing import Tracing

        if self.tracing is not None:
            raise RuntimeError("tracing is already on for this app")
        self.tracing = Tracing(self.keel, exporters, synchronous=synchronous)
        self.keel.observers.append(self.tracing.observe)
        return self.tracing

    def close(self) -> None:
        """Export the spans still queued and shut the exporters down."""
        if self.tracing is not None:
            self.tracing.close()
            self.keel.observers.remove(self.tracing.observe)
            self.tracing = None
