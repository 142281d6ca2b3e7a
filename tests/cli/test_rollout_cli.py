"""``keel rollout``: status, start, pause, resume, promote, rollback, fed by CliRunner.

The registry and the gates sit behind the controller's seams; here they are a fake."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from keel.cli import rollout as rollout_cli
from keel.cli.common import console
from keel.control.live_metrics import live_metrics
from keel.control.rollout import RolloutController
from keel.spec import KeelSpec
from keel.store import Store
from keel.types import Decision, Event
from tests.backends import store_at
from tests.control.rollout_fakes import Clock, FakeRegistry, make_controller

runner = CliRunner()
cli = typer.Typer()
cli.add_typer(rollout_cli.app, name="rollout")

CONFIG = """
providers:
  up: {type: openai, base_url: "http://127.0.0.1:9/v1"}
features:
  triage:
    output: {kind: label, labels: [billing, other]}
    versions:
      v1: {provider: up, model: fake-model}
      v2: {provider: up, model: fake-model-2}
      v3: {provider: up, model: fake-model-3}
    aliases: {champion: v1}
    rollout: {steps: [0.01, 0.05, 0.25, 0.5, 1.0], min_calls: 5}
"""


def event(i: int, routed: str, decision: Decision = Decision.ACCEPTED) -> Event:
    return Event(trace_id=f"t{i}", ts=time.time(), feature="triage",
                 version=None if decision is Decision.ERROR else routed, decision=decision,
                 confidence=0.9, latency_ms=100.0 + i, timings_ms={}, input_tokens=1,
                 output_tokens=1, cost_usd=0.001, attempts=[], validations=[], input=None,
                 output=None, routed=routed)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setattr(console, "width", 200)
    config = tmp_path / "keel.yaml"
    config.write_text(CONFIG)
    db = tmp_path / "keel.db"
    store = store_at(db)
    store.migrate()
    conn = store.connect()
    store.write_events(conn, [event(i, "v1", Decision.ERROR if i % 10 == 0 else Decision.ACCEPTED)
                              for i in range(40)])
    conn.close()
    registry = FakeRegistry(gate_runs={})

    def wired(store: Store, spec: KeelSpec) -> RolloutController:
        return make_controller(store, registry, Clock(time.time() - 5), live_metrics,
                               spec.features["triage"].rollout)

    monkeypatch.setattr(rollout_cli, "controller_for", wired)
    return {"config": config, "db": db, "registry": registry, "store": store}


def run(env: dict[str, Any], *args: str) -> tuple[int, str]:
    result = runner.invoke(cli, ["rollout", *args, "--config", str(env["config"]),
                                 "--db", str(env["db"])])
    return result.exit_code, result.output


def assert_error(code: int, out: str, text: str) -> None:
    assert code == 2, out
    assert "error:" in out and text in out and "Traceback" not in out
    assert len(out.strip().splitlines()) <= 2  # one line (soft-wrapped at most once)


def test_a_rollout_from_the_command_line(env: dict[str, Any]) -> None:
    code, out = run(env, "status", "triage")
    assert code == 0 and "no rollout yet" in out

    assert_error(*run(env, "start", "triage", "v2"), "no passing eval")
    code, out = run(env, "start", "triage", "v2", "--force", "--steps", "0.05,0.5,1")
    assert code == 0, out
    assert "started: v2 takes 5% of traffic from v1" in out and "forced" in out
    assert env["registry"].aliases == {"champion": "v1", "canary": "v2"}
    assert_error(*run(env, "start", "triage", "v3", "--force"), "already has an active rollout")

    conn = env["store"].connect()
    env["store"].write_events(conn, [event(100 + i, "v2") for i in range(12)])
    conn.close()
    code, out = run(env, "status", "triage")
    assert code == 0, out
    for text in ("running", "step", "1 of 3 (5%, 50%, 100%)", "5% of traffic to v2",
                 "forced", "candidate v2", "champion v1", "error rate", "human-override rate",
                 "p95 latency", "transitions", "cli:"):
        assert text in out, text
    assert "0.00% (0)" in out  # the candidate's errors, in this step
    assert "100" in out  # the champion's p95 in ms

    code, out = run(env, "pause", "triage", "--reason", "lunch")
    assert code == 0 and "paused at 5%" in out
    assert_error(*run(env, "pause", "triage"), "is paused")
    code, out = run(env, "resume", "triage")
    assert code == 0 and "running again" in out
    assert_error(*run(env, "promote", "triage"), "no passing eval")
    code, out = run(env, "promote", "triage", "--force")
    assert code == 0 and "v2 is champion" in out
    assert env["registry"].aliases == {"champion": "v2"}
    assert_error(*run(env, "rollback", "triage"), "no active rollout")

    code, out = run(env, "start", "triage", "v3", "--force")
    assert code == 0, out
    code, out = run(env, "rollback", "triage", "--reason", "wrong prompt")
    assert code == 0 and "rolled back: wrong prompt" in out
    code, out = run(env, "status", "triage")
    assert code == 0 and "rolled_back" in out and "wrong prompt" in out


def test_errors_are_one_line(env: dict[str, Any], tmp_path: Path, backend: str) -> None:
    assert_error(*run(env, "start", "triage", "v2", "--force", "--steps", "a,b"), "--steps")
    assert_error(*run(env, "start", "triage", "v2", "--force", "--steps", "0.5,0.1"),
                 "increasing")
    assert_error(*run(env, "start", "nope", "v2", "--force"), "no feature 'nope'")
    assert_error(*run(env, "start", "triage", "v9", "--force"), "no version 'v9'")
    assert_error(*run(env, "pause", "triage"), "no active rollout")
    if backend == "sqlite":  # a server database is always there
        result = runner.invoke(cli, ["rollout", "status", "triage", "--config",
                                     str(env["config"]), "--db", str(tmp_path / "missing.db")])
        assert_error(result.exit_code, result.output, "no store at")
