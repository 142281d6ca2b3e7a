"""Eval runs: metrics with known answers, concurrency, resume after a cancel, error paths,
and the real local model on a BANKING77 slice."""

from __future__ import annotations

import asyncio
import csv
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from keel.control.datasets import DatasetStore, Item
from keel.control.evaluation import (
    EvalRunner,
    get_run,
    latest_run,
    list_runs,
    paired_scores,
    results,
)
from keel.control.scorers import Regex
from keel.errors import (
    ConfigError,
    ControlConflict,
    DatasetNotFound,
    EvalRunNotFound,
    FeatureNotFound,
    ProviderRejected,
    VersionNotFound,
)
from keel.gateway import Keel
from keel.providers.base import ProviderRequest
from keel.settings import Settings
from keel.spec import load_spec
from keel.types import Completion
from tests.conftest import scripted, settings_in, spec_with
from tests.control.evalkit import Answers, commit, graded, label_spec

ROOT = Path(__file__).resolve().parents[2]
BANKING77 = ROOT / os.environ.get("KEEL_BANKING77_DIR", "../shared/data/banking77")


@pytest.fixture
async def keel(tmp_path: Path) -> AsyncIterator[Keel]:
    async with Keel(label_spec(), settings_in(tmp_path)) as k:
        yield k


# truth a a a a b b b c c c; answers with 3 mistakes (a->b, b->a, c->a)
ROWS = [(f"t{i}", label) for i, label in enumerate("aaaabbbccc")]
ANSWERS: dict[str, str] = {f"t{i}": label for i, label in enumerate("aaabbbacac")}


async def test_metrics_on_known_answers(keel: Keel) -> None:
    Answers(keel, "p1", dict(ANSWERS), confidence={"t9": 0.3})  # t9 goes to review
    dv = commit(keel, "golden", ROWS)
    run = await EvalRunner(keel).run("f", "v1", "golden@1", actor="ann")
    assert (run.status, run.items, run.done, run.actor) == ("done", 10, 10, "ann")
    assert (run.dataset, run.dataset_number, run.dataset_digest) == ("golden", 1, dv.digest)
    assert run.config["scorers"] == ["label"]  # the default for a label feature
    m = run.metrics
    assert m is not None
    assert m["n"] == 10 and m["accuracy"] == pytest.approx(0.7) and m["label"] == pytest.approx(0.7)
    # a: tp 3 fp 2 fn 1; b: tp 2 fp 1 fn 1; c: tp 2 fp 0 fn 1
    per = m["per_label"]
    assert per["a"] == pytest.approx({"precision": 3 / 5, "recall": 3 / 4, "f1": 6 / 9, "support": 4})
    assert per["b"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 4 / 6, "support": 3})
    assert per["c"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 4 / 5, "support": 3})
    assert m["macro_f1"] == pytest.approx((6 / 9 + 4 / 6 + 4 / 5) / 3)
    assert m["coverage"] == pytest.approx(0.9)  # t9 was decided "review": not served alone
    assert m["error_rate"] == 0.0
    assert m["cost_per_call_usd"] == pytest.approx(14 / 1_000_000)
    assert 0 < m["latency_p50_ms"] <= m["latency_p95_ms"]
    assert m["mean_confidence"] == pytest.approx((9 * 0.9 + 0.3) / 10)
    stored = {r.item_hash: r for r in results(keel.store, run.id)}
    assert len(stored) == 10 and {r.decision for r in stored.values()} == {"accepted", "review"}
    keel.writer.flush()
    assert keel.store.count_events() == 0 and keel.store.pending_reviews() == 0  # pinned calls
    assert get_run(keel.store, run.id) == run


