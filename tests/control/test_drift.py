"""drift_report over a real store: windows, references, columns, alerts and every error."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import orjson
import pytest

from keel.control import drift_data, drift_read
from keel.control.datasets import DatasetStore, Item
from keel.control.drift import Reference, drift_report, parse_duration, parse_time
from keel.control.evaluation import EvalRunner
from keel.errors import DatasetNotFound, InvalidRequest
from keel.gateway import Keel
from keel.store import Store
from keel.types import Decision, Event
from tests.backends import store_at
from tests.conftest import settings_in
from tests.control.drift_kit import HOUR, T0, WORDS, Shape, traffic, write
from tests.control.evalkit import Answers, label_spec

BASE = Shape()
DRIFT = Shape(words=16, weights=(0.2, 0.3, 0.5))  # longer texts, other label shares
STABLE = ["confidence", "review", "refused", "latency_ms", "output_tokens"]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = store_at(tmp_path / "keel.db")
    s.migrate()
    return s


def test_two_drifted_windows_in_a_row_alert(store: Store) -> None:
    traffic(store, [BASE, BASE, BASE, DRIFT, DRIFT])
    report = drift_report(store, "f", window=HOUR)
    assert [w.role for w in report.windows] == ["reference"] + ["tested"] * 4
    assert [w.drifted for w in report.windows] == [False, False, False, True, True]
    assert [w.alert for w in report.windows] == [False, False, False, False, True]
    assert report.alert and report.alert_active and report.alert_since == T0 + 3 * HOUR
    drifted = report.drifted_columns()
    assert {"text_length", "label", "input_tokens"} <= set(drifted)
    assert not set(STABLE) & set(drifted)
    assert report.reference.kind == "window" and report.reference.n == 300
    assert report.reference.start == T0 and report.reference.end == T0 + HOUR
    w3 = report.windows[3]
    assert w3.n == 300 and {"text_length", "label"} <= set(w3.drifted_columns)
    label = w3.columns["label"]
    assert label.method == "chi2" and label.p_adjusted is not None and label.p_adjusted < 0.01
    assert label.threshold == 0.01 and label.p_value is not None and label.p_value <= label.p_adjusted
    shares = label.summary["shares"]
    assert isinstance(shares, dict) and shares["c"] > 0.35
    assert w3.columns["review"].summary["rate"] is not None
    assert report.skipped == {"language": "no language check ran", "pii": "no PII check ran"}


@pytest.mark.parametrize(("shapes", "drifted"), [
    ([BASE, BASE, DRIFT, BASE], [False, False, True, False]),
    ([BASE, DRIFT, BASE, DRIFT], [False, True, False, True]),
])
def test_drifted_windows_apart_do_not_alert(store: Store, shapes: list[Shape],
                                            drifted: list[bool]) -> None:
    traffic(store, shapes)
    report = drift_report(store, "f", window=HOUR)
    assert [w.drifted for w in report.windows] == drifted
    assert not report.alert and report.alert_since is None and report.drifted_windows == sum(drifted)


def test_no_drift_on_the_same_traffic(store: Store) -> None:
    traffic(store, [BASE] * 6, seed=3)
    report = drift_report(store, "f", window=HOUR)
    assert report.drifted_windows == 0 and not report.alert
    assert all(r.method == "ks" for r in (w.columns["text_length"] for w in report.windows[1:]))


def test_a_reference_range(store: Store) -> None:
    traffic(store, [BASE, BASE, DRIFT, DRIFT])
    report = drift_report(store, "f", window=HOUR,
                          reference=Reference.parse("window", T0 + 2 * HOUR, T0 + 4 * HOUR))
    assert [w.role for w in report.windows] == ["tested"] * 4
    assert [w.drifted for w in report.windows] == [True, True, False, False]
    assert report.alert and not report.alert_active
    assert report.reference.n == 600 and report.reference.start == T0 + 2 * HOUR
    # a reference range outside the windows is read too
    later = drift_report(store, "f", window=HOUR, since=T0, until=T0 + 2 * HOUR,
                         reference=Reference("window", T0 + 2 * HOUR, T0 + 4 * HOUR))
    assert len(later.windows) == 2 and all(w.drifted for w in later.windows)


def test_windows_by_count_and_defaults(store: Store) -> None:
    traffic(store, [BASE] * 4)
    report = drift_report(store, "f", windows=2, columns=["text_length"])
    assert len(report.windows) == 2 and report.windows[0].n + report.windows[1].n == 1200
    assert report.window_s == pytest.approx(((report.until or 0) - (report.since or 0)) / 2)
    daily = drift_report(store, "f")  # UTC days: 22:00 to 02:00 is two of them
    assert [w.n for w in daily.windows] == [600, 600] and daily.since == T0 - 22 * HOUR
    one = drift_report(store, "f", windows=1)
    assert len(one.windows) == 1 and one.windows[0].role == "reference"
    assert any("one window only" in note for note in one.notes)


def test_guard_columns(store: Store) -> None:
    calm = Shape(pii=0.05, language={"de": 0.02})
    loud = Shape(pii=0.3, language={"de": 0.2, "fr": 0.1})
    traffic(store, [calm, calm, loud, loud])
    report = drift_report(store, "f", window=HOUR, columns=["language", "pii"])
    assert [c.name for c in report.columns] == ["language", "pii"]
    assert [w.drifted for w in report.windows] == [False, False, True, True]
    assert report.drifted_columns() == ["language", "pii"]
    last = report.windows[3].columns
    assert last["pii"].summary["rate"] == pytest.approx(0.3, abs=0.06)
    shares = last["language"].summary["shares"]
    assert isinstance(shares, dict) and set(shares) == {"allowed", "de", "fr"}
    ref_shares = report.reference_summary["language"]["shares"]
    assert isinstance(ref_shares, dict) and ref_shares["allowed"] > 0.9


def test_input_and_output_fields(store: Store) -> None:
    rng = np.random.default_rng(0)
    events: list[Event] = []
    for hour, (channel, amount) in enumerate([("web", 20.0), ("web", 20.0), ("app", 40.0)]):
        events += [Event(
            trace_id=f"e{hour}-{i}", ts=T0 + hour * HOUR + i, feature="f", version="v1",
            decision=Decision.ACCEPTED, confidence=0.9, latency_ms=10.0, timings_ms={},
            input_tokens=5, output_tokens=1, cost_usd=None, attempts=[], validations=[],
            input={"text": "x", "channel": channel, "amount": float(rng.normal(amount, 5)),
                   "meta": {"tier": "gold"}},
            output={"label": "a", "score": float(rng.random())}) for i in range(200)]
    write(store, events)
    report = drift_report(store, "f", window=HOUR, columns=[
        "input.channel", "input.amount", "input.meta.tier", "output.score:numeric",
        "input.missing", "cost_usd"])
    kinds = {c.name: c.kind for c in report.columns}
    assert kinds == {"input.channel": "categorical", "input.amount": "numeric",
                     "input.meta.tier": "categorical", "output.score": "numeric"}
    assert report.skipped == {"input.missing": "no input has a field missing",
                              "cost_usd": "no event has a known cost"}
    assert [w.drifted_columns for w in report.windows[1:]] == [[], ["input.channel", "input.amount"]]


def test_odd_values_are_read_row_by_row(store: Store) -> None:
    odd = [Event(trace_id=f"o{i}", ts=T0 + HOUR + i, feature="f", version="v1",
                 decision=Decision.ACCEPTED, confidence=None, latency_ms=1.0, timings_ms={},
                 input_tokens=1, output_tokens=1, cost_usd=None, attempts=[], validations=[],
                 input={"text": "hi", "n": "not a number" if i == 0 else i},
                 output={"label": "a\x1fb" if i == 0 else ["x", 1]}) for i in range(40)]
    base = [Event(trace_id=f"b{i}", ts=T0 + i, feature="f", version="v1",
                  decision=Decision.ACCEPTED, confidence=None, latency_ms=1.0, timings_ms={},
                  input_tokens=1, output_tokens=1, cost_usd=None, attempts=[], validations=[],
                  input={"text": "hi", "n": i}, output={"label": "a"}) for i in range(40)]
    write(store, odd + base)
    columns = drift_data.resolve_columns(["label", "input.n:numeric"], "text")
    frame = drift_read.read_events(store, "f", columns, T0, T0 + 2 * HOUR)
    assert frame.n == 80
    labels = frame.categories["label"]
    assert set(labels) == {"a", "a\x1fb", '["x",1]'}
    n = frame.values["input.n"]
    assert np.isnan(n).sum() == 1 and np.nansum(n) == 2 * sum(range(40))
    report = drift_report(store, "f", window=HOUR, columns=["label", "input.n:numeric"])
    assert report.windows[1].columns["label"].drifted


def test_parallel_slices_read_the_same(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    traffic(store, [BASE, DRIFT, BASE], n=200, start=T0,
            feature="f")
    one = drift_report(store, "f", window=HOUR, threads=1).to_json()
    monkeypatch.setattr(drift_read, "_PARALLEL_FROM", 10)
    monkeypatch.setattr(drift_read, "_SLICE_ROWS", 70)
    two = drift_report(store, "f", window=HOUR, threads=2).to_json()
    assert one["windows"] == two["windows"] and one["reference_summary"] == two["reference_summary"]


async def _champion_with_eval(tmp_path: Path) -> tuple[Keel, list[str]]:
    """Feature f whose champion v1 was evaluated on golden@1 (labels answered right)."""
    keel = Keel(label_spec(), settings_in(tmp_path))
    rng = np.random.default_rng(4)
    texts = [" ".join(rng.choice(WORDS, max(1, rng.poisson(10)))) + f" #{i}" for i in range(300)]
    labels = [str(rng.choice(["a", "b", "c"], p=[0.5, 0.3, 0.2])) for _ in texts]
    async with keel:
        DatasetStore(keel.store).commit(
            "golden", [Item.of({"text": t}, {"label": lab}) for t, lab in zip(texts, labels, strict=True)],
            actor="test")
        DatasetStore(keel.store).commit("other", [Item.of({"text": "only"}, {"label": "a"})],
                                        actor="test")
        Answers(keel, "p1", dict(zip(texts, labels, strict=True)))
        await EvalRunner(keel).run("f", "v1", "golden@1", actor="test")
    return keel, texts


async def test_the_champions_eval_data_as_reference(tmp_path: Path) -> None:
    keel, _ = await _champion_with_eval(tmp_path)
    traffic(keel.store, [Shape(words=11), Shape(words=11, weights=(0.1, 0.2, 0.7))], seed=9)
    columns = ["text_length", "label", "latency_ms", "language"]
    report = drift_report(keel.store, "f", window=HOUR, reference="champion", columns=columns)
    assert report.reference.kind == "champion" and report.reference.n == 300
    assert report.reference.dataset == "golden@1" and report.reference.eval_run is not None
    assert "golden@1" in report.reference.description
    assert [c.name for c in report.columns] == ["text_length", "label"]
    assert set(report.skipped) == {"latency_ms", "language"}
    assert "reference=window" in report.skipped["latency_ms"]
    assert [w.role for w in report.windows] == ["tested", "tested"]
    assert [w.drifted_columns for w in report.windows] == [[], ["label"]]
    # the same dataset named explicitly finds the champion's run on it
    by_name = drift_report(keel.store, "f", window=HOUR, reference="dataset:golden", columns=columns)
    assert by_name.reference.eval_run == report.reference.eval_run
    assert [w.drifted_columns for w in by_name.windows] == [[], ["label"]]
    # a dataset the champion was never evaluated on: inputs only
    other = drift_report(keel.store, "f", window=HOUR, reference="dataset:other@1", columns=columns)
    assert other.reference.eval_run is None
    assert "no finished eval run on other@1" in other.skipped["label"]
    with pytest.raises(DatasetNotFound):
        drift_report(keel.store, "f", reference="dataset:nope@1")


def test_a_champion_without_an_eval_run(store: Store) -> None:
    traffic(store, [BASE])
    with pytest.raises(InvalidRequest) as err:
        drift_report(store, "f", reference="champion", champion="v1")
    assert err.value.param == "reference" and "no finished eval run" in err.value.message
    with pytest.raises(InvalidRequest, match="has no champion"):
        drift_report(store, "f", reference="champion")


def test_an_empty_reference_window(store: Store) -> None:
    traffic(store, [BASE, DRIFT])
    report = drift_report(store, "f", window=HOUR, since=T0 - HOUR)
    assert [w.n for w in report.windows] == [0, 300, 300]
    assert [w.role for w in report.windows] == ["reference", "untested", "untested"]
    assert not report.alert and "has no events: nothing could be tested" in report.notes[0]


def test_a_feature_without_events(store: Store) -> None:
    report = drift_report(store, "nothing", window=HOUR)
    assert report.windows == [] and not report.alert
    assert report.notes == ["no events of 'nothing' in this range"]
    assert orjson.loads(orjson.dumps(report.to_json()))["windows"] == []


def test_the_json_a_chart_is_drawn_from(store: Store) -> None:
    traffic(store, [BASE, BASE, DRIFT])
    data = orjson.loads(orjson.dumps(drift_report(store, "f", window=HOUR).to_json()))
    assert {"feature", "since", "until", "window_s", "reference", "thresholds", "columns",
            "skipped", "alert", "alert_active", "alert_since", "drifted_windows",
            "drifted_columns", "reference_summary", "windows", "notes", "timings"} <= set(data)
    window = data["windows"][2]
    assert {"index", "start", "end", "n", "role", "drifted", "alert", "drifted_columns",
            "columns"} <= set(window)
    cell = window["columns"]["text_length"]
    assert set(cell) == {"method", "statistic", "p_value", "p_adjusted", "threshold", "n",
                         "drifted", "summary", "note"}
    assert {"n", "mean", "p50", "p95"} <= set(cell["summary"])
    assert data["windows"][0]["columns"] == {} and data["windows"][0]["role"] == "reference"
    assert data["reference_summary"]["label"]["shares"]["a"] > 0.4
    assert data["timings"]["rows"] == 900


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"window": HOUR, "windows": 3}, "windows"),
    ({"window": -1.0}, "window"),
    ({"windows": 0}, "windows"),
    ({"since": T0 + 10, "until": T0}, "until"),
    ({"window": 1.0, "since": T0, "until": T0 + 5000}, "window"),
    ({"columns": ["nope"]}, "columns"),
    ({"columns": ["input.bad field"]}, "columns"),
    ({"reference": "yesterday"}, "reference"),
    ({"reference": "dataset:bad name!"}, "reference"),
])
def test_bad_parameters(store: Store, kwargs: dict[str, object], param: str) -> None:
    traffic(store, [BASE], n=40)
    with pytest.raises(InvalidRequest) as err:
        drift_report(store, "f", **kwargs)  # type: ignore[arg-type]
    assert err.value.param == param


def test_reference_parsing() -> None:
    assert Reference.parse(None) == Reference("window")
    assert Reference.parse("dataset:golden@3") == Reference("dataset", dataset="golden", number=3)
    assert Reference.parse("champion").kind == "champion"
    with pytest.raises(InvalidRequest) as err:
        Reference.parse("window", 1.0, None)
    assert err.value.param == "reference_end"
    with pytest.raises(InvalidRequest) as err:
        Reference.parse("window", 5.0, 1.0)
    assert err.value.param == "reference_end"
    with pytest.raises(InvalidRequest) as err:
        Reference.parse("champion", 1.0, 2.0)
    assert err.value.param == "reference_start"


def test_durations_and_times() -> None:
    assert parse_duration("90") == 90 and parse_duration("30m") == 1800
    assert parse_duration("1.5h") == 5400 and parse_duration("1d") == 86400
    assert parse_duration("2w") == 2 * 604800
    for bad in ("0", "-1h", "1y", "", "h"):
        with pytest.raises(InvalidRequest) as err:
            parse_duration(bad, "window")
        assert err.value.param == "window"
    now = 1_700_000_000.0
    assert parse_time("now", now=now) == now and parse_time("7d", now=now) == now - 7 * 86400
    assert parse_time("1699999200.5") == 1699999200.5
    assert parse_time("2023-11-14") == dt.datetime(2023, 11, 14, tzinfo=dt.UTC).timestamp()
    assert parse_time("2023-11-14T22:00:00+01:00") == T0 - HOUR
    with pytest.raises(InvalidRequest) as err:
        parse_time("last tuesday", "since")
    assert err.value.param == "since"
