"""``keel review``: list, stats and the interactive loop, fed by CliRunner."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from keel.cli import review
from keel.cli.common import console
from keel.control.datasets import DatasetSink
from keel.store.reviews import ReviewStore
from keel.types import OnFail, ReviewRequest, ValidationResult
from tests.backends import store_at

runner = CliRunner()
cli = typer.Typer()
cli.add_typer(review.app, name="review")

CONFIG = """
providers:
  up: {type: openai, base_url: "http://127.0.0.1:9/v1"}
features:
  triage:
    output: {kind: label, labels: [billing, shipping, shipping_delay, other]}
    versions: {v1: {provider: up, model: fake-model}}
    aliases: {champion: v1}
    review: {dataset: triage-gold}
  extract:
    output: {kind: json}
    versions: {v1: {provider: up, model: fake-model}}
    aliases: {champion: v1}
    review: {order: oldest}
"""


def item(trace_id: str, feature: str = "triage", confidence: float | None = 0.3,
         output: object = None, ts: float = 1_700_000_000.0) -> ReviewRequest:
    return ReviewRequest(
        trace_id=trace_id, ts=ts, feature=feature, version="v1", mode="deferred",
        confidence=confidence, reason=f"confidence {confidence} < accept_at 0.5",
        input={"text": f"input of {trace_id}"},
        output={"label": "billing"} if output is None else output,
        validations=[ValidationResult("allowed_labels", True, OnFail.REFUSE)])


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    monkeypatch.setattr(console, "width", 200)
    config = tmp_path / "keel.yaml"
    config.write_text(CONFIG)
    db = tmp_path / "keel.db"
    store = store_at(db)
    store.migrate()
    conn = store.connect()
    store.write_reviews(conn, [item("t-low", confidence=0.1), item("t-mid", confidence=0.3),
                               item("t-high", confidence=0.45),
                               item("x-1", "extract", 0.2, {"total": 10})])
    conn.close()
    return config, db


def run(paths: tuple[Path, Path], *args: str, input: str | None = None) -> tuple[int, str]:
    config, db = paths
    result = runner.invoke(cli, ["review", *args, "--config", str(config), "--db", str(db)],
                           input=input)
    return result.exit_code, result.output


def test_list_and_stats(paths: tuple[Path, Path]) -> None:
    code, out = run(paths, "list", "--feature", "triage")
    assert code == 0, out
    assert "3 of 3 pending" in out and out.index("t-low") < out.index("t-mid") < out.index("t-high")
    code, out = run(paths, "list", "--status", "all", "-n", "1")
    assert code == 0 and "1 of 4 all" in out
    ReviewStore(store_at(paths[1])).record("t-low", "ann", "reject", reason="spam")
    code, out = run(paths, "stats")
    assert code == 0, out
    assert "triage" in out and "extract" in out and "100%" in out  # all closed ones rejected
    code, out = run(paths, "list", "--feature", "nope")
    assert code == 2 and "no feature named 'nope'" in out


@pytest.mark.sqlite_only  # a missing SQLite file; a server database is always there
def test_a_missing_store_is_a_clear_error(paths: tuple[Path, Path], tmp_path: Path) -> None:
    result = runner.invoke(cli, ["review", "list", "--config", str(paths[0]),
                                 "--db", str(tmp_path / "none.db")])
    assert result.exit_code == 2 and "no store at" in result.output


def test_next_approves_edits_by_number_and_rejects(paths: tuple[Path, Path]) -> None:
    # t-low: approve; t-mid: edit, pick label 2 (shipping); t-high: reject with a reason;
    # then the queue of triage is empty
    code, out = run(paths, "next", "--reviewer", "ann", "--feature", "triage",
                    input="a\ne\n2\n\nr\n\nnot about billing\n")
    assert code == 0, out
    assert "input of t-low" in out and "allowed_labels" in out and "0.10" in out
    assert "nothing left to review for ann" in out and "3 verdict(s) recorded" in out
    reviews = ReviewStore(store_at(paths[1]))
    low, mid, high = (reviews.get(t) for t in ("t-low", "t-mid", "t-high"))
    assert low is not None and low.final_verdict == "approve"
    assert mid is not None and mid.final_output == {"label": "shipping"}
    assert high is not None and high.final_verdict == "reject"
    assert high.votes[0].reason == "not about billing"
    assert DatasetSink(store_at(paths[1])).count("triage-gold") == 3


def test_labels_by_prefix_and_ambiguity(paths: tuple[Path, Path]) -> None:
    # "ship" matches two labels: asked again; "shipping_d" is unique
    code, out = run(paths, "next", "-r", "bob", "-f", "triage",
                    input="e\nship\nzzz\nshipping_d\nsure\nq\n")
    assert code == 0, out
    assert "several match: shipping, shipping_delay" in out and "no label matches" in out
    low = ReviewStore(store_at(paths[1])).get("t-low")
    assert low is not None and low.final_output == {"label": "shipping_delay"}
    assert low.votes[0].reason == "sure"
    mid = ReviewStore(store_at(paths[1])).get("t-mid")
    assert mid is not None and mid.assigned_to is None  # quitting gave it back


def test_skip_moves_on_and_json_edits(paths: tuple[Path, Path]) -> None:
    code, out = run(paths, "next", "-r", "cy", "-f", "extract",
                    input="s\n")
    assert code == 0 and "nothing left to review for cy (1 skipped)" in out
    code, out = run(paths, "next", "-r", "cy", "-f", "extract",
                    input="e\n{bad\n{\"total\": 12}\n\n")
    assert code == 0, out
    assert "not JSON" in out
    x = ReviewStore(store_at(paths[1])).get("x-1")
    assert x is not None and x.final_output == {"total": 12}


def test_end_of_input_releases_the_claim(paths: tuple[Path, Path]) -> None:
    code, out = run(paths, "next", "-r", "dan", "-f", "triage", input="")
    assert code == 130 and "stopped; 0 verdict(s) recorded" in out
    low = ReviewStore(store_at(paths[1])).get("t-low")
    assert low is not None and low.assigned_to is None


def test_a_bad_reviewer_name(paths: tuple[Path, Path]) -> None:
    code, out = run(paths, "next", "-r", " ")
    assert code == 2 and "reviewer must be a non-empty string" in out


def test_resolve_label() -> None:
    labels = ["card_arrival", "card_linking", "top_up_failed"]
    assert review.resolve_label("2", labels) == "card_linking"
    assert review.resolve_label("top", labels) == "top_up_failed"
    assert review.resolve_label("FAILED", labels) == "top_up_failed"
    assert review.resolve_label("card", labels) == ["card_arrival", "card_linking"]
    assert review.resolve_label("9", labels) == []