async def test_a_failed_call_is_an_error_and_a_wrong_answer(keel: Keel) -> None:
    table: dict[str, object] = dict(ANSWERS)
    table["t0"] = ProviderRejected("400 from upstream")
    Answers(keel, "p1", table)  # type: ignore[arg-type]
    Answers(keel, "p2", dict(ANSWERS))  # the fallback: never used by a pinned call
    commit(keel, "golden", ROWS)
    run = await EvalRunner(keel).run("f", "v1", "golden", actor="t")
    m = run.metrics
    assert m is not None
    assert m["error_rate"] == pytest.approx(0.1) and m["accuracy"] == pytest.approx(0.6)
    assert m["per_label"]["a"]["recall"] == pytest.approx(2 / 4)
    failed = [r for r in results(keel.store, run.id) if r.error]
    assert len(failed) == 1 and failed[0].decision == "error" and failed[0].scores == {"label": 0.0}
    assert (failed[0].error or "").endswith("last error: 400 from upstream")


async def test_items_without_an_expected_answer_are_not_scored(keel: Keel) -> None:
    Answers(keel, "p1", {"x": "a", "y": "b"})
    commit(keel, "mixed", [("x", "a"), ("y", None)])
    run = await EvalRunner(keel).run("f", "v1", "mixed", actor="t")
    assert run.metrics is not None
    assert run.metrics["n"] == 2 and run.metrics["scored"] == {"label": 1}
    assert run.metrics["accuracy"] == 1.0


async def test_scorers_by_name_and_as_objects(keel: Keel) -> None:
    Answers(keel, "p1", dict(ANSWERS))
    commit(keel, "golden", ROWS)
    runner = EvalRunner(keel)
    run = await runner.run("f", "v1", "golden", scorers=["exact_match", "regex=^[ab]$"], actor="t")
    assert run.metrics is not None
    assert run.metrics["exact_match"] == pytest.approx(0.7)
    assert run.metrics["regex"] == pytest.approx(0.8)  # two answers are c
    # no label scorer: no classification metrics, and accuracy is the exact-match rate
    assert run.metrics["accuracy"] == run.metrics["exact_match"] and "macro_f1" not in run.metrics
    own = await runner.run("f", "v1", "golden", scorers=["label", Regex("c", name="says_c")],
                           actor="t")
    assert own.config["scorers"] == ["label", "says_c"]
    assert own.metrics is not None and own.metrics["says_c"] == pytest.approx(0.2)
    with pytest.raises(ConfigError, match="unknown scorer"):
        await runner.run("f", "v1", "golden", scorers=["bleu"], actor="t")


async def test_a_json_feature_is_scored_by_exact_match_and_json_validity(tmp_path: Path) -> None:
    spec = spec_with({"output": {"kind": "json"}, "versions": {"v1": {"provider": "p1", "model": "m"}},
                      "aliases": {"champion": "v1"}})
    answers = {"x": {"city": "Paris"}, "y": {"city": "Lyon"}, "z": "{city: Nice"}  # z: not JSON

    async def complete(request: ProviderRequest) -> Completion:
        return Completion(output=answers[request.input["text"]])

    async with Keel(spec, settings_in(tmp_path)) as keel:
        scripted(keel, "p1").complete = complete  # type: ignore[method-assign]
        DatasetStore(keel.store).commit("cities", [
            Item.of({"text": t}, {"city": c}, split="eval")
            for t, c in (("x", "Paris"), ("y", "Paris"), ("z", "Nice"))], actor="t")
        run = await EvalRunner(keel).run("f", "v1", "cities", actor="t")
    assert run.config["scorers"] == ["exact_match", "json_valid"]
    assert run.metrics is not None
    assert run.metrics["exact_match"] == pytest.approx(1 / 3)
    assert run.metrics["json_valid"] == pytest.approx(2 / 3)


async def test_items_run_concurrently(keel: Keel) -> None:
    rows, table = graded(32, set())
    answers = Answers(keel, "p1", table, delay=0.05)
    commit(keel, "golden", rows)
    start = time.perf_counter()
    run = await EvalRunner(keel).run("f", "v1", "golden", concurrency=8, actor="t")
    elapsed = time.perf_counter() - start
    assert answers.max_in_flight == 8  # never more than asked, and really that many
    assert elapsed < 32 * 0.05 / 2  # sequential would take 1.6 s
    assert run.metrics is not None and run.metrics["accuracy"] == 1.0
    one = Answers(keel, "p1", table, delay=0.0)
    await EvalRunner(keel).run("f", "v1", "golden", concurrency=1, actor="t")
    assert one.max_in_flight == 1


