"""The demo's parts that need no model: the workload split, the reviewers' verdicts, the
served keel.yaml, the numbers of a phase and the hand-written chart."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from keel.demo.config import DemoConfig, Message, load_workload, write_config
from keel.demo.plot import nice_ticks, write_plot
from keel.demo.report import CallRecord, PhaseCounts, ServeStats, interval
from keel.demo.reviewers import verdict_for
from keel.errors import ConfigError
from keel.spec import load_spec
from tests.conftest import SHARED_DATA

REPO = Path(__file__).resolve().parents[2]
# the real intents (keel.yaml's label descriptions name every one); the messages are made up
LABELS: list[str] = json.loads((SHARED_DATA / "categories.json").read_text())


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "categories.json").write_text(json.dumps(LABELS))
    for name, n in (("train.csv", 400), ("test.csv", 154)):
        lines = ["text,category", *(f"{name} message {i},{LABELS[i % 77]}" for i in range(n))]
        (folder / name).write_text("\n".join(lines) + "\n")
    return folder


def small(data: Path, **kw: object) -> DemoConfig:
    base: dict[str, object] = {"data": data, "cycles": 2, "traffic": 50,
                               "calibration_size": 60, "gate_size": 77, "canary_min_calls": 10}
    return DemoConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_the_workload_is_split_once_and_the_same_for_the_same_seed(data: Path) -> None:
    a, b = load_workload(small(data)), load_workload(small(data))
    assert [m.text for m in a.traffic] == [m.text for m in b.traffic]
    assert [m.slip for m in a.traffic] == [m.slip for m in b.traffic]
    other = load_workload(small(data, seed=1))
    assert [m.text for m in other.traffic] != [m.text for m in a.traffic]
    # the calibration set is never traffic; the gate set is test.csv, evenly per label
    held = {i.input["text"] for i in a.calibration}
    assert len(held) == 60 and not held & {m.text for m in a.traffic}
    assert len(a.traffic) == 400 - 60 and all(m.label in LABELS for m in a.traffic)
    assert len(a.golden) == 77 and {i.split for i in a.golden} == {"golden"}
    assert sorted(i.expected["label"] for i in a.golden) == sorted(LABELS)  # type: ignore[index]


def test_a_workload_too_small_for_the_run_is_refused(data: Path) -> None:
    with pytest.raises(ConfigError, match="lower --traffic"):
        load_workload(small(data, traffic=200))
    with pytest.raises(ConfigError, match="--alpha"):
        small(data, alpha=1.5)


def test_reviewers_answer_from_the_truth_and_slip_as_configured() -> None:
    m = Message(1, "my card", "card_arrival", "u", slip=False, wrong_label="card_linking")
    assert verdict_for(m, {"label": "card_arrival"}) == ("approve", None, False)
    assert verdict_for(m, {"label": "exchange_rate"}) == ("edit", {"label": "card_arrival"}, False)
    slipping = Message(1, "my card", "card_arrival", "u", slip=True, wrong_label="card_linking")
    assert verdict_for(slipping, {"label": "exchange_rate"}) == ("approve", None, True)
    assert verdict_for(slipping, {"label": "card_arrival"}) == ("edit", {"label": "card_linking"}, True)


def test_the_served_config_is_the_repos_intent_with_the_demos_canary(data: Path,
                                                                     tmp_path: Path) -> None:
    cfg = small(data, config=REPO / "keel.yaml", canary_steps=(0.5, 1.0))
    spec = load_spec(write_config(cfg, tmp_path)).features["intent"]
    shipped = load_spec(REPO / "keel.yaml", env={"KEEL_BANKING77_DIR": str(data)}).features["intent"]
    assert spec.output.labels == LABELS and spec.versions == shipped.versions
    assert spec.policy == shipped.policy and spec.review == shipped.review
    assert spec.rollout.steps == [0.5, 1.0] and spec.rollout.min_calls == 10
    assert spec.rollout.min_step_s == 0


def record(label: str, truth: str, decision: str, latency: float = 5.0) -> CallRecord:
    m = Message(0, "t", truth, "u", slip=False, wrong_label="x")
    return CallRecord(m, "t", "v", decision, label, 0.5, latency, 0.0)


def test_a_phase_counts_error_among_the_auto_accepted_only() -> None:
    records = [record("a", "a", "accepted"), record("b", "a", "accepted"),
               record("b", "a", "review"), record("a", "a", "review")]
    counts = PhaseCounts.of(records)
    assert (counts.calls, counts.accepted, counts.wrong, counts.correct) == (4, 2, 1, 2)
    stats = ServeStats(0, "v", 0.7, 0.1, counts, reviewed=2, reviewer_slips=0,
                       review_cost_usd=0.2, seconds=1.0)
    assert stats.coverage == 0.5 and stats.error == 0.5 and stats.review_load == 0.5
    assert stats.cost_per_1k_usd == pytest.approx(50.0)
    assert stats.within == "noise"  # 1 of 2 is far above 0.1, but not significantly
    low, high = interval(10, 100)
    assert low is not None and high is not None and low < 0.1 < high


def test_the_hand_written_chart_is_valid_svg(tmp_path: Path) -> None:
    assert nice_ticks(9.3) == [0, 2, 4, 6, 8, 10]
    rows = [ServeStats(i, f"v{i}", 0.7, 0.1, PhaseCounts.of(
        [record("a", "a", "accepted", 4.0 + i), record("b", "a", "review")] * (i + 1)),
        reviewed=i + 1, reviewer_slips=0, review_cost_usd=0.1, seconds=1.0) for i in range(3)]
    path = write_plot(rows, 0.1, tmp_path / "chart.svg")
    root = ET.parse(path).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    texts = {el.text for el in root.iter("{http://www.w3.org/2000/svg}text")}
    assert {"coverage and review load", "α = 0.1", "0: v0"} <= texts
