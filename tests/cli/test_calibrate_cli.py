"""keel calibrate: from a labelled CSV or from review verdicts; --apply records the
change, and Keel applies it over keel.yaml at its next start."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from keel.cli import app
from keel.cli.common import console
from keel.gateway import Keel
from keel.settings import Settings
from keel.spec import load_spec
from keel.store.policy import policy_history
from tests.backends import store_at

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]
BANKING77 = REPO.parent / "shared" / "data" / "banking77"


def test_calibrate_on_a_csv_and_apply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console, "width", 200)
    db = tmp_path / "k.db"
    result = runner.invoke(app, ["calibrate", "intent", "--csv", str(BANKING77 / "test.csv"),
                                 "--limit", "600", "--alpha", "0.15", "--apply", "--actor", "ann",
                                 "--config", str(REPO / "keel.yaml"), "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "threshold  accepted  coverage" in result.output and "recorded: accept_at 0.713 ->" in result.output
    (change,) = policy_history(store_at(db), "intent")
    assert change["actor"] == "ann" and change["details"]["alpha"] == 0.15
    new = change["new_value"]

    async def started_threshold() -> float:
        keel = Keel(load_spec(REPO / "keel.yaml"), Settings(config=REPO / "keel.yaml", database=db))
        async with keel:
            return keel.features["intent"].spec.policy.accept_at

    assert asyncio.run(started_threshold()) == pytest.approx(new)


def seed_verdicts(db: Path, n: int = 400) -> None:
    store = store_at(db)
    store.migrate()
    conn = store.connect()
    with conn:
        for i in range(n):
            confidence = (i + 0.5) / n
            wrong = (i * 7919) % 100 < int(60 * (1 - confidence))  # errors fall as confidence rises
            conn.execute(
                "INSERT INTO review_items (trace_id, ts, feature, version, mode, confidence, reason,"
                " input, output, validations, overlap, status, final_verdict) VALUES"
                " (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (f"t{i}", time.time(), "intent", "v1", "deferred", confidence, "audit sample",
                 '{"text": "x"}', '{"label": "a"}',
                 orjson.dumps([{"validator": "allowed_labels", "passed": not wrong or i % 2 == 0,
                                "on_fail": "refuse", "message": None}]).decode(),
                 1, "done", "reject" if wrong else "approve"))
    conn.close()


def test_calibrate_from_review_verdicts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console, "width", 200)
    db = tmp_path / "k.db"
    seed_verdicts(db)
    result = runner.invoke(app, ["calibrate", "intent", "--alpha", "0.2",
                                 "--config", str(REPO / "keel.yaml"), "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "400 labelled items from review verdicts" in result.output
    assert "accept_at = " in result.output
    assert "validators against the reviewers" in result.output and "allowed_labels" in result.output
    assert policy_history(store_at(db), "intent") == []  # nothing applied without --apply


@pytest.mark.parametrize(("args", "message"), [
    (["calibrate", "nope"], "no feature 'nope'"),
    (["calibrate", "intent", "--alpha", "1.5"], "--alpha and --delta must be between 0 and 1"),
    (["calibrate", "intent"], "no labelled items"),
])
def test_calibrate_errors(tmp_path: Path, args: list[str], message: str) -> None:
    db = tmp_path / "k.db"
    store_at(db).migrate()
    result = runner.invoke(app, [*args, "--config", str(REPO / "keel.yaml"), "--db", str(db)])
    assert result.exit_code == 2 and message in result.output
