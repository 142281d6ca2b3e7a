"""OpenTelemetry traces of every call, when an exporter is configured (``otlp`` or
``console``: ``settings.traces_exporters``). Without one this module imports nothing
from opentelemetry, and the core install does not need it (``pip install 'keel[otel]'``).

A trace is built *after* the call, from its recorded :class:`~keel.types.Event`, in a
worker thread: the observer on the event loop only queues the event (~1 µs). Its trace
id is the event's ``trace_id`` (32 hex digits, W3C width), so Keel's trace ids and the
tracing backend's are the same. Spans::

    keel.call {feature}                 INTERNAL  keel.decision, keel.version, ...
    ├── keel.checks / keel.guards / keel.route
    ├── keel.invoke
    │   ├── chat {model}                CLIENT    one per provider attempt (GenAI conventions)
    │   └── chat {model}                          (a retry, a fallback target, a reask)
    ├── keel.validate / keel.decide
    └── keel.hold                                 (held review: waiting for a verdict)

Times are reconstructed: the call ends at ``event.ts`` and began ``latency_ms`` before;
the stages ran in the order above, so each starts where the previous ended (their
durations are the event's ``timings_ms``). Keel times stages by their sum, so when a
fallback interleaves invoke and validate, each stage span shows its total time as one
block. Attempts are laid end to end from the start of ``keel.invoke`` (retry back-off is
not recorded, so it shows as a gap at the end). A streamed call has no ``invoke`` timing:
its ``keel.invoke`` span is the time not spent in any other stage, and the time to the
first token is the call span's ``keel.first_token_ms``. The call's token usage (Keel
records it per call) is on the span of the attempt that answered.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from keel.errors import ConfigError
from keel.types import Decision, Event

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

    from keel.gateway import Keel

log = logging.getLogger("keel.observability")

STAGES = ("checks", "guards", "route", "invoke", "validate", "decide", "hold")
MAX_PENDING = 10_000  # events queued for the worker; past that new ones are dropped


def otel_trace_id(trace_id: str) -> int:
    """Keel's trace id as OpenTelemetry's 128-bit one: the same number when it is 32 hex
    digits (Keel's own always are), else a stable hash of it."""
    if len(trace_id) == 32:
        try:
            value = int(trace_id, 16)
        except ValueError:
            pass
        else:
            if value:
                return value
    return int.from_bytes(hashlib.blake2b(trace_id.encode(), digest_size=16).digest(), "big") or 1


def build_exporters(names: Sequence[str]) -> list[SpanExporter]:
    """``otlp`` (OTLP over HTTP/protobuf; endpoint, headers and so on from the standard
    ``OTEL_EXPORTER_OTLP_*`` variables) and ``console`` (spans printed to stdout)."""
    try:
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter
    except ImportError:
        raise ConfigError("traces need OpenTelemetry: pip install 'keel[otel]'") from None
    exporters: list[SpanExporter] = []
    for name in names:
        if name == "console":
            exporters.append(ConsoleSpanExporter(out=sys.stdout))  # today's stdout
        elif name == "otlp":
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            except ImportError:
                raise ConfigError("the otlp trace exporter needs opentelemetry-exporter-otlp-"
                                  "proto-http: pip install 'keel[otel]'") from None
            exporters.append(OTLPSpanExporter())
        else:
            raise ConfigError(f"traces exporter '{name}' is not supported (use otlp or console)")
    return exporters


class Tracing:
    """Spans for every recorded call, sent to ``exporters``. :meth:`observe` is the
    ``Keel.observers`` hook. ``synchronous``: build and export each call's spans inside
    :meth:`observe` (tests; it costs ~0.3 ms a call on the event loop)."""

    def __init__(self, keel: Keel, exporters: Sequence[SpanExporter], *,
                 synchronous: bool = False, max_pending: int = MAX_PENDING) -> None:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        import keel as keel_package

        self.keel = keel
        self.synchronous = synchronous
        self.max_pending = max_pending
        self.dropped = 0  # events not traced: the queue was full
        self.failed = 0  # events whose spans could not be built
        self._ids = _id_generator()
        self.provider: TracerProvider = TracerProvider(resource=_resource(), id_generator=self._ids)
        for exporter in exporters:
            self.provider.add_span_processor(
                SimpleSpanProcessor(exporter) if synchronous else BatchSpanProcessor(exporter))
        self.tracer: Tracer = self.provider.get_tracer("keel", keel_package.__version__)
        self._queue: queue.SimpleQueue[Event | threading.Event | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # --- the hook -------------------------------------------------------------------

    def observe(self, event: Event) -> None:
        if self.synchronous:
            self._trace(event)
            return
        if self._queue.qsize() >= self.max_pending:
            self.dropped += 1
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="keel-traces", daemon=True)
            self._thread.start()
        self._queue.put(event)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued event is traced and exported."""
        if self._thread is not None and self._thread.is_alive():
            done = threading.Event()
            self._queue.put(done)
            if not done.wait(timeout):
                return False
        return bool(self.provider.force_flush(int(timeout * 1000)))

    def close(self) -> None:
        """Trace what is queued, stop the worker, flush and shut the exporters down."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
            self._thread = None
        self.provider.shutdown()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            self._trace(item)

    # --- building spans -------------------------------------------------------------

    def _trace(self, event: Event) -> None:
        try:
            with self._lock:  # one trace at a time: the id generator holds its trace id
                self._build(event)
        except Exception:
            self.failed += 1
            if self.failed == 1:
                log.exception("traces: could not build the spans of a call (the rest go on)")

    def _build(self, event: Event) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        tracer = self.tracer
        end = int(event.ts * 1e9)
        start = end - int(event.latency_ms * 1e6)
        self._ids.next_trace_id = otel_trace_id(event.trace_id)
        try:
            root = tracer.start_span(f"keel.call {event.feature}", kind=SpanKind.INTERNAL,
                                     attributes=_call_attributes(event), start_time=start)
        finally:
            self._ids.next_trace_id = None
        if event.decision is Decision.ERROR:
            root.set_status(Status(StatusCode.ERROR, event.error_code or "error"))
        context = trace.set_span_in_context(root)
        timings = dict(event.timings_ms)
        if "invoke" not in timings and event.attempts:  # a stream: the rest is the model's
            spent = sum(timings.get(s, 0.0) for s in STAGES)
            timings["invoke"] = max(0.0, event.latency_ms - spent)
        cursor = start
        for stage in STAGES:
            ms = timings.get(stage)
            if ms is None:
                continue
            stage_end = min(cursor + int(ms * 1e6), end)
            span = tracer.start_span(f"keel.{stage}", context=context, kind=SpanKind.INTERNAL,
                                     attributes={"keel.stage": stage}, start_time=cursor)
            if stage == "invoke":
                self._attempts(event, span, cursor, stage_end)
            elif stage == "validate":
                failed = [v.validator for v in event.validations if not v.passed]
                if failed:
                    span.set_attribute("keel.validations.failed", failed)
            span.end(end_time=stage_end)
            cursor = stage_end
        root.end(end_time=end)

    def _attempts(self, event: Event, parent: Span, start: int, end: int) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        context = trace.set_span_in_context(parent)
        feature = self.keel.features.get(event.feature)
        answered = _answering(event)
        cursor = start
        for i, attempt in enumerate(event.attempts):
            target = feature.targets.get(attempt.version) if feature is not None else None
            model = target.template.model if target is not None else attempt.version
            kind = target.template.output_kind if target is not None else "chat"
            provider = target.provider_type if target is not None else attempt.provider
            operation = "embeddings" if kind == "embedding" else "chat"
            attributes: dict[str, Any] = {
                "gen_ai.operation.name": operation,
                "gen_ai.provider.name": provider,
                "gen_ai.system": provider,  # the name before semantic conventions 1.37
                "gen_ai.request.model": model,
                "keel.provider": attempt.provider,
                "keel.version": attempt.version,
                "keel.retry": attempt.retry,
            }
            if attempt.rejected_by:
                attributes["keel.rejected_by"] = attempt.rejected_by
            if i == answered:
                attributes["gen_ai.usage.input_tokens"] = event.input_tokens
                attributes["gen_ai.usage.output_tokens"] = event.output_tokens
            if not attempt.ok:
                attributes["error.type"] = attempt.error_code or "error"
            attempt_end = min(cursor + int(attempt.latency_ms * 1e6), end)
            span = self.tracer.start_span(
                f"{operation} {model}", context=context, kind=SpanKind.CLIENT,
                attributes=attributes, start_time=cursor)
            if not attempt.ok:
                span.set_status(Status(StatusCode.ERROR, attempt.error or attempt.error_code))
            span.end(end_time=attempt_end)
            cursor = attempt_end


def _answering(event: Event) -> int | None:
    """The index of the attempt whose answer the call returned (the last good one)."""
    for i in range(len(event.attempts) - 1, -1, -1):
        attempt = event.attempts[i]
        if attempt.ok and attempt.version == event.version:
            return i
    return None


def _call_attributes(event: Event) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "keel.feature": event.feature,
        "keel.decision": str(event.decision),
        "keel.latency_ms": event.latency_ms,
        "keel.input_tokens": event.input_tokens,
        "keel.output_tokens": event.output_tokens,
        "keel.attempts": len(event.attempts),
    }
    optional = {
        "keel.version": event.version, "keel.routed": event.routed,
        "keel.confidence": event.confidence, "keel.cost_usd": event.cost_usd,
        "keel.reason": event.reason, "keel.error_code": event.error_code,
        "keel.first_token_ms": event.timings_ms.get("first_token"),
    }
    attributes.update({k: v for k, v in optional.items() if v is not None})
    return attributes


def _resource() -> Any:
    """OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES apply; the service is "keel" else."""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    resource = Resource.create({})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "keel"}))
    return resource


def _id_generator() -> Any:
    """Random span ids; the root span's trace id is the call's (set just before it)."""
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class KeelIds(RandomIdGenerator):
        next_trace_id: int | None = None

        def generate_trace_id(self) -> int:
            return self.next_trace_id or super().generate_trace_id()

    return KeelIds()
