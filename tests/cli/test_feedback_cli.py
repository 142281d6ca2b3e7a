"""``keel feedback list|stats``: the tables, the JSON, and the error paths."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from keel.cli import app
from keel.cli.common import console
from keel.cli.feedback import KindChoice
from keel.control.feedback import KINDS, FeedbackStore, parse
from keel.types import Decision, Event
from tests.backends import store_at

runner = CliRunner()


def event(i: int, version: str) -> Event:
    return Event(trace_id=f"{i:032x}", ts=time.time() - 60, feature="triage", version=version,
                 decision=Decision.ACCEPTED, confidence=0.9, latency_ms=10.0, timings_ms={},
                 input_tokens=1, output_tokens=1, cost_usd=None, attempts=[], validations=[],
                 input={"text": f"m{i}"}, output={"label": "billing"}, routed=version)


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(console, "width", 220)
    monkeypatch.delenv("KEEL_DATABASE", raising=False)
    path = tmp_path / "keel.db"
    store = store_at(path)
    store.migrate()
    with store.connection() as conn:
        store.write_events(conn, [event(i, "v1" if i < 6 else "v2") for i in range(10)])
    feedback = FeedbackStore(store)
    sent: list[dict[str, Any]] = [
        {"trace_id": f"{0:032x}", "kind": "thumbs", "value": "up"},
        {"trace_id": f"{1:032x}", "kind": "thumbs", "value": "down", "comment": "no"},
        {"trace_id": f"{2:032x}", "kind": "rating", "value": 4},
        {"trace_id": f"{3:032x}", "kind": "outcome", "name": "ticket_resolved"},
        {"trace_id": f"{4:032x}", "kind": "outcome", "name": "ticket_resolved"},
        {"trace_id": f"{7:032x}", "kind": "outcome", "name": "ticket_resolved"},
        {"trace_id": f"{8:032x}", "kind": "correction", "output": {"label": "other"}},
    ]
    for body in sent:
        call = feedback.call(body["trace_id"])
        assert call is not None
        feedback.record(parse(body), call)
    return str(path)


def test_the_kind_choices_are_the_kinds() -> None:
    assert tuple(KindChoice) == KINDS


def test_list(db: str) -> None:
    result = runner.invoke(app, ["feedback", "list", "--feature", "triage", "--db", db])
    assert result.exit_code == 0, result.output
    for text in ("7 of 7", "ticket_resolved", "thumbs", "up", "down", '{"label":"other"}'):
        assert text in result.output, (text, result.output)
    result = runner.invoke(app, ["feedback", "list", "--kind", "rating", "--json", "--db", db])
    body = orjson.loads(result.output)
    assert body["total"] == 1 and body["feedback"][0]["value"] == 4.0


def test_stats(db: str) -> None:
    result = runner.invoke(app, ["feedback", "stats", "-f", "triage", "--db", db])
    assert result.exit_code == 0, result.output
    for text in ("v1", "v2", "all", "ticket_resolved", "50.0% of 2", "4.00 (1)", "33.3% (2)"):
        assert text in result.output, (text, result.output)
    result = runner.invoke(app, ["feedback", "stats", "-f", "triage", "--json", "--db", db])
    body = orjson.loads(result.output)
    v1, v2 = body["versions"]
    assert (v1["version"], v1["calls"], v2["version"], v2["calls"]) == ("v1", 6, "v2", 4)
    assert v1["outcomes"]["ticket_resolved"]["rate"] == pytest.approx(2 / 6)
    assert v2["outcomes"]["ticket_resolved"]["rate"] == pytest.approx(1 / 4)
    assert body["totals"]["corrections"]["calls"] == 1


def test_empty_and_missing(db: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["feedback", "stats", "-f", "nope", "--db", db])
    assert result.exit_code == 0 and "no calls or feedback for 'nope'" in result.output
    result = runner.invoke(app, ["feedback", "list", "--trace", "x", "--db", db])
    assert result.exit_code == 0 and "no feedback yet" in result.output


@pytest.mark.sqlite_only
def test_a_missing_store_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KEEL_DATABASE_URL", raising=False)
    result = runner.invoke(app, ["feedback", "list", "--db", str(tmp_path / "missing.db")])
    assert result.exit_code == 2 and "no store at" in result.output
