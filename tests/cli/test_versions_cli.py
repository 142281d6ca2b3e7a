"""``keel versions``: list, show, register, alias, history and train, via CliRunner."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keel.cli import app
from keel.control.datasets import DatasetStore, Item
from keel.control.registry import Registry
from tests.backends import store_at
from tests.conftest import SHARED_DATA
from tests.control.test_registry import passing_run

runner = CliRunner()

CONFIG = """
providers:
  up: {type: openai, base_url: "http://127.0.0.1:9/v1"}
features:
  triage:
    description: Route support tickets.
    output: {kind: label, labels: [card_arrival, lost_or_stolen_card, exchange_rate]}
    versions:
      v1: {provider: up, model: fake-model}
      v2: {provider: up, model: fake-model-2}
    aliases: {champion: v1}
    gate: {dataset: golden@1}
"""


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    config = tmp_path / "keel.yaml"
    config.write_text(CONFIG)
    return config, tmp_path / "keel.db"


def run(paths: tuple[Path, Path], *args: str) -> tuple[int, str]:
    config, db = paths
    result = runner.invoke(app, [*args, "--config", str(config), "--db", str(db)])
    return result.exit_code, result.output


def test_list_show_and_history(paths: tuple[Path, Path]) -> None:
    code, out = run(paths, "versions", "list", "triage")
    assert code == 0, out
    assert "v1" in out and "champion" in out and "keel.yaml" in out
    code, out = run(paths, "versions", "show", "triage", "v1")
    assert code == 0
    assert "Intended use" in out and "Route support tickets." in out and "no eval runs yet" in out
    code, out = run(paths, "versions", "show", "triage", "v9")
    assert code == 2 and "no version 'v9'" in out
    code, out = run(paths, "versions", "list", "nope")
    assert code == 2 and "no feature 'nope'" in out


def test_register_and_move_aliases(paths: tuple[Path, Path], tmp_path: Path) -> None:
    spec = tmp_path / "v3.yaml"
    spec.write_text("provider: up\nmodel: fake-model-3\nprompt: 'Classify: {text}'\n")
    code, out = run(paths, "versions", "register", "triage", "v3", str(spec))
    assert code == 0 and "registered triage/v3 (#3" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("provider: ghost\nmodel: m\n")
    code, out = run(paths, "versions", "register", "triage", "v4", str(bad))
    assert code == 2 and "unknown provider 'ghost'" in out
    bad.write_text("model: [1, 2]\n")
    code, out = run(paths, "versions", "register", "triage", "v4", str(bad))
    assert code == 2 and "model" in out
    code, out = run(paths, "versions", "register", "triage", "v4", str(tmp_path / "missing.yaml"))
    assert code == 2 and "file not found" in out

    code, out = run(paths, "versions", "alias", "triage", "canary", "v3")
    assert code == 0 and "canary - -> v3" in out
    code, out = run(paths, "versions", "alias", "triage", "champion", "v3")
    assert code == 2 and "gate" in out
    store = store_at(paths[1])
    conn = store.connect()
    with conn:
        conn.execute("INSERT INTO dataset_versions VALUES ('golden', 1, 'sha256:x', 0, '{}', NULL,"
                     " NULL, 'test', 0)")
    conn.close()
    run_id = passing_run(store, "triage", "v3")
    code, out = run(paths, "versions", "alias", "triage", "champion", "v3")
    assert code == 0 and f"(eval run {run_id})" in out
    code, out = run(paths, "versions", "alias", "triage", "champion", "v1", "--force", "--reason", "revert")
    assert code == 0 and "(forced)" in out
    code, out = run(paths, "versions", "history", "triage")
    assert code == 0 and "revert" in out and "yes" in out
    assert Registry(store).aliases("triage") == {"champion": "v1", "canary": "v3"}


def test_train_from_the_cli(paths: tuple[Path, Path]) -> None:
    labels = ["card_arrival", "lost_or_stolen_card", "exchange_rate"]
    items = []
    with (SHARED_DATA / "train.csv").open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["category"] in labels and len(items) < 60:
                items.append(Item.of({"text": row["text"]}, {"label": row["category"]}, split="train"))
    store = store_at(paths[1])
    store.migrate()
    DatasetStore(store).commit("triage-data", items, actor="t")
    code, out = run(paths, "versions", "train", "triage", "--dataset", "triage-data@1",
                    "--name", "head-1")
    assert code == 0, out
    assert "registered triage/head-1 (#3) from triage-data@1" in out
    assert "keel eval triage --version head-1 --gate" in out
    record = Registry(store).get("triage", "head-1")
    assert record.source == "trainer:local-head" and record.artifact_sha256
    code, out = run(paths, "versions", "train", "triage", "--dataset", "nothing@1")
    assert code == 2 and "nothing" in out
