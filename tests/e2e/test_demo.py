"""``keel demo`` end to end on a tiny configuration: a real ``keel demo`` process serves
BANKING77 traffic over HTTP, its simulated reviewers answer the queue, and the loop must
train, gate, canary and promote a new version by itself, with coverage rising while the
error of auto-accepted answers stays within α. About a minute on two busy CPUs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA

REPO = Path(__file__).resolve().parents[2]

# the demo shows the embedded default (SQLite + the local model): one pass is enough
pytestmark = [pytest.mark.slow, pytest.mark.sqlite_only]


def keel(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keel", *args], capture_output=True, text=True,
                          timeout=600, check=False, cwd=REPO,
                          # rich tables unfolded; one BLAS thread: the trainer's fit does not
                          # fight the model's threads for two CPUs
                          env={**{k: v for k, v in os.environ.items() if k != "KEEL_DATABASE_URL"},
                               "COLUMNS": "250", "OPENBLAS_NUM_THREADS": "1"})


def test_the_loop_promotes_a_version_and_coverage_rises_within_alpha(tmp_path: Path) -> None:
    if not (SHARED_DATA / "train.csv").is_file():
        pytest.skip(f"BANKING77 not found in {SHARED_DATA}")
    work = tmp_path / "demo"
    done = keel("demo", "--cycles", "2", "--traffic", "500", "--gate-size", "231",
                "--calibration-size", "400", "--canary-min-calls", "30", "--port", "0",
                "--seed", "0", "--data", str(SHARED_DATA), "--config", str(REPO / "keel.yaml"),
                "--workdir", str(work), "--plot", str(work / "chart.svg"), "--quiet")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((work / "demo.json").read_text())
    rows, alpha = result["rows"], result["config"]["alpha"]
    assert result["complete"] and [r["cycle"] for r in rows] == [0, 1, 2]

    # the loop promoted a version by itself, and it served the last phase
    assert result["promoted"], json.dumps(result["cycles"], indent=1)
    assert rows[-1]["version"] == result["promoted"][-1]
    promoted = next(c for c in result["cycles"] if c["outcome"] == "promoted")
    assert promoted["gate_passed"] and promoted["steps"][-1] == "100%"
    assert promoted["accept_at_after"] is not None  # recalibrated for the new champion

    # coverage rose; the error of auto-accepted answers stayed within alpha in every phase
    assert rows[-1]["coverage"] > rows[0]["coverage"], rows
    for row in rows:
        assert row["accepted"] > 0 and row["error"] <= alpha, row
    assert rows[-1]["review_load"] < rows[0]["review_load"]

    # the chart: a well-formed SVG (asked for by its extension) with the four panels
    chart = Path(result["plot"])
    assert chart == work / "chart.svg" and chart.is_file()
    texts = [el.text for el in ET.parse(chart).getroot().iter("{http://www.w3.org/2000/svg}text")]
    assert "error of auto-accepted answers" in texts and "latency" in texts

    # the store holds the real records: the rollout and the new champion
    status = keel("rollout", "status", "intent", "--config", str(work / "keel.yaml"),
                  "--db", str(work / "keel.db"))
    assert status.returncode == 0 and "promoted" in status.stdout, status.stdout + status.stderr
    history = keel("versions", "history", "intent", "--config", str(work / "keel.yaml"),
                   "--db", str(work / "keel.db"))
    assert result["promoted"][-1] in history.stdout and "controller" in history.stdout
