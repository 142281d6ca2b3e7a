"""OpenTelemetry traces: one span per call, one per stage, one per provider attempt
(GenAI semantic conventions), Keel's trace id as the trace's; nothing imported when off."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from keel.errors import ConfigError, ProviderTimeout, ProviderUnavailable
from keel.gateway import Keel
from keel.observability.tracing import otel_trace_id
from keel.settings import Settings
from keel.types import Decision, Delta, Outcome
from tests.conftest import basic_feature, scripted, settings_in, spec_with

PRICED = {"v1": {"provider": "p1", "model": "m1", "price": {"input": 1.0, "output": 2.0}},
          "v2": {"provider": "p2", "model": "m2"}}


@pytest.fixture
async def traced(tmp_path: Path) -> AsyncIterator[tuple[Keel, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    async with Keel(spec_with(basic_feature(versions=PRICED)), settings_in(tmp_path)) as keel:
        keel.observability.trace_to([exporter], synchronous=True)
        yield keel, exporter


def by_name(spans: tuple[ReadableSpan, ...] | list[ReadableSpan]) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        out.setdefault(span.name, []).append(span)
    return out


def one_trace(exporter: InMemorySpanExporter, trace_id: str) -> list[ReadableSpan]:
    wanted = int(trace_id, 16)
    spans = [s for s in exporter.get_finished_spans() if s.context is not None
             and s.context.trace_id == wanted]
    assert spans, f"no spans for trace {trace_id}"
    return spans


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


async def test_one_span_per_stage_under_the_call_with_keels_trace_id(
        traced: tuple[Keel, InMemorySpanExporter]) -> None:
    keel, exporter = traced
    outcome = await keel.call("f", {"text": "hi"})
    spans = one_trace(exporter, outcome.trace_id)
    names = by_name(spans)
    (root,) = names["keel.call f"]
    assert root.parent is None and root.kind is SpanKind.INTERNAL
    assert root.context is not None and f"{root.context.trace_id:032x}" == outcome.trace_id
    stages = ["keel.checks", "keel.route", "keel.invoke", "keel.validate", "keel.decide"]
    assert sorted(names) == sorted(["keel.call f", *stages, "chat m1"])
    for name in stages:
        (span,) = names[name]
        assert parent_of(span) == span_id(root)
        assert span.attributes is not None and span.attributes["keel.stage"] == name[5:]
    # stages lie end to end inside the call, in pipeline order
    ordered = [names[n][0] for n in stages]
    assert root.start_time is not None and root.end_time is not None
    assert ordered[0].start_time == root.start_time
    for before, after in itertools.pairwise(ordered):
        assert before.end_time == after.start_time
    assert all(s.end_time is not None and s.end_time <= root.end_time for s in ordered)
    assert keel.writer.flush()
    (event,) = keel.store.recent_events(1)
    assert (root.end_time - root.start_time) / 1e6 == pytest.approx(event["latency_ms"], abs=0.001)

    assert root.attributes is not None
    assert root.attributes["keel.decision"] == "accepted"
    assert root.attributes["keel.version"] == "v1"
    assert root.attributes["keel.confidence"] == 0.9
    assert root.attributes["keel.cost_usd"] == outcome.cost_usd == pytest.approx(14e-6)
    assert root.status.status_code is StatusCode.UNSET


async def test_attempt_spans_follow_the_genai_conventions(
        traced: tuple[Keel, InMemorySpanExporter]) -> None:
    keel, exporter = traced
    scripted(keel, "p1").script = [ProviderTimeout("slow"), ProviderUnavailable("down")]
    outcome = await keel.call("f", {"text": "hi"})
    assert outcome.decision is Decision.FALLBACK
    names = by_name(one_trace(exporter, outcome.trace_id))
    (invoke,) = names["keel.invoke"]
    failed, ok = names["chat m1"], names["chat m2"]
    assert len(failed) == 2 and len(ok) == 1
    for span in (*failed, *ok):
        assert span.kind is SpanKind.CLIENT
        assert parent_of(span) == span_id(invoke)
        assert span.start_time is not None and invoke.start_time is not None
        assert span.start_time >= invoke.start_time
    first, second = sorted(failed, key=lambda s: s.start_time or 0)
    assert first.attributes is not None and second.attributes is not None
    assert first.attributes["error.type"] == "provider_timeout"
    assert second.attributes["error.type"] == "provider_unavailable"
    assert first.status.status_code is StatusCode.ERROR
    assert first.status.description == "slow"
    assert "gen_ai.usage.input_tokens" not in first.attributes
    (answer,) = ok
    assert answer.attributes == {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "scripted",
        "gen_ai.system": "scripted", "gen_ai.request.model": "m2",
        "gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 2,
        "keel.provider": "p2", "keel.version": "v2", "keel.retry": 0,
    }
    assert answer.status.status_code is StatusCode.UNSET


async def test_a_failed_call_is_an_error_span(traced: tuple[Keel, InMemorySpanExporter]) -> None:
    keel, exporter = traced
    scripted(keel, "p1").script = [ProviderUnavailable("down")] * 2
    scripted(keel, "p2").script = [ProviderUnavailable("down")] * 2
    outcome = await keel.call("f", {"text": "hi"})
    assert outcome.decision is Decision.ERROR
    (root,) = by_name(one_trace(exporter, outcome.trace_id))["keel.call f"]
    assert root.status.status_code is StatusCode.ERROR
    assert root.status.description == "all_targets_failed"
    assert root.attributes is not None and "keel.version" not in root.attributes


async def test_validation_failures_are_on_the_validate_span(
        traced: tuple[Keel, InMemorySpanExporter]) -> None:
    keel, exporter = traced
    from keel.types import Completion, Usage

    scripted(keel, "p1").script = [Completion(output={"label": "zzz"}, confidence=0.9,
                                              usage=Usage(1, 1))]
    outcome = await keel.call("f", {"text": "hi"})
    (validate,) = by_name(one_trace(exporter, outcome.trace_id))["keel.validate"]
    assert validate.attributes is not None
    assert list(validate.attributes["keel.validations.failed"]) == ["allowed_labels"]  # type: ignore[arg-type]


async def test_spans_are_built_off_the_event_loop_and_flushed_on_close(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    keel = Keel(spec_with(basic_feature()), settings_in(tmp_path))
    async with keel:
        tracing = keel.observability.trace_to([exporter])
        outcomes = [await keel.call("f", {"text": f"n{i}"}) for i in range(5)]
        assert tracing.flush()
        assert len(exporter.get_finished_spans()) == 5 * 7
    # closing Keel stopped the worker and shut the exporter down
    assert keel.observability.tracing is None
    roots = [s for s in exporter.get_finished_spans() if s.parent is None]
    assert {f"{s.context.trace_id:032x}" for s in roots} == {o.trace_id for o in outcomes}  # type: ignore[union-attr]


async def test_a_streamed_call_gets_a_reconstructed_invoke_span(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    feature = basic_feature(output={"kind": "chat"}, validators=[], policy={})
    async with Keel(spec_with(feature), settings_in(tmp_path)) as keel:
        keel.observability.trace_to([exporter], synchronous=True)
        scripted(keel, "p1").streams = [[Delta(text="hel"), 0.01, Delta(text="lo"),
                                          Delta(finish_reason="stop")]]
        items = [i async for i in keel.stream("f", {"messages": [{"role": "user", "content": "x"}]})]
    outcome = items[-1]
    assert isinstance(outcome, Outcome)
    names = by_name(one_trace(exporter, outcome.trace_id))
    (root,), (invoke,) = names["keel.call f"], names["keel.invoke"]
    (attempt,) = names["chat m1"]
    assert parent_of(attempt) == span_id(invoke)
    assert invoke.end_time is not None and invoke.start_time is not None
    assert (invoke.end_time - invoke.start_time) / 1e6 >= 10  # the stream's 10 ms pause
    assert root.attributes is not None and root.attributes["keel.first_token_ms"] > 0


def test_keels_trace_ids_are_otels() -> None:
    assert otel_trace_id("0af7651916cd43dd8448eb211c80319c") == 0x0af7651916cd43dd8448eb211c80319c
    other = otel_trace_id("my-request-42")  # a caller's own id: hashed, stable, not zero
    assert other == otel_trace_id("my-request-42") and 0 < other < 2**128
    assert otel_trace_id("0" * 32) != 0


@pytest.mark.parametrize(("env", "expected"), [
    ({}, ()),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ("otlp",)),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, ("otlp",)),
    ({"OTEL_TRACES_EXPORTER": "console"}, ("console",)),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, ()),
    ({"KEEL_TRACES_EXPORTER": "otlp,console", "OTEL_TRACES_EXPORTER": "none"}, ("otlp", "console")),
])
def test_exporters_from_the_environment(env: dict[str, str], expected: tuple[str, ...]) -> None:
    assert Settings.from_env(env).traces_exporters == expected


def test_an_unknown_exporter_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="zipkin"):
        Settings.from_env({"OTEL_TRACES_EXPORTER": "zipkin"})


async def test_configured_exporters_are_attached(tmp_path: Path,
                                                 capfd: pytest.CaptureFixture[str]) -> None:
    settings = replace(settings_in(tmp_path), traces_exporters=("console",))
    async with Keel(spec_with(basic_feature()), settings) as keel:
        assert keel.observability.tracing is not None
        outcome = await keel.call("f", {"text": "hi"})
    printed = capfd.readouterr().out
    assert '"name": "keel.call f"' in printed and outcome.trace_id in printed


def run_python(code: str, env: dict[str, str] | None = None) -> Any:
    import os

    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                            text=True, cwd=Path(__file__).parents[2], timeout=120,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


ONE_CALL = """
    import asyncio, json, sys, tempfile
    from pathlib import Path
    from keel.gateway import Keel
    from keel.settings import Settings
    from tests.conftest import basic_feature, settings_in, spec_with

    async def main():
        settings = Settings.from_env(None, database=Path(tempfile.mkdtemp()) / "k.db",
                                     extra_provider_types=settings_in(Path(".")).extra_provider_types)
        async with Keel(spec_with(basic_feature()), settings) as keel:
            if SERVER:
                from keel.server import create_app
                create_app(keel)
            await keel.call("f", {"text": "hi"})
            return keel.observability.tracing is not None

    traced = asyncio.run(main())
    otel = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
    sdk = [m for m in otel if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter"))]
    print(json.dumps([traced, "keel.observability.tracing" in sys.modules, otel, sdk]))
"""
NO_TRACES = {"OTEL_EXPORTER_OTLP_ENDPOINT": "", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "",
             "OTEL_TRACES_EXPORTER": "", "KEEL_TRACES_EXPORTER": ""}


def test_without_an_exporter_opentelemetry_is_never_imported() -> None:
    traced, module, otel, _ = run_python("SERVER = False\n" + textwrap.dedent(ONE_CALL), NO_TRACES)
    assert (traced, module, otel) == (False, False, [])
    # FastAPI itself imports opentelemetry's API (its own telemetry hooks); Keel adds
    # neither the SDK nor an exporter
    traced, module, _, sdk = run_python("SERVER = True\n" + textwrap.dedent(ONE_CALL), NO_TRACES)
    assert (traced, module, sdk) == (False, False, [])


def test_with_an_exporter_the_sdk_is_loaded() -> None:
    env = {**NO_TRACES, "KEEL_TRACES_EXPORTER": "console"}
    traced, module, _, sdk = run_python("SERVER = False\n" + textwrap.dedent(ONE_CALL), env)
    assert traced is True and module is True and "opentelemetry.sdk.trace" in sdk
