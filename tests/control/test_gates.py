"""Gates: floors and ceilings, non-inferiority by paired bootstrap, latency and cost
guardrails, where the result is stored, and which dataset version a feature is gated on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from keel.control.datasets import DatasetStore
from keel.control.evaluation import EvalRun, EvalRunner, get_run
from keel.control.gates import (
    GateResult,
    bootstrap_lower_bound,
    evaluate_gate,
    gate_dataset,
    metric_value,
    passing_run,
)
from keel.errors import ControlConflict, DatasetNotFound, GateRequired
from keel.gateway import Keel
from keel.spec import GateSpec, NonInferioritySpec
from keel.types import Usage
from tests.conftest import settings_in
from tests.control.evalkit import Answers, commit, graded, label_spec

N = 100
CHAMPION_WRONG = set(range(0, N, 10))  # 90% right


@pytest.fixture
async def keel(tmp_path: Path) -> AsyncIterator[Keel]:
    async with Keel(label_spec(), settings_in(tmp_path)) as k:
        yield k


async def runs(keel: Keel, candidate_wrong: set[int], *, candidate_delay: float = 0.0,
               candidate_usage: Usage | None = None) -> tuple[EvalRun, EvalRun]:
    rows, champion_table = graded(N, CHAMPION_WRONG)
    _, candidate_table = graded(N, candidate_wrong)
    Answers(keel, "p1", champion_table)
    Answers(keel, "p2", candidate_table, delay=candidate_delay, usage=candidate_usage)
    commit(keel, "golden", rows)
    runner = EvalRunner(keel)
    champion = await runner.run("f", "v1", "golden@1", actor="t")
    candidate = await runner.run("f", "v2", "golden@1", actor="t")
    return candidate, champion


ONLY_NI = GateSpec(max_latency_ratio=None, max_cost_ratio=None)


def check(result: GateResult, prefix: str) -> dict[str, object]:
    (found,) = [c for c in result.checks if c.name.startswith(prefix)]
    return {"passed": found.passed, "value": found.value, "threshold": found.threshold,
            "message": found.message}


async def test_a_candidate_equal_to_the_champion_passes_non_inferiority(keel: Keel) -> None:
    candidate, champion = await runs(keel, CHAMPION_WRONG)
    result = evaluate_gate(keel.store, ONLY_NI, candidate, champion)
    assert result.passed
    ni = check(result, "non-inferiority accuracy")
    assert ni["value"] == 0.0 and ni["threshold"] == -0.02 and ni["passed"]
    stored = get_run(keel.store, candidate.id)
    assert stored.passed is True and stored.gate is not None
    assert GateResult.from_dict(stored.gate) == result
    assert stored.gate["spec"]["non_inferiority"]["delta"] == 0.02
    assert passing_run(keel.store, "f", "v2", "golden", 1) == candidate.id


async def test_a_candidate_ten_points_worse_fails(keel: Keel) -> None:
    worse = CHAMPION_WRONG | set(range(5, N, 10))  # 80% right: 10 points worse
    candidate, champion = await runs(keel, worse)
    assert candidate.metrics is not None and candidate.metrics["accuracy"] == pytest.approx(0.8)
    result = evaluate_gate(keel.store, ONLY_NI, candidate, champion)
    assert not result.passed
    ni = check(result, "non-inferiority")
    assert not ni["passed"] and ni["value"] < -0.1  # type: ignore[operator]
    assert "mean difference -0.1000 over 100 items" in str(ni["message"])
    assert get_run(keel.store, candidate.id).passed is False
    assert passing_run(keel.store, "f", "v2", "golden", 1) is None


async def test_delta_and_confidence_decide_a_noisy_tie(keel: Keel) -> None:
    # the candidate fixes 5 of the champion's mistakes and makes 5 new ones: mean 0,
    # but 10 discordant items out of 100 leave a lower bound near -0.05
    swapped = set(list(CHAMPION_WRONG)[:5]) ^ CHAMPION_WRONG | {1, 11, 21, 31, 41}
    candidate, champion = await runs(keel, swapped)
    assert candidate.metrics is not None and candidate.metrics["accuracy"] == pytest.approx(0.9)
    strict = evaluate_gate(keel.store, ONLY_NI, candidate, champion)
    lower = check(strict, "non-inferiority")["value"]
    assert not strict.passed and -0.08 < lower < -0.03  # type: ignore[operator]
    loose = GateSpec(max_latency_ratio=None, max_cost_ratio=None,
                     non_inferiority=NonInferioritySpec(delta=0.1))
    assert evaluate_gate(keel.store, loose, candidate, champion).passed
    # the last gate evaluation is the one stored on the run
    assert get_run(keel.store, candidate.id).passed is True


def test_the_bootstrap_is_deterministic_with_a_seed() -> None:
    rng = np.random.default_rng(7)
    diffs = rng.choice([-1.0, 0.0, 0.0, 0.0, 1.0], size=300)
    one = bootstrap_lower_bound(diffs, 0.95, 2000, seed=3)
    assert bootstrap_lower_bound(diffs, 0.95, 2000, seed=3) == one
    assert bootstrap_lower_bound(diffs, 0.95, 2000, seed=4) != one
    # close to the normal approximation: mean - 1.645 * sd / sqrt(n)
    normal = diffs.mean() - 1.645 * diffs.std(ddof=1) / np.sqrt(diffs.size)
    assert one == pytest.approx(normal, abs=0.01)
    assert bootstrap_lower_bound(diffs, 0.99, 2000, seed=3) < one
    assert bootstrap_lower_bound([0.0] * 50, 0.95, 500) == 0.0
    with pytest.raises(ValueError):
        bootstrap_lower_bound([], 0.95, 500)


async def test_the_same_runs_give_the_same_gate(keel: Keel) -> None:
    candidate, champion = await runs(keel, {1, 2, 3, 4, 5})
    first = evaluate_gate(keel.store, ONLY_NI, candidate, champion)
    again = evaluate_gate(keel.store, ONLY_NI, candidate, champion)
    assert first == again


async def test_floors_and_ceilings(keel: Keel) -> None:
    candidate, champion = await runs(keel, CHAMPION_WRONG)
    spec = GateSpec(floors={"accuracy": 0.95, "macro_f1": 0.5, "per_label.a.f1": 0.5},
                    ceilings={"error_rate": 0.0, "latency_p95_ms": 10_000},
                    non_inferiority=None, max_latency_ratio=None, max_cost_ratio=None)
    result = evaluate_gate(keel.store, spec, candidate, champion)
    assert not result.passed
    assert check(result, "floor accuracy") == {
        "passed": False, "value": pytest.approx(0.9), "threshold": 0.95,
        "message": "accuracy 0.9 fails >= 0.95"}
    assert check(result, "floor macro_f1")["passed"] and check(result, "floor per_label.a.f1")["passed"]
    assert check(result, "ceiling error_rate")["passed"]
    assert check(result, "ceiling latency_p95_ms")["passed"]
    missing = evaluate_gate(keel.store, GateSpec(floors={"bleu": 0.1}, non_inferiority=None),
                            candidate, champion)
    assert not missing.passed
    assert "bleu was not measured (measured: n, label, accuracy" in check(missing, "floor bleu")["message"]  # type: ignore[operator]


async def test_latency_guardrail(keel: Keel) -> None:
    candidate, champion = await runs(keel, CHAMPION_WRONG, candidate_delay=0.03)
    spec = GateSpec(non_inferiority=None, max_cost_ratio=None, latency_slack_ms=0)
    result = evaluate_gate(keel.store, spec, candidate, champion)
    latency = check(result, "latency p95 ratio")
    assert not result.passed and not latency["passed"] and latency["threshold"] == 1.25
    assert latency["value"] > 1.25  # type: ignore[operator]
    # a difference within the slack passes whatever the ratio
    slack = GateSpec(non_inferiority=None, max_cost_ratio=None, latency_slack_ms=10_000)
    within = check(evaluate_gate(keel.store, slack, candidate, champion), "latency p95 ratio")
    assert within["passed"] and "slack" in within["message"]  # type: ignore[operator]
    # the champion against the slow candidate: faster is fine
    assert evaluate_gate(keel.store, spec, champion, candidate).passed
    off = GateSpec(non_inferiority=None, max_cost_ratio=None, max_latency_ratio=None)
    assert evaluate_gate(keel.store, off, candidate, champion).checks == []


async def test_cost_guardrail(keel: Keel) -> None:
    candidate, champion = await runs(keel, CHAMPION_WRONG, candidate_usage=Usage(20, 4))
    spec = GateSpec(non_inferiority=None, max_latency_ratio=None)
    result = evaluate_gate(keel.store, spec, candidate, champion)
    cost = check(result, "cost per call ratio")
    assert not result.passed and cost["value"] == pytest.approx(2.0) and cost["threshold"] == 1.1
    assert evaluate_gate(keel.store, GateSpec(non_inferiority=None, max_latency_ratio=None,
                                              max_cost_ratio=2.5), candidate, champion).passed


async def test_unknown_or_zero_cost_is_skipped_with_a_note(tmp_path: Path) -> None:
    unpriced = label_spec(versions={"v1": {"provider": "p1", "model": "m1"},
                                    "v2": {"provider": "p2", "model": "m2",
                                           "price": {"input": 1.0, "output": 1.0}}})
    async with Keel(unpriced, settings_in(tmp_path)) as keel:
        candidate, champion = await runs(keel, CHAMPION_WRONG)
        assert champion.metrics is not None and champion.metrics["cost_per_call_usd"] is None
        spec = GateSpec(non_inferiority=None, max_latency_ratio=None)
        result = evaluate_gate(keel.store, spec, candidate, champion)
        assert result.passed
        assert check(result, "cost")["message"] == "skipped: cost_per_call_usd unknown for the champion"
        assert [c.skipped for c in result.checks] == [True]
    free = label_spec(versions={"v1": {"provider": "p1", "model": "m1",
                                       "price": {"input": 0.0, "output": 0.0}},
                                "v2": {"provider": "p2", "model": "m2",
                                       "price": {"input": 0.0, "output": 0.0}}})
    async with Keel(free, settings_in(tmp_path / "free")) as keel:
        candidate, champion = await runs(keel, CHAMPION_WRONG)
        result = evaluate_gate(keel.store, spec, candidate, champion)
        assert result.passed and check(result, "cost")["message"] == "skipped: cost_per_call_usd is 0 for both"


async def test_a_paid_candidate_against_a_free_champion_fails_the_cost_ratio(tmp_path: Path) -> None:
    spec = label_spec(versions={"v1": {"provider": "p1", "model": "m1",
                                       "price": {"input": 0.0, "output": 0.0}},
                                "v2": {"provider": "p2", "model": "m2",
                                       "price": {"input": 1.0, "output": 1.0}}})
    async with Keel(spec, settings_in(tmp_path)) as keel:
        candidate, champion = await runs(keel, CHAMPION_WRONG)
        result = evaluate_gate(keel.store, GateSpec(non_inferiority=None, max_latency_ratio=None),
                               candidate, champion)
        assert not result.passed and "champion cost_per_call_usd is 0" in str(check(result, "cost")["message"])
        assert not result.checks[0].skipped


async def test_the_champion_passes_comparisons_with_itself(keel: Keel) -> None:
    _, champion = await runs(keel, CHAMPION_WRONG)
    spec = GateSpec(floors={"accuracy": 0.8})
    result = evaluate_gate(keel.store, spec, champion, champion)
    assert result.passed and [c.name for c in result.checks] == ["floor accuracy"]
    assert result.notes == ["the candidate is the champion: comparisons pass trivially"]
    assert not evaluate_gate(keel.store, GateSpec(floors={"accuracy": 0.95}), champion, champion).passed
    first = evaluate_gate(keel.store, spec, champion, None)
    assert first.passed and first.notes[0].startswith("no champion run to compare with")


async def test_runs_on_different_dataset_versions_are_not_compared(keel: Keel) -> None:
    candidate, _ = await runs(keel, CHAMPION_WRONG)
    rows, table = graded(N + 1, set())
    Answers(keel, "p1", table)
    commit(keel, "golden", rows)  # golden@2
    champion = await EvalRunner(keel).run("f", "v1", "golden@2", actor="t")
    result = evaluate_gate(keel.store, ONLY_NI, candidate, champion)
    assert not result.passed
    assert check(result, "same dataset")["message"] == (
        f"champion run {champion.id} is on golden@2, the candidate's on golden@1")


async def test_an_unfinished_run_cannot_be_gated(keel: Keel) -> None:
    candidate, champion = await runs(keel, CHAMPION_WRONG)
    with closing(keel.store.connect()) as conn, conn:
        conn.execute("UPDATE eval_runs SET status = 'interrupted' WHERE id = ?", (candidate.id,))
    with pytest.raises(ControlConflict, match=f"--resume {candidate.id}"):
        evaluate_gate(keel.store, ONLY_NI, candidate.id, champion.id)


async def test_non_inferiority_needs_a_per_item_metric(keel: Keel) -> None:
    candidate, champion = await runs(keel, CHAMPION_WRONG)
    spec = GateSpec(non_inferiority=NonInferioritySpec(metric="macro_f1"),
                    max_latency_ratio=None, max_cost_ratio=None)
    result = evaluate_gate(keel.store, spec, candidate, champion)
    assert not result.passed and "not a per-item metric" in str(check(result, "non-inferiority")["message"])


def test_metric_value() -> None:
    metrics = {"accuracy": 0.9, "per_label": {"a": {"f1": 0.5}}, "n": 10, "cost": None, "ok": True}
    assert metric_value(metrics, "accuracy") == 0.9
    assert metric_value(metrics, "per_label.a.f1") == 0.5
    assert metric_value(metrics, "n") == 10.0
    assert metric_value(metrics, "cost") is None and metric_value(metrics, "ok") is None
    assert metric_value(metrics, "per_label.b.f1") is None and metric_value(None, "x") is None


async def test_gate_dataset(keel: Keel) -> None:
    datasets = DatasetStore(keel.store)
    rows, _ = graded(5, set())
    commit(keel, "golden", rows)
    commit(keel, "golden", graded(6, set())[0])  # golden@2
    assert gate_dataset(GateSpec(dataset="golden@1"), datasets, "f").number == 1
    with pytest.raises(DatasetNotFound):
        gate_dataset(GateSpec(dataset="golden@3"), datasets, "f")
    with pytest.raises(GateRequired, match=r"set gate\.dataset in keel\.yaml"):
        gate_dataset(GateSpec(), datasets, "f")
    with pytest.raises(GateRequired, match="pin one: keel data pin f golden@2"):
        gate_dataset(GateSpec(dataset="golden"), datasets, "f")
    datasets.pin("f", "golden", 1, actor="t")
    assert gate_dataset(GateSpec(dataset="golden"), datasets, "f").number == 1
    assert gate_dataset(GateSpec(), datasets, "f").ref == "golden@1"  # the pin alone
    assert gate_dataset(GateSpec(dataset="golden@2"), datasets, "f").number == 2  # keel.yaml wins
    with pytest.raises(GateRequired, match=r"pinned now: golden@1"):
        gate_dataset(GateSpec(dataset="other"), datasets, "f")
