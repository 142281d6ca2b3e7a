"""The dashboard's reads: ranges covered by the right tables, numbers equal to the raw
events' over the same (minute-rounded) range, whichever bucket is asked for."""

from __future__ import annotations

import datetime as dt
import itertools
import math
import random

import pytest

from keel.store import Store, stats
from keel.store.rollups import EDGES, N_BINS
from keel.types import Decision, Event
from tests.backends import store_at
from tests.store.fakes import T0, random_events, true_bin


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, list[Event]]:
    store = store_at(tmp_path_factory.mktemp("stats") / "k.db")
    store.migrate()
    events = random_events(4000, seed=11)
    conn = store.connect()
    for i in range(0, len(events), 500):
        store.write_events(conn, events[i:i + 500])
    conn.close()
    return store, events


def test_segments_tile_the_minute_rounded_range() -> None:
    rng = random.Random(0)
    for _ in range(500):
        since = T0 + rng.uniform(-40, 40) * 86400
        until = since + rng.choice([30, 400, 5000, 90_000, 400_000, 3_000_000]) * rng.random() + 1
        step = rng.choice([60, 3600, 86400])
        segs = stats.segments(since, until, step)
        assert segs[0][1] == math.floor(since / 60) * 60
        assert segs[-1][2] == math.ceil(until / 60) * 60
        for (_, _, hi), (_, lo, _) in itertools.pairwise(segs):
            assert hi == lo  # contiguous, no overlap
        for level, lo, hi in segs:
            size = stats.LEVELS[level][2]
            assert size <= step and lo % size == 0 and hi % size == 0 and lo < hi
    # a 30-day range by day reads whole days from the daily table, edges from finer ones
    segs = stats.segments(T0 - 30 * 86400, T0, 86400)
    assert [stats.LEVELS[level][0] for level, _, _ in segs] == [
        "rollup_minute", "rollup_hour", "rollup_day", "rollup_hour", "rollup_minute"]


def raw_in(events: list[Event], since: float, until: float, feature: str | None = None) -> list[Event]:
    lo, hi = math.floor(since / 60) * 60, math.ceil(until / 60) * 60
    return [e for e in events if lo <= e.ts < hi and (feature is None or e.feature == feature)]


@pytest.mark.parametrize("seed", range(6))
def test_overview_equals_the_raw_events_in_any_range_and_bucket(
        loaded: tuple[Store, list[Event]], seed: int) -> None:
    store, events = loaded
    rng = random.Random(seed)
    since = T0 - 2 * 86400 + rng.uniform(0, 2 * 86400)
    until = since + rng.uniform(600, 2 * 86400)
    feature = rng.choice([None, "f", "g"])
    raw = raw_in(events, since, until, feature)
    totals = None
    for bucket in ("minute", "hour", "day"):
        body = stats.overview(store, since, until, bucket, feature)  # type: ignore[arg-type]
        if totals is not None:  # the same numbers whatever the bucket
            assert body["totals"]["cost_usd"] == pytest.approx(totals["cost_usd"])
            assert {**body["totals"], "cost_usd": 0} == {**totals, "cost_usd": 0}
        totals = body["totals"]
        step = stats.BUCKETS[bucket]
        series = body["series"]
        assert [p["t"] for p in series] == list(range(math.floor(since / step) * step,
                                                     math.ceil(until / step) * step, step))
        assert sum(p["calls"] for p in series) == len(raw)
        for p in series:
            in_point = [e for e in raw if p["t"] <= e.ts < p["t"] + step]
            assert p["calls"] == len(in_point)
            assert p["errors"] == sum(e.decision is Decision.ERROR for e in in_point)
            assert sum(p["decisions"].values()) == p["calls"]
    assert totals is not None
    assert totals["calls"] == len(raw)
    assert totals["errors"] == sum(e.decision is Decision.ERROR for e in raw)
    assert totals["cost_usd"] == pytest.approx(sum(e.cost_usd or 0.0 for e in raw))
    assert totals["cost_unknown"] == sum(e.cost_usd is None for e in raw)
    assert totals["input_tokens"] == sum(e.input_tokens for e in raw)
    assert totals["decisions"] == {d.value: sum(e.decision is d for e in raw) for d in Decision}
    latencies = sorted(e.latency_ms for e in raw)
    for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        truth = latencies[max(0, math.ceil(q * len(latencies)) - 1)]
        b = true_bin(truth)
        low, high = (0.0 if b == 0 else EDGES[b - 1]), (math.inf if b == N_BINS - 1 else EDGES[b])
        assert low <= totals["latency_ms"][name] <= high
    assert totals["latency_ms"]["mean"] == pytest.approx(sum(latencies) / len(latencies), abs=1e-3)
    features = {r["name"]: r for r in body["features"]}
    for name, row in features.items():
        assert row["calls"] == sum(e.feature == name for e in raw)
    assert [r["calls"] for r in body["features"]] == sorted((r["calls"] for r in body["features"]),
                                                           reverse=True)


