"""The CLI as a user runs it: exit codes and messages, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from keel.cli import app
from keel.cli.common import console
from keel.testing import FakeUpstream

runner = CliRunner()

CONFIG = """
providers:
  up: {{type: openai, base_url: "{url}"}}
features:
  triage:
    output: {{kind: label, labels: [billing, other]}}
    versions: {{v1: {{provider: up, model: fake-model}}}}
    aliases: {{champion: v1}}
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(reply="billing") as up:
        yield up


@pytest.fixture
def config(tmp_path: Path, upstream: FakeUpstream) -> Path:
    path = tmp_path / "keel.yaml"
    path.write_text(CONFIG.format(url=upstream.base_url))
    return path


def test_check_ok_and_bad(config: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["check", str(config)])
    assert result.exit_code == 0 and "triage" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(config.read_text().replace("champion: v1", "champion: v2"))
    result = runner.invoke(app, ["check", str(bad)])
    assert result.exit_code == 2
    assert "alias 'champion' points at unknown version 'v2'" in result.output


def test_serve_with_a_bad_config_exits_nonzero_without_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "keel.yaml"
    bad.write_text("features:\n  f:\n    versions: {}\n    aliases: {champion: v1}\n")
    proc = subprocess.run([sys.executable, "-m", "keel", "serve", "--config", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"{bad}: features.f" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_call_then_events(config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console, "width", 200)
    db = tmp_path / "k.db"
    result = runner.invoke(app, ["call", "triage", '{"text": "charged twice"}',
                                 "--config", str(config), "--db", str(db)])
    assert result.exit_code == 0, result.output
    body = orjson.loads(result.output)
    assert body["output"] == {"label": "billing"} and body["decision"] == "accepted"
    result = runner.invoke(app, ["events", "--db", str(db)])
    assert result.exit_code == 0 and "accepted" in result.output and "1 most recent of 1" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["call", "triage", "{oops"], "INPUT is not valid JSON"),
        (["call", "triage", "[1]"], "INPUT must be a JSON object"),
        (["call", "nope", '{"text": "x"}'], "feature_not_found"),
        (["call", "triage", '{"text": ""}'], "empty_text"),
    ],
)
def test_call_errors(config: Path, tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, [*args, "--config", str(config), "--db", str(tmp_path / "k.db")])
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.sqlite_only  # a missing SQLite file; a server database is always there
def test_events_without_a_store(tmp_path: Path) -> None:
    result = runner.invoke(app, ["events", "--db", str(tmp_path / "none.db")])
    assert result.exit_code == 2 and "no event store" in result.output


BANKING77 = Path(__file__).resolve().parents[3] / "shared" / "data" / "banking77"


def test_eval_reports_accuracy_on_a_labelled_csv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console, "width", 200)
    repo = Path(__file__).resolve().parents[2]
    result = runner.invoke(app, ["eval", "intent", "--csv", str(BANKING77 / "test.csv"),
                                 "--limit", "40", "--config", str(repo / "keel.yaml")])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if "accuracy (all answers)" in x)
    accuracy = float(line.split()[-2])
    assert 0.4 < accuracy <= 1.0  # zero-shot on 77 intents: far above chance (1.3%)
    assert "examples" in result.output and "40" in result.output


def test_eval_names_a_missing_column(tmp_path: Path, config: Path) -> None:
    data = tmp_path / "d.csv"
    data.write_text("message,intent\nhello,other\n")
    result = runner.invoke(app, ["eval", "triage", "--csv", str(data), "--config", str(config)])
    assert result.exit_code == 2 and "no column(s) category, text" in result.output


def test_serve_refuses_a_public_address_without_keys(config: Path) -> None:
    result = runner.invoke(app, ["serve", "--config", str(config), "--host", "0.0.0.0"],
                           env={"KEEL_API_KEYS": ""})
    assert result.exit_code == 2 and "without API keys" in result.output
