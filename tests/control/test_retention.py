"""Retention: pruning in batches, what stays, the leader's tick, and `keel prune`."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

from typer.testing import CliRunner

from keel.cli import app
from keel.control.retention import Pruner
from keel.gateway import Keel
from keel.spec_privacy import RetentionSpec
from keel.store.db import Store
from keel.types import ReviewRequest
from tests.backends import store_at
from tests.conftest import basic_feature, settings_in, spec_with
from tests.store.fakes import event
from tests.store.flaky import FlakyStore

DAY = 86400.0
NOW = 1_767_225_600.0 + 12 * 3600.0  # noon UTC
AGES = [0.5, 1.5, 2.5, 4.0, 6.0, 12.0, 20.0]  # days, one event each
SPEC = RetentionSpec(events_days=10, payloads_days=2, closed_reviews_days=5,
                     minute_rollups_days=1, hour_rollups_days=3, batch_size=3)


def seeded(path: Path, now: float = NOW) -> Store:
    store = store_at(path)
    store.migrate()
    with store.connection() as conn:
        store.write_events(conn, [event(f"e{d}", now - d * DAY) for d in AGES])
        store.write_reviews(conn, [
            ReviewRequest(f"r{d}", now - d * DAY, "f", "v1", "deferred", 0.4, "low",
                          {"text": "x"}, {"label": "a"}, []) for d in (1.0, 8.0, 9.0)])
        with conn:
            conn.execute("UPDATE review_items SET status = 'done', decided_at = ts + 60"
                         " WHERE trace_id IN ('r1.0', 'r8.0')")  # r9.0 still pending
            conn.execute("INSERT INTO review_verdicts (trace_id, reviewer, verdict, ts)"
                         " VALUES ('r8.0', 'ann', 'approve', ?)", (now - 8 * DAY,))
    return store


def rows(store: Store, sql: str) -> list[tuple[object, ...]]:
    with store.connection() as conn:
        return [tuple(r) for r in conn.execute(sql).fetchall()]


def count(store: Store, table: str, where: str = "1 = 1") -> int:
    return int(rows(store, f"SELECT COUNT(*) FROM {table} WHERE {where}")[0][0])


def test_a_pass_prunes_each_kind_past_its_retention_and_keeps_the_rest(tmp_path: Path) -> None:
    store = seeded(tmp_path / "k.db")
    days_before = count(store, "rollup_day")
    ledger_before = rows(store, "SELECT * FROM ledger ORDER BY day")
    pruner = Pruner(store, SPEC, clock=lambda: NOW)
    expected = {"events": 2, "payloads": 3, "closed_reviews": 1,
                "minute_rollups": 2 * 6, "hour_rollups": 2 * 4}
    assert pruner.count() == expected  # minute and hour: a counter and a latency row each
    report = pruner.run()
    assert report.done and report.counts == expected
    kept = dict(rows(store, "SELECT trace_id, input FROM events"))
    assert set(kept) == {f"e{d}" for d in AGES if d < 10}
    assert {k for k, v in kept.items() if v != "null"} == {"e0.5", "e1.5"}
    assert rows(store, "SELECT output FROM events WHERE trace_id = 'e6.0'") == [("null",)]
    assert {r[0] for r in rows(store, "SELECT trace_id FROM review_items")} == {"r1.0", "r9.0"}
    assert count(store, "review_verdicts") == 0
    assert count(store, "rollup_minute", f"bucket < {NOW - DAY}") == 0
    assert count(store, "rollup_hour", f"bucket < {NOW - 3 * DAY}") == 0
    assert count(store, "rollup_minute") == 1 and count(store, "rollup_hour") == 3
    assert count(store, "rollup_day") == days_before  # kept, like the ledger
    assert rows(store, "SELECT * FROM ledger ORDER BY day") == ledger_before
    assert pruner.run().counts == dict.fromkeys(expected, 0)  # nothing twice
    assert (recent := store.recent_events(limit=1)) and recent[0]["input"] == {"text": "e0.5"}


def test_dry_run_deletes_nothing_and_null_keeps_for_ever(tmp_path: Path) -> None:
    store = seeded(tmp_path / "k.db")
    Pruner(store, SPEC, clock=lambda: NOW).count()
    assert count(store, "events") == len(AGES)
    forever = RetentionSpec(events_days=None, payloads_days=None, closed_reviews_days=None,
                            minute_rollups_days=None, hour_rollups_days=None)
    assert Pruner(store, forever, clock=lambda: NOW).run().counts == dict.fromkeys(
        ("events", "payloads", "closed_reviews", "minute_rollups", "hour_rollups"), 0)


def test_a_time_budget_stops_a_pass_the_next_one_goes_on(tmp_path: Path) -> None:
    store = seeded(tmp_path / "k.db")
    pruner = Pruner(store, SPEC.model_copy(update={"batch_size": 1}), clock=lambda: NOW)
    first = pruner.run(budget_s=0.0)
    assert not first.done and first.total == 1
    total = first.total
    while not (report := pruner.run(budget_s=0.0)).done:
        total += report.total
    assert total + report.total == 2 + 3 + 1 + 12 + 8


def test_the_leader_prunes_every_interval_and_a_restart_does_not_reset_it(tmp_path: Path) -> None:
    store = seeded(tmp_path / "k.db")
    clock = [NOW]
    spec = SPEC.model_copy(update={"interval_s": 3600})
    pruner = Pruner(store, spec, clock=lambda: clock[0])
    assert pruner.tick() is None  # a new store: the first pass is one interval away
    clock[0] += 3601
    report = pruner.tick()
    assert report is not None and report.done and report.counts["events"] == 2
    restarted = Pruner(store, spec, clock=lambda: clock[0] + 60)
    assert restarted.tick() is None  # the last pass is in the store


def test_a_failing_store_makes_the_tick_wait_not_raise(tmp_path: Path) -> None:
    store = FlakyStore(seeded(tmp_path / "k.db"))
    clock = [NOW]
    pruner = Pruner(store, SPEC, clock=lambda: clock[0])  # type: ignore[arg-type]
    store.down = True
    assert pruner.tick() is None
    clock[0] += 30
    assert pruner.tick() is None and store.failed_writes == 1  # waits a minute
    store.down = False
    clock[0] += 31
    assert pruner.tick() is None  # first sight of this store: one interval from now
    clock[0] += SPEC.interval_s
    report = pruner.tick()
    assert report is not None and report.counts["events"] == 2


async def test_a_running_keel_prunes_from_its_control_loop(tmp_path: Path) -> None:
    settings = dataclasses.replace(settings_in(tmp_path), control_interval_s=0.05)
    spec = spec_with(basic_feature())
    spec = spec.model_copy(update={"retention": RetentionSpec(events_days=1, interval_s=60)})
    store = store_at(settings.database)
    store.migrate()
    now = time.time()
    with store.connection() as conn:
        store.write_events(conn, [event("old", now - 5 * DAY), event("new", now - 60)])
        with conn:  # the last pass was long ago
            conn.execute("INSERT INTO retention_marks (name, value) VALUES ('last_prune', 0)")
    async with Keel(spec, settings):
        for _ in range(200):
            if count(store, "events") == 1:
                break
            await asyncio.sleep(0.05)
    assert [r[0] for r in rows(store, "SELECT trace_id FROM events")] == ["new"]


def test_keel_prune_cli(tmp_path: Path) -> None:
    seeded(tmp_path / "keel.db", now=time.time())
    config = tmp_path / "keel.yaml"
    config.write_text(
        "features:\n  f:\n    output: {kind: label, labels: [a, b]}\n"
        "    versions: {v1: {provider: local, model: m}}\n    aliases: {champion: v1}\n"
        "retention: {events_days: 10, payloads_days: null, closed_reviews_days: null,"
        " minute_rollups_days: null, hour_rollups_days: null}\n")
    runner = CliRunner()
    args = ["prune", "--config", str(config), "--db", str(tmp_path / "keel.db")]
    dry = runner.invoke(app, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would delete 2 row(s)" in dry.output and "10 days" in dry.output
    assert count(store_at(tmp_path / "keel.db"), "events") == len(AGES)
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    assert "deleted 2 row(s)" in done.output and "for ever" in done.output
    assert count(store_at(tmp_path / "keel.db"), "events") == len(AGES) - 2