def test_versions_of_a_feature(loaded: tuple[Store, list[Event]]) -> None:
    store, events = loaded
    since, until = T0 - 2 * 86400, T0 + 86400
    body = stats.overview(store, since, until, "day", "g")
    raw = raw_in(events, since, until, "g")
    by_version = {r["version"]: r for r in body["versions"]}
    for version, row in by_version.items():
        mine = [e for e in raw if (e.routed or e.version) == version]
        assert row["calls"] == len(mine)
        assert row["error_rate"] == pytest.approx(
            sum(e.decision is Decision.ERROR for e in mine) / len(mine))
        assert row["review_rate"] == pytest.approx(
            sum(e.decision is Decision.REVIEW for e in mine) / len(mine))
        assert row["validation_failure_rate"] == pytest.approx(
            sum(any(not v.passed for v in e.validations) for e in mine) / len(mine))
        priced = [e.cost_usd for e in mine if e.cost_usd is not None]
        assert row["cost_per_call"] == pytest.approx(sum(priced) / len(priced))
    assert sum(r["calls"] for r in body["versions"]) == len(raw)


def test_an_empty_range_has_zeros_and_no_percentiles(loaded: tuple[Store, list[Event]]) -> None:
    store, _ = loaded
    body = stats.overview(store, T0 + 30 * 86400, T0 + 30 * 86400 + 3600, "minute")
    assert body["totals"]["calls"] == 0 and body["features"] == []
    assert body["totals"]["latency_ms"] == {"p50": None, "p95": None, "p99": None, "mean": None}
    assert len(body["series"]) == 61 and body["series"][0]["p95"] is None  # 12:34:56 + 1 h


@pytest.mark.parametrize("group", stats.GROUPS)
def test_costs_per_group_equal_the_raw_sums(loaded: tuple[Store, list[Event]],
                                            group: str) -> None:
    store, events = loaded
    since, until = T0 - 86400 + 5000, T0 + 86400  # since is rounded down to its day
    body = stats.costs(store, group, since, until)  # type: ignore[arg-type]
    day0 = math.floor(since / 86400) * 86400
    raw = [e for e in events if day0 <= e.ts and math.floor(e.ts / 86400) * 86400 < until]

    def key(e: Event) -> object:
        return {"key": e.key, "user": e.user, "feature": e.feature,
                "version": (e.feature, e.routed or e.version),
                "day": dt.datetime.fromtimestamp(e.ts // 86400 * 86400, dt.UTC).date().isoformat(),
                }[group]

    want: dict[object, float] = {}
    for e in raw:
        want[key(e)] = want.get(key(e), 0.0) + (e.cost_usd or 0.0)
    got = {((r["feature"], r["value"]) if group == "version" else r["value"]): r["cost_usd"]
           for r in body["rows"]}
    assert got == pytest.approx(want)
    costs = [r["cost_usd"] for r in body["rows"]]
    assert costs == sorted(costs, reverse=True)
    assert body["totals"]["calls"] == len(raw)
    assert len(stats.costs(store, group, since, until, limit=1)["rows"]) == 1  # type: ignore[arg-type]
    only_f = stats.costs(store, group, since, until, feature="f")  # type: ignore[arg-type]
    assert only_f["totals"]["calls"] == sum(e.feature == "f" for e in raw)


def test_choose_bucket_keeps_series_short() -> None:
    assert stats.choose_bucket(0, 3 * 3600) == "minute"
    assert stats.choose_bucket(0, 86400) == "hour"
    assert stats.choose_bucket(0, 8 * 86400) == "hour"
    assert stats.choose_bucket(0, 30 * 86400) == "day"
