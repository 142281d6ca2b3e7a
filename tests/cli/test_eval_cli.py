"""``keel eval`` on dataset versions, ``--gate`` exit codes for CI, ``--resume``, ``--json``
and ``keel eval-runs``, through typer's CliRunner against a fake OpenAI upstream."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from keel.cli import app
from keel.cli.common import console
from keel.control.datasets import DatasetStore, Item
from keel.control.evaluation import get_run, list_runs
from keel.testing import FakeUpstream
from tests.backends import store_at

runner = CliRunner()
LABELS = ["a", "b", "c"]
N = 60
ROWS = [(f"t{i}", LABELS[i % 3]) for i in range(N)]


def answers(wrong: set[int]) -> dict[str, str]:
    return {text: LABELS[(i + 1) % 3] if i in wrong else label
            for i, (text, label) in enumerate(ROWS)}


# by model: "good" and "twin" answer alike (90% right); "bad" is 44/60 right
TABLES = {"good": answers(set(range(0, N, 10))), "twin": answers(set(range(0, N, 10))),
          "bad": answers(set(range(0, N, 10)) | set(range(3, N, 6)))}

CONFIG = """
providers:
  up: {{type: openai, base_url: "{url}", options: {{}}}}
features:
  triage:
    output: {{kind: label, labels: [a, b, c]}}
    versions:
      v1: {{provider: up, model: good, prompt: "{{text}}"}}
      v2: {{provider: up, model: bad, prompt: "{{text}}"}}
      v3: {{provider: up, model: twin, prompt: "{{text}}"}}
    aliases: {{champion: v1}}
    gate:
      dataset: {dataset}
      floors: {{accuracy: 0.5}}
      # both versions answer from one fake server in microseconds: a latency ratio
      # between them would be noise (the guardrail is tested in tests/control/test_gates.py)
      max_latency_ratio: null