async def test_resume_after_a_cancel_evaluates_each_item_once(keel: Keel) -> None:
    rows, table = graded(60, {1, 7, 8, 20, 33, 41, 42, 59})
    answers = Answers(keel, "p1", table, delay=0.01)
    commit(keel, "golden", rows)
    runner = EvalRunner(keel, batch_size=5)
    seen: list[int] = []
    task = asyncio.create_task(runner.run("f", "v1", "golden", concurrency=4, actor="t",
                                          progress=lambda done, total: seen.append(done)))
    while not seen or seen[-1] < 25:
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (stopped,) = list_runs(keel.store, "f")
    assert stopped.status == "interrupted" and 25 <= stopped.done < 60
    before = {r.item_hash for r in results(keel.store, stopped.id)}
    assert len(before) == stopped.done  # what was evaluated was written, buffer included
    texts = {item.item_hash: item.input["text"]
             for item in DatasetStore(keel.store).items("golden", 1)}
    asked_before = len(answers.asked)

    resumed_progress: list[tuple[int, int]] = []
    run = await runner.run("f", "v1", "golden", concurrency=4, actor="t", run_id=stopped.id,
                           progress=lambda done, total: resumed_progress.append((done, total)))
    asked_after = answers.asked[asked_before:]
    assert not {texts[h] for h in before} & set(asked_after)  # nothing evaluated twice
    assert len(asked_after) == 60 - len(before)
    assert resumed_progress[0] == (len(before), 60) and resumed_progress[-1] == (60, 60)
    assert run.id == stopped.id and run.status == "done" and run.done == 60
    assert len(results(keel.store, run.id)) == 60

    whole = await runner.run("f", "v1", "golden", concurrency=4, actor="t")
    assert run.metrics is not None and whole.metrics is not None
    for key in ("n", "accuracy", "macro_f1", "per_label", "coverage", "error_rate",
                "cost_per_call_usd", "label"):
        assert run.metrics[key] == whole.metrics[key], key
    assert run.metrics["accuracy"] == pytest.approx(52 / 60)
    # a finished run resumes to itself; a run resumes only as what it was
    assert await runner.run("f", "v1", "golden", actor="t", run_id=run.id) == run
    with pytest.raises(ControlConflict, match="same feature, version"):
        await runner.run("f", "v2", "golden", actor="t", run_id=run.id)


