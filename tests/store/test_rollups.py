"""Rollups and the ledger agree with the raw events, whatever the batching and however
often an event is redelivered; spend(); the backfill of an upgraded database."""

from __future__ import annotations

import math
import random
import sqlite3
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from keel.stages.record import EventWriter
from keel.store import Store, rollups
from keel.store import sqlite as sqlite_module
from keel.store.migrations import MIGRATIONS
from keel.store.rollups import EDGES, HIST, LEVELS, N_BINS, Spend, spend
from keel.types import Decision, Event
from tests.backends import store_at
from tests.store.fakes import T0, event, expected_rollup, random_events, true_bin


def store_in(tmp_path: Path) -> Store:
    store = store_at(tmp_path / "k.db")
    store.migrate()
    return store


def write_redelivering(store: Store, events: list[Event], seed: int) -> None:
    """Random batch sizes; ~30 % of the events sent again later (another batch) and some
    twice within one batch: at-least-once delivery."""
    rng = random.Random(seed)
    stream = list(events)
    for e in rng.sample(events, len(events) * 3 // 10):
        stream.insert(rng.randrange(len(stream) + 1), e)
    conn = store.connect()
    i = 0
    while i < len(stream):
        n = rng.choice([1, 2, 7, 64, 300])
        batch = stream[i:i + n]
        if batch and rng.random() < 0.2:
            batch.append(batch[0])
        store.write_events(conn, batch)
        i += n
    conn.close()


def table_rows(store: Store, table: str, n_keys: int) -> dict[tuple[object, ...], sqlite3.Row]:
    conn = store.connect()
    rows = conn.execute(f"SELECT * FROM {table}").fetchall()
    conn.close()
    return {tuple(r[:n_keys]): r for r in rows}


def assert_rollups_match(store: Store, events: list[Event]) -> None:
    for table, ltable, step in LEVELS:
        counts, latency = expected_rollup(events, step)
        have = table_rows(store, table, 4)
        assert set(have) == set(counts), table
        for key, w in counts.items():
            h = have[key]
            for col in ("calls", "client_errors", "validation_failures", "input_tokens",
                        "output_tokens", "cost_unknown"):
                assert h[col] == w[col], (table, key, col)
            assert h["cost_usd"] == pytest.approx(w["cost_usd"], rel=1e-9, abs=1e-12)
            assert h["latency_sum"] == pytest.approx(w["latency_sum"], rel=1e-9)
        have = table_rows(store, ltable, 3)
        assert set(have) == set(latency), ltable
        for key, w in latency.items():
            h = have[key]
            assert (h["latency_min"], h["latency_max"]) == (w["latency_min"], w["latency_max"])
            assert {i: h[c] for i, c in enumerate(HIST) if h[c]} == dict(w["bins"])


def test_rollups_agree_with_the_events_despite_redelivery(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    events = random_events(3000, seed=1)
    write_redelivering(store, events, seed=2)
    assert store.count_events() == 3000
    assert_rollups_match(store, events)


def test_the_writer_thread_counts_a_redelivered_event_once(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    events = random_events(500, seed=3)
    writer = EventWriter(store, batch_size=50)
    writer.start()
    for e in events:
        writer.submit(e)
    writer.flush()
    for e in events[::3]:  # the same events once more, in later batches
        writer.submit(e)
    writer.close()
    assert store.count_events() == 500
    assert_rollups_match(store, events)


def test_a_batch_that_fails_adds_nothing(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    conn = store.connect()
    bad = event("t2", T0)
    bad.input = object()  # cannot be serialised: the whole batch fails
    with pytest.raises(TypeError):
        store.write_events(conn, [event("t1", T0), bad])
    assert store.count_events() == 0
    assert conn.execute("SELECT COUNT(*) FROM rollup_minute").fetchone()[0] == 0
    assert conn.execute("SELECT COUNT(*) FROM ledger").fetchone()[0] == 0


def test_latency_bins_are_log_spaced_and_cover_everything() -> None:
    assert len(EDGES) == N_BINS - 1 and EDGES[0] == 0.1 and EDGES[-1] == pytest.approx(1e6)
    ratios = np.array(EDGES[1:]) / np.array(EDGES[:-1])
    assert np.allclose(ratios, 10 ** 0.1)
    for latency in (0.0, 0.05, 0.1, 0.11, 1.0, 999.9, 1000.0, 1e6, 1e9):
        assert rollups.latency_bin(latency) == true_bin(latency)
    assert rollups.latency_bin(0.0) == 0 and rollups.latency_bin(1e9) == N_BINS - 1


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@pytest.mark.parametrize("seed", range(5))
def test_percentiles_of_merged_histograms_land_in_the_true_bin(seed: int) -> None:
    rng = np.random.default_rng(seed)
    latencies = list(np.round(rng.lognormal(rng.uniform(0, 7), rng.uniform(0.1, 1.5), 2000), 3))
    parts = np.array_split(np.array(latencies), 7)  # rows of 7 buckets, merged by summing
    hist = np.zeros((1, N_BINS))
    for part in parts:
        for x in part:
            hist[0, rollups.latency_bin(float(x))] += 1
    lo, hi = np.array([min(latencies)]), np.array([max(latencies)])
    got = rollups.percentiles(hist, lo, hi, (0.5, 0.95, 0.99))[0]
    for q, value in zip((0.5, 0.95, 0.99), got, strict=True):
        truth = nearest_rank(latencies, q)
        b = true_bin(truth)
        low = 0.0 if b == 0 else EDGES[b - 1]
        high = math.inf if b == N_BINS - 1 else EDGES[b]
        assert low <= value <= high, (q, value, truth)
        assert value == pytest.approx(truth, rel=10 ** 0.1 - 1)


def test_percentiles_stay_within_min_and_max_and_are_nan_without_calls() -> None:
    hist = np.zeros((2, N_BINS))
    hist[0, rollups.latency_bin(5.0)] = 3
    got = rollups.percentiles(hist, np.array([5.0, np.inf]), np.array([5.0, -np.inf]), (0.5, 0.99))
    assert list(got[0]) == [5.0, 5.0]
    assert np.isnan(got[1]).all()


def test_the_ledger_sums_per_day_feature_version_key_and_user(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    events = random_events(2000, seed=4)
    write_redelivering(store, events, seed=5)
    want: dict[tuple[object, ...], list[float]] = defaultdict(lambda: [0, 0, 0, 0.0, 0])
    for e in events:
        day = int(e.ts // 86400) * 86400
        row = want[(day, e.feature, e.routed or e.version or "", e.key or "", e.user or "")]
        row[0] += 1
        row[1] += e.input_tokens
        row[2] += e.output_tokens
        if e.cost_usd is None:
            row[4] += 1
        else:
            row[3] += e.cost_usd
    conn = store.connect()
    tables = {name: {tuple(r[:n]): list(r[n:]) for r in conn.execute(f"SELECT * FROM {name}")}
              for name, n in (("ledger", 5), ("ledger_user", 2), ("ledger_key", 2))}
    conn.close()
    # the per-user and per-key tables: the same sums per (day, user) and (day, key)
    for name, part in (("ledger_user", 4), ("ledger_key", 3)):
        summed: dict[tuple[object, ...], list[float]] = defaultdict(lambda: [0, 0, 0, 0.0, 0])
        for key, row in want.items():
            into = summed[(key[0], key[part])]
            for i, value in enumerate(row):
                into[i] += value
        assert set(tables[name]) == set(summed)
        for key, row in summed.items():
            assert tables[name][key] == pytest.approx(row, abs=1e-12), name
    have = tables["ledger"]
    assert set(have) == set(want)
    for key, (calls, tin, tout, cost, unknown) in want.items():
        assert have[key][:3] == [calls, tin, tout]
        assert have[key][3] == pytest.approx(cost, abs=1e-12)
        assert have[key][4] == unknown


def test_spend_per_scope_is_day_granular(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    day = int(T0 // 86400) * 86400
    conn = store.connect()
    store.write_events(conn, [
        event("a", day - 10, cost_usd=1.0, user="u1", key="k1"),  # the day before
        event("b", day + 10, cost_usd=2.0, user="u1", key="k1", input_tokens=5),
        event("c", day + 50_000, cost_usd=4.0, user="u2", key="k1", version="v2"),
        event("d", day + 60_000, cost_usd=None, user=None, key="k2", feature="g"),
        event("e", day + 86_400 + 5, cost_usd=8.0, user="u1", key="k2"),  # the day after
    ])
    conn.close()
    midday = day + 43_200
    # since is rounded down to its UTC day; until counts days starting before it
    assert spend(store, scope="user", value="u1", since=midday) == Spend(10.0, 15, 4, 2)
    assert spend(store, scope="user", value="u1", since=day, until=day + 86_400) == Spend(2.0, 5, 2, 1)
    assert spend(store, scope="user", value="u1", since=day - 1) == Spend(11.0, 25, 6, 3)
    assert spend(store, scope="user", value=None, since=day).calls == 1  # no user
    assert spend(store, scope="key", value="k1", since=day, until=day + 1).cost_usd == 6.0
    assert spend(store, scope="key", value="k2", since=day) == Spend(8.0, 20, 4, 2, cost_unknown=1)
    assert spend(store, scope="feature", value="g", since=day).cost_unknown == 1
    assert spend(store, scope="version", value="v2", since=day).cost_usd == 4.0
    assert spend(store, scope="version", value="v2", since=day, feature="g").calls == 0
    assert spend(store, scope="user", value="u1", since=day, feature="f").cost_usd == 10.0
    assert spend(store, scope="all", value=None, since=day - 86_400).cost_usd == 15.0
    assert spend(store, scope="all", value=None, since=day + 2 * 86_400) == Spend()
    with pytest.raises(ValueError):
        spend(store, scope="team", value="x", since=day)  # type: ignore[arg-type]


def old_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, events: list[Event]) -> Store:
    """A database as Keel before 006 left it: migrations 001-005 and plain event rows."""
    upto = [name for name, _ in MIGRATIONS].index("006_rollups")
    store = store_at(tmp_path / "old.db")
    with monkeypatch.context() as m:
        m.setattr(sys.modules[type(store).__module__], "MIGRATIONS", MIGRATIONS[:upto])
        store.migrate()
    columns = sqlite_module.EVENT_COLUMNS[:20]  # the columns events had up to 005
    insert = f"INSERT INTO events ({', '.join(columns)}) VALUES ({','.join('?' * 20)})"
    conn = store.connect()
    with conn:
        conn.executemany(insert, [sqlite_module._event_row(e)[:20] for e in events])
    conn.close()
    return store


def test_upgrading_fills_the_rollups_from_the_stored_events(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    old = random_events(1500, seed=6)
    store = old_database(tmp_path, monkeypatch, old)
    assert "006_rollups" in store.migrate()
    assert_rollups_match(store, old)
    new = random_events(500, seed=7)  # then the writer goes on from there
    write_redelivering(store, new + old[:100], seed=8)
    assert_rollups_match(store, old + new)
    assert spend(store, scope="all", value=None, since=0).calls == 2000


@pytest.mark.sqlite_only  # reads SQLite's own catalogue
def test_a_failed_backfill_leaves_the_migration_to_run_again(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    store = old_database(tmp_path, monkeypatch, random_events(50, seed=9))

    def boom(conn: sqlite3.Connection) -> None:
        raise RuntimeError("killed mid-backfill")

    with monkeypatch.context() as m:
        m.setitem(sqlite_module.DATA_STEPS, "006_rollups", boom)
        with pytest.raises(RuntimeError):
            store.migrate()
    conn = store.connect()
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'rollup_minute'").fetchone() is None
    conn.close()
    store.migrate()
    assert spend(store, scope="all", value=None, since=0).calls == 50


def test_decision_strings_and_enums_roll_up_alike(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    conn = store.connect()
    e = event("s", T0, decision=Decision.REVIEW)
    e.decision = "review"  # type: ignore[assignment]
    store.write_events(conn, [e, event("t", T0, decision=Decision.REVIEW)])
    assert conn.execute("SELECT calls FROM rollup_day WHERE decision = 'review'").fetchone()[0] == 2
    conn.close()
