"""``keel drift FEATURE``: the table, JSON, the alert and its exit code, every error."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from keel.cli import app
from keel.cli.common import console
from keel.control import drift as drift_module
from keel.providers.local.embedder import ModelFilesMissing
from tests.backends import store_at
from tests.control.drift_kit import HOUR, T0, Shape, traffic

runner = CliRunner()
CONFIG = """
providers:
  up: {type: openai, base_url: "http://127.0.0.1:9/v1"}
features:
  f:
    output: {kind: label, labels: [a, b, c]}
    versions:
      v1: {provider: up, model: fake-model}
    aliases: {champion: v1}
"""
BASE, DRIFT = Shape(), Shape(words=16, weights=(0.2, 0.3, 0.5))


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setattr(console, "width", 250)
    (tmp_path / "keel.yaml").write_text(CONFIG)
    traffic(store_at(tmp_path / "keel.db"), [BASE, BASE, DRIFT, DRIFT])
    return ["--config", str(tmp_path / "keel.yaml"), "--db", str(tmp_path / "keel.db")]


def drift(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["drift", *args])
    return result.exit_code, result.output


def test_the_table_and_the_alert(paths: list[str]) -> None:
    code, out = drift("f", "--window", "1h", *paths)
    assert code == 0, out
    assert "drift of f: 4 window(s) of 1h against the first window" in out
    assert "2023-11-14 22:00Z" in out and "reference" in out
    assert "text_length" in out and "label" in out and "▲" in out
    assert "ALERT: drift in two windows in a row from 2023-11-15 00:00Z (ongoing)" in out
    assert "not compared: language (no language check ran); pii (no PII check ran)" in out
    assert "read 1,200 events" in out


def test_fail_on_alert(paths: list[str]) -> None:
    assert drift("f", "--window", "1h", "--fail-on-alert", *paths)[0] == 1
    code, out = drift("f", "--window", "1h", "--until", str(T0 + 3 * HOUR), "--fail-on-alert", *paths)
    assert code == 0, out
    assert "no alert: 1 drifted window(s), never two in a row" in out


def test_json_and_options(paths: list[str]) -> None:
    code, out = drift("f", "--windows", "2", "--columns", "text_length,label", "--json", *paths)
    assert code == 0, out
    data = orjson.loads(out)
    assert [c["name"] for c in data["columns"]] == ["text_length", "label"]
    assert len(data["windows"]) == 2 and data["windows"][1]["drifted"]
    code, out = drift("f", "-w", "3600", "--reference-start", "2023-11-15T00:00Z",
                      "--reference-end", "2023-11-15T02:00Z", "--since", "2023-11-14T22:00",
                      "--json", *paths)
    assert code == 0, out
    data = orjson.loads(out)
    assert data["reference"]["kind"] == "window" and data["reference"]["n"] == 600
    assert [w["drifted"] for w in data["windows"]] == [True, True, False, False]


def test_no_drift_is_said_plainly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console, "width", 250)
    (tmp_path / "keel.yaml").write_text(CONFIG)
    traffic(store_at(tmp_path / "keel.db"), [BASE, BASE], seed=2)
    code, out = drift("f", "-w", "1h", "--config", str(tmp_path / "keel.yaml"),
                      "--db", str(tmp_path / "keel.db"))
    assert code == 0 and "no alert: no window drifted" in out


def test_embeddings_without_the_model(paths: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> None:
        raise ModelFilesMissing("the local model is not installed")

    monkeypatch.setattr(drift_module, "local_embed", missing)
    code, out = drift("f", "-w", "1h", "--columns", "label", "--embeddings", *paths)
    assert code == 0 and "embedding (the local model is not installed)" in out


@pytest.mark.parametrize(("args", "message"), [
    (["nope"], "no feature 'nope'"),
    (["f", "--window", "soon"], "bad --window 'soon'"),
    (["f", "--since", "last tuesday"], "bad --since 'last tuesday'"),
    (["f", "--window", "1h", "--windows", "3"], "not both"),
    (["f", "--reference", "yesterday"], "bad reference 'yesterday'"),
    (["f", "--reference-start", "0"], "needs both reference_start and reference_end"),
    (["f", "--reference", "champion"], "has no finished eval run"),
    (["f", "--reference", "dataset:golden"], "no dataset 'golden'"),
    (["f", "--columns", "colour"], "unknown column 'colour'"),
    (["f", "--window", "1s", "--since", "0"], "at most 1000"),
])
def test_errors_exit_2(paths: list[str], args: list[str], message: str) -> None:
    code, out = drift(*args, *paths)
    assert code == 2, out
    assert message in out


@pytest.mark.sqlite_only  # a missing SQLite file; a server database is always there
def test_no_store(tmp_path: Path) -> None:
    (tmp_path / "keel.yaml").write_text(CONFIG)
    code, out = drift("f", "--config", str(tmp_path / "keel.yaml"), "--db", str(tmp_path / "no.db"))
    assert code == 2 and "no store at" in out