async def test_a_run_killed_mid_way_stays_running_and_resumes(keel: Keel) -> None:
    rows, table = graded(12, set())
    Answers(keel, "p1", table)
    dv = commit(keel, "golden", rows)
    runner = EvalRunner(keel, batch_size=1)
    items = DatasetStore(keel.store).items("golden", 1)

    class Crash(BaseException):
        pass

    calls = 0
    original = runner.evaluate

    async def crash_on_fifth(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        if calls == 5:
            raise Crash
        return await original(*args, **kwargs)  # type: ignore[arg-type]

    runner.evaluate = crash_on_fifth  # type: ignore[assignment,method-assign]
    with pytest.raises(Crash):
        await runner.run("f", "v1", dv, concurrency=1, actor="t")
    (stopped,) = list_runs(keel.store, "f")
    assert stopped.status == "interrupted" and stopped.done == 4
    runner.evaluate = original  # type: ignore[method-assign]
    run = await runner.run("f", "v1", dv, actor="t", run_id=stopped.id)
    assert run.done == 12 and len(items) == 12 and run.metrics is not None
    assert run.metrics["accuracy"] == 1.0


async def test_error_paths(keel: Keel) -> None:
    commit(keel, "golden", ROWS)
    runner = EvalRunner(keel)
    with pytest.raises(DatasetNotFound):
        await runner.run("f", "v1", "nope@1", actor="t")
    with pytest.raises(DatasetNotFound):
        await runner.run("f", "v1", "golden@2", actor="t")
    with pytest.raises(DatasetNotFound, match="no split 'train'"):
        await runner.run("f", "v1", "golden", split="train", actor="t")
    with pytest.raises(VersionNotFound, match="no version 'v9' loaded"):
        await runner.run("f", "v9", "golden", actor="t")
    with pytest.raises(FeatureNotFound):
        await runner.run("nope", "v1", "golden", actor="t")
    with pytest.raises(EvalRunNotFound):
        await runner.run("f", "v1", "golden", actor="t", run_id="0123456789ab")
    with pytest.raises(EvalRunNotFound):
        get_run(keel.store, "nope")
    assert list_runs(keel.store, "f") == []  # nothing was started


async def test_lookups_and_paired_scores(keel: Keel) -> None:
    Answers(keel, "p1", dict(ANSWERS))
    Answers(keel, "p2", {**ANSWERS, "t3": "a", "t0": "c"})  # fixes t3, breaks t0
    commit(keel, "golden", ROWS)
    commit(keel, "golden", [*ROWS, ("t10", "a")])  # golden@2
    runner = EvalRunner(keel)
    one = await runner.run("f", "v1", "golden@1", actor="t")
    two = await runner.run("f", "v2", "golden@1", actor="t")
    other = await runner.run("f", "v1", "golden@2", actor="t")
    assert latest_run(keel.store, "f", "v1", "golden", 1, None) == one
    assert latest_run(keel.store, "f", "v1", "golden", 2, None) == other
    assert latest_run(keel.store, "f", "v1", "golden", 1, "eval") is None  # another split
    assert latest_run(keel.store, "f", "v2", "golden", 2, None) is None
    assert [r.id for r in list_runs(keel.store, "f")] == [other.id, two.id, one.id]
    assert [r.id for r in list_runs(keel.store, "f", "v2")] == [two.id]
    a, b = paired_scores(keel.store, two.id, one.id, "accuracy")
    assert len(a) == 10 and sum(a) == sum(b) == 7
    assert sorted(x - y for x, y in zip(a, b, strict=True)) == [-1.0] + [0.0] * 8 + [1.0]
    a, b = paired_scores(keel.store, one.id, other.id, "label")
    assert len(a) == 10  # aligned on the items both have
    with pytest.raises(ValueError, match="not a per-item metric"):
        paired_scores(keel.store, one.id, two.id, "macro_f1")


@pytest.mark.slow
async def test_the_local_model_on_a_banking77_slice(tmp_path: Path) -> None:
    with (BANKING77 / "test.csv").open(newline="", encoding="utf-8") as f:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(f)][:100]
    config = ROOT / "keel.yaml"
    keel = Keel(load_spec(config), Settings(config=config, database=tmp_path / "k.db"))
    async with keel:
        datasets = DatasetStore(keel.store)
        dv = datasets.commit("intent-golden", [Item.of({"text": t}, {"label": label}, split="eval")
                                               for t, label in rows], actor="test", dedupe=False)
        start = time.perf_counter()
        run = await EvalRunner(keel).run("intent", "zero-shot-1", "intent-golden@1", actor="t")
        elapsed = time.perf_counter() - start
        items = datasets.items("intent-golden", 1)
        direct = [await keel.call("intent", item.input, pin="zero-shot-1") for item in items]
    m = run.metrics
    assert m is not None and m["n"] == dv.items == len(items) >= 95  # a few rows may repeat
    assert m["error_rate"] == 0.0
    right = sum(o.output["label"] == item.expected["label"]
                for o, item in zip(direct, items, strict=True))
    assert m["accuracy"] == pytest.approx(right / len(items))  # the run scores what the model says
    assert m["accuracy"] > 0.5  # zero-shot is well above chance (1/77) on BANKING77
    assert 0 < m["coverage"] <= 1 and 0 < m["macro_f1"] <= 1
    assert set(m["per_label"]) >= {item.expected["label"] for item in items}
    assert elapsed < 10