"""


def reply(body: dict[str, Any]) -> str:
    text = body["messages"][-1]["content"]
    return TABLES[body["model"]].get(text, "a")


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(reply=reply, models=("good", "bad", "twin")) as up:
        yield up


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "keel.db"
    store = store_at(path)
    store.migrate()
    DatasetStore(store).commit("golden", [Item.of({"text": t}, {"label": label}, split="eval")
                                          for t, label in ROWS], actor="test")
    return path


def write_config(tmp_path: Path, upstream: FakeUpstream, dataset: str = "golden@1") -> Path:
    path = tmp_path / "keel.yaml"
    path.write_text(CONFIG.format(url=upstream.base_url, dataset=dataset))
    return path


@pytest.fixture
def config(tmp_path: Path, upstream: FakeUpstream) -> Path:
    return write_config(tmp_path, upstream)


@pytest.fixture(autouse=True)
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console, "width", 200)


def keel_eval(config: Path, db: Path, *args: str) -> Any:
    return runner.invoke(app, ["eval", "triage", *args, "--config", str(config), "--db", str(db)])


def test_an_eval_run_on_a_dataset_version(config: Path, db: Path) -> None:
    result = keel_eval(config, db, "--dataset", "golden@1", "--actor", "ci")
    assert result.exit_code == 0, result.output
    (run,) = list_runs(store_at(db), "triage")
    assert (run.version, run.dataset_ref, run.status, run.done, run.actor) == ("v1", "golden@1", "done", N, "ci")
    assert run.metrics is not None and run.metrics["accuracy"] == pytest.approx(0.9)
    assert f"eval run {run.id}: triage v1 on golden@1 (done)" in result.output
    assert "accuracy" in result.output and "0.9000" in result.output


def test_gate_exit_codes_pass_then_fail(config: Path, db: Path) -> None:
    passed = keel_eval(config, db, "--version", "v3", "--gate")
    assert passed.exit_code == 0, passed.output
    assert "gate PASSED" in passed.output and "non-inferiority accuracy" in passed.output
    store = store_at(db)
    champion_runs = list_runs(store, "triage", "v1")
    assert len(champion_runs) == 1  # the champion was evaluated on the same dataset version

    failed = keel_eval(config, db, "--version", "v2", "--gate")
    assert failed.exit_code == 1, failed.output
    assert "gate FAILED" in failed.output and "FAIL" in failed.output
    assert len(list_runs(store, "triage", "v1")) == 1  # its run there was reused
    (bad,) = list_runs(store, "triage", "v2")
    assert bad.passed is False and bad.gate is not None
    assert bad.gate["champion_run"] == champion_runs[0].id


def test_gate_of_the_champion_itself(config: Path, db: Path) -> None:
    result = keel_eval(config, db, "--gate")
    assert result.exit_code == 0, result.output
    assert "the candidate is the champion" in result.output
    strict = config.read_text().replace("accuracy: 0.5", "accuracy: 0.95")
    config.write_text(strict)
    result = keel_eval(config, db, "--gate")
    assert result.exit_code == 1 and "floor accuracy" in result.output


def test_gate_json_for_machines(config: Path, db: Path) -> None:
    result = keel_eval(config, db, "--version", "v2", "--gate", "--json")
    assert result.exit_code == 1
    data = orjson.loads(result.stdout)
    assert data["run"]["version"] == "v2" and data["champion_run"]["version"] == "v1"
    assert data["gate"]["passed"] is False
    checks = {c["name"]: c for c in data["gate"]["checks"]}
    assert checks["floor accuracy"]["passed"] is True
    assert checks["non-inferiority accuracy"]["passed"] is False
    assert checks["non-inferiority accuracy"]["value"] < -0.1
    assert data["run"]["metrics"]["accuracy"] == pytest.approx(44 / 60)


@pytest.mark.parametrize(("args", "message"), [
    (["--dataset", "nope@1"], "nope"),
    (["--dataset", "golden@7"], "golden"),
    (["--dataset", "bad name!"], "bad dataset reference"),
    (["--version", "v9", "--gate"], "no version 'v9' loaded"),
    (["--scorer", "bleu"], "unknown scorer 'bleu'"),
    (["--split", "train"], "no split 'train'"),
    (["--resume", "0123456789ab"], "no eval run '0123456789ab'"),
    (["--csv", "x.csv", "--gate"], "--csv cannot be combined with --gate"),
    (["--limit", "5"], "--limit applies to --csv only"),
])
def test_usage_and_config_errors_exit_2(config: Path, db: Path, args: list[str],
                                        message: str) -> None:
    result = keel_eval(config, db, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_no_gate_dataset_pinned_exits_2(tmp_path: Path, upstream: FakeUpstream, db: Path) -> None:
    config = write_config(tmp_path, upstream, dataset="golden")
    result = keel_eval(config, db, "--gate")
    assert result.exit_code == 2
    assert "pin one: keel data pin triage golden@1" in result.output
    unset = tmp_path / "unset.yaml"
    unset.write_text(config.read_text().replace("dataset: golden", "dataset: null"))
    result = keel_eval(unset, db)
    assert result.exit_code == 2 and "set gate.dataset in keel.yaml" in result.output
    DatasetStore(store_at(db)).pin("triage", "golden", 1, actor="t")
    assert keel_eval(config, db, "--gate").exit_code == 0
    assert keel_eval(unset, db, "--gate").exit_code == 0  # the pin alone says which


def test_resume_finishes_an_interrupted_run(config: Path, db: Path) -> None:
    assert keel_eval(config, db, "--version", "v2").exit_code == 0
    store = store_at(db)
    (whole,) = list_runs(store, "triage")
    # as if the process had died after 25 items
    with store.connection() as conn, conn:
        conn.execute("DELETE FROM eval_results WHERE run_id = ? AND item_hash NOT IN (SELECT"
                     " item_hash FROM eval_results WHERE run_id = ? ORDER BY item_hash LIMIT 25)",
                     (whole.id, whole.id))
        conn.execute("UPDATE eval_runs SET status = 'running', done = 25, metrics = NULL"
                     " WHERE id = ?", (whole.id,))
    result = keel_eval(config, db, "--resume", whole.id)
    assert result.exit_code == 0, result.output
    resumed = get_run(store, whole.id)
    assert resumed.status == "done" and resumed.done == N
    assert resumed.metrics is not None and whole.metrics is not None
    assert resumed.metrics["accuracy"] == whole.metrics["accuracy"] == pytest.approx(44 / 60)
    assert resumed.metrics["per_label"] == whole.metrics["per_label"]
    wrong = keel_eval(config, db, "--resume", whole.id, "--version", "v1")
    assert wrong.exit_code == 2 and f"run {whole.id} evaluates triage v2" in wrong.output


def test_eval_runs_lists_and_shows(config: Path, db: Path) -> None:
    assert keel_eval(config, db, "--version", "v2", "--gate").exit_code == 1
    store = store_at(db)
    (bad,) = list_runs(store, "triage", "v2")
    (champion,) = list_runs(store, "triage", "v1")
    listed = runner.invoke(app, ["eval-runs", "triage", "--db", str(db)])
    assert listed.exit_code == 0, listed.output
    assert bad.id in listed.output and champion.id in listed.output and "FAIL" in listed.output
    shown = runner.invoke(app, ["eval-runs", "triage", "--run", bad.id, "--db", str(db)])
    assert shown.exit_code == 0 and "gate FAILED" in shown.output and "lowest F1" in shown.output
    as_json = runner.invoke(app, ["eval-runs", "triage", "--version", "v1", "--json", "--db", str(db)])
    assert [r["id"] for r in orjson.loads(as_json.stdout)] == [champion.id]
    missing = runner.invoke(app, ["eval-runs", "triage", "--run", "nope", "--db", str(db)])
    assert missing.exit_code == 2 and "no eval run 'nope'" in missing.output
