"""The control plane end to end, across processes, on BANKING77 and the local model: a
running ``keel serve`` and, beside it, ``keel`` commands that import data, train a
version, gate it, canary it and promote it. The server picks every change up by
itself; nothing is restarted."""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.backends import db_args
from tests.conftest import SHARED_DATA
from tests.e2e.server import KeelProcess

REPO = Path(__file__).resolve().parents[2]
CONFIG = f"""
features:
  intent:
    output:
      kind: label
      labels_file: {SHARED_DATA / "categories.json"}
      label_descriptions_file: {REPO / "examples/intent/label_descriptions.yaml"}
    versions:
      zero-shot-1: {{provider: local, model: all-MiniLM-L6-v2-int8, params: {{temperature: 0.05}}}}
    aliases: {{champion: zero-shot-1}}
    validators: [{{type: allowed_labels, on_fail: refuse}}]
"""


def sample(src: Path, dst: Path, per_label: int) -> int:
    seen: Counter[str] = Counter()
    with src.open(newline="", encoding="utf-8") as f, dst.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["text", "category"])
        for row in csv.DictReader(f):
            if seen[row["category"]] < per_label:
                seen[row["category"]] += 1
                writer.writerow([row["text"], row["category"]])
    return sum(seen.values())


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KeelProcess, Path]]:
    tmp = tmp_path_factory.mktemp("control")
    (tmp / "keel.yaml").write_text(CONFIG)
    sample(SHARED_DATA / "train.csv", tmp / "train.csv", 12)
    sample(SHARED_DATA / "test.csv", tmp / "golden.csv", 3)
    with KeelProcess(tmp / "keel.yaml", tmp / "keel.db",
                     env={"KEEL_CONTROL_INTERVAL_S": "0.2"}) as proc:
        yield proc, tmp


def keel(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keel", *args, "--config", str(tmp / "keel.yaml"),
                           *db_args(tmp / "keel.db")], capture_output=True, text=True,
                          timeout=300, check=False)


def versions_served(base: str, users: int = 60) -> Counter[str]:
    with httpx.Client(base_url=base, timeout=30) as client:
        return Counter(
            client.post("/v1/features/intent", json={"input": {"text": "my card has not arrived"},
                                                     "user": f"user-{i}"}).json()["version"]
            for i in range(users))


def until(check: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_train_gate_canary_promote_while_serving(world: tuple[KeelProcess, Path]) -> None:
    proc, tmp = world
    for args in (("data", "import", "intent-train", str(tmp / "train.csv"),
                  "--label-column", "category", "--split", "train"),
                 ("data", "import", "intent-golden", str(tmp / "golden.csv"),
                  "--label-column", "category", "--split", "golden"),
                 ("data", "pin", "intent", "intent-golden@1"),
                 ("versions", "train", "intent", "--dataset", "intent-train@1", "--name", "head-1")):
        done = keel(tmp, *args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)

    # promotion without an eval record is refused, from any process
    refused = keel(tmp, "versions", "alias", "intent", "champion", "head-1")
    assert refused.returncode == 2 and "gate" in refused.stderr + refused.stdout

    gate = keel(tmp, "eval", "intent", "--version", "head-1", "--gate")
    assert gate.returncode == 0, gate.stdout + gate.stderr
    assert "pass" in gate.stdout.lower()

    # the server loaded the trained version by itself
    def served() -> bool:
        body = httpx.get(f"{proc.base_url}/api/features/intent/versions").json()
        return any(v["name"] == "head-1" and v["served"] for v in body["versions"])
    until(served)

    start = keel(tmp, "rollout", "start", "intent", "head-1", "--steps", "0.5,1")
    assert start.returncode == 0, start.stdout + start.stderr
    until(lambda: set(versions_served(proc.base_url)) == {"zero-shot-1", "head-1"})

    promote = keel(tmp, "rollout", "promote", "intent")
    assert promote.returncode == 0, promote.stdout + promote.stderr
    until(lambda: set(versions_served(proc.base_url)) == {"head-1"})

    history = keel(tmp, "versions", "history", "intent")
    assert "head-1" in history.stdout and "cli:" in history.stdout
    status = keel(tmp, "rollout", "status", "intent")
    assert status.returncode == 0 and "promoted" in status.stdout
