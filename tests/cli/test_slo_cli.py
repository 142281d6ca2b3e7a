"""``keel slo [FEATURE] [--json]``: the table, the JSON, and the error paths."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from keel.cli import app
from keel.cli.common import console
from keel.types import Decision, Event
from tests.backends import store_at

runner = CliRunner()

CONFIG = """
providers:
  up: {type: openai, base_url: "http://127.0.0.1:9/v1"}
features:
  triage:
    output: {kind: label, labels: [billing, other]}
    versions:
      v1: {provider: up, model: fake-model}
    aliases: {champion: v1}
    slo: {latency_p95_ms: 300, error_rate: 0.01, review_rate: 0.3, window_days: 30}
  plain:
    output: {kind: label, labels: [a, b]}
    versions:
      v1: {provider: up, model: fake-model}
    aliases: {champion: v1}
"""


def event(i: int, decision: Decision, latency_ms: float = 100.0) -> Event:
    return Event(trace_id=f"{i:032x}", ts=time.time() - 60, feature="triage",
                 version=None if decision is Decision.ERROR else "v1", decision=decision,
                 confidence=0.9, latency_ms=latency_ms, timings_ms={}, input_tokens=1,
                 output_tokens=1, cost_usd=0.001, attempts=[], validations=[], input=None,
                 output=None, error_code="all_targets_failed" if decision is Decision.ERROR else None)


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setattr(console, "width", 220)
    for name in ("KEEL_CONFIG", "KEEL_DATABASE"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "keel.yaml"
    config.write_text(CONFIG)
    store = store_at(tmp_path / "keel.db")
    store.migrate()
    conn = store.connect()
    # 100 calls in the last minutes: 20 errors (burn 20x: page), 10 reviews
    store.write_events(conn, [event(i, Decision.ERROR if i < 20 else Decision.REVIEW if i < 30
                                    else Decision.ACCEPTED) for i in range(100)])
    conn.close()
    return {"config": str(config), "db": str(tmp_path / "keel.db")}


def run(paths: dict[str, str], *args: str) -> Any:
    return runner.invoke(app, ["slo", *args, "--config", paths["config"], "--db", paths["db"]])


def test_the_table(paths: dict[str, str]) -> None:
    result = run(paths)
    assert result.exit_code == 0, result.output
    out = result.output
    for text in ("triage", "latency_p95_ms", "error_rate", "review_rate", "burn 5m", "burn 6h",
                 "PAGE", "1.00%", "300.0 ms", "-1900%"):
        assert text in out, (text, out)
    assert "plain" not in out  # no SLOs, no rows


def test_json_is_the_apis_shape(paths: dict[str, str]) -> None:
    result = run(paths, "--json")
    assert result.exit_code == 0, result.output
    body = orjson.loads(result.output)
    (plain, triage) = body["features"]  # sorted by name
    assert plain == {"feature": "plain", "window_days": 30.0, "objectives": []}
    errors = {o["objective"]: o for o in triage["objectives"]}["error_rate"]
    assert (errors["calls"], errors["bad"], errors["page"]) == (100, 20, True)
    assert errors["burn_rates"]["1h"] == pytest.approx(20)
    one = orjson.loads(run(paths, "triage", "--json").output)
    assert one["feature"] == "triage" and len(one["objectives"]) == 3


def test_a_feature_without_slos_says_how_to_add_them(paths: dict[str, str]) -> None:
    result = run(paths, "plain")
    assert result.exit_code == 0
    assert "no SLOs set" in result.output and "slo:" in result.output


def test_unknown_feature_and_missing_store_fail(paths: dict[str, str], tmp_path: Path,
                                                backend: str) -> None:
    result = run(paths, "nope")
    assert result.exit_code == 2 and "no feature named 'nope'" in result.output
    if backend == "sqlite":  # a server database is always there
        result = runner.invoke(app, ["slo", "--config", paths["config"], "--db",
                                     str(tmp_path / "missing.db")])
        assert result.exit_code == 2 and "no event store" in result.output
    result = runner.invoke(app, ["slo", "--config", str(tmp_path / "none.yaml"), "--db", paths["db"]])
    assert result.exit_code == 2 and "file not found" in result.output
