"""Dataset versions: content addressing, immutability, dedupe, splits, the draft, files."""

from __future__ import annotations

import csv
import hashlib
import os
import sys
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest

from keel.control.dataset_io import ReadOptions, read_items, write_items
from keel.control.datasets import (
    DatasetSink,
    DatasetStore,
    Item,
    Provenance,
    SplitPolicy,
    input_key,
    item_hash,
    members_digest,
)
from keel.errors import ConfigError, DatasetNotFound, InvalidRequest
from keel.store import Store
from tests.backends import store_at
from tests.conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parents[2]
BANKING77 = ROOT / os.environ.get("KEEL_BANKING77_DIR", str(SHARED_DATA))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = store_at(tmp_path / "keel.db")
    store.migrate()
    return store


@pytest.fixture
def ds(store: Store) -> DatasetStore:
    return DatasetStore(store)


def labelled(n: int, prefix: str = "text", split: str = "") -> list[Item]:
    return [Item.of({"text": f"{prefix} {i}"}, {"label": f"l{i % 3}"}, {"i": i},
                    {"source": "test"}, split) for i in range(n)]


def review_provenance(trace_id: str, verdict: str) -> Provenance:
    return {"trace_id": trace_id, "version": "v1", "reviewers": ["ann"], "time": 1.5,
            "original_output": {"label": "billing"}, "verdict": verdict, "source": "review"}


# --- content addressing ---------------------------------------------------------------


def test_item_hash_is_sha256_of_canonical_json() -> None:
    item = Item.of({"text": "hello", "lang": "en"}, {"label": "greet"}, {"b": 1, "a": [1.5, None]},
                   {"source": "test"})
    canonical = (b'{"expected":{"label":"greet"},"input":{"lang":"en","text":"hello"},'
                 b'"metadata":{"a":[1.5,null],"b":1},"provenance":{"source":"test"}}')
    assert item.item_hash == "sha256:" + hashlib.sha256(canonical).hexdigest()
    # key order does not matter; the split is not part of the content
    same = Item.of({"lang": "en", "text": "hello"}, {"label": "greet"}, {"a": [1.5, None], "b": 1},
                   {"source": "test"}, "eval")
    assert same.item_hash == item.item_hash


@pytest.mark.parametrize("change", ["input", "expected", "metadata", "provenance"])
def test_any_change_to_an_item_changes_its_hash(change: str) -> None:
    parts: dict[str, dict[str, Any]] = {"input": {"text": "a"}, "expected": {"label": "x"},
                                        "metadata": {"m": 1}, "provenance": {"source": "s"}}
    base = item_hash(parts["input"], parts["expected"], parts["metadata"], parts["provenance"])
    parts[change] = {**parts[change], "extra": 0}
    assert item_hash(parts["input"], parts["expected"], parts["metadata"],
                     parts["provenance"]) != base


def test_digest_is_deterministic_and_content_only(tmp_path: Path, ds: DatasetStore) -> None:
    items = labelled(30)
    v = ds.commit("a", items, actor="t")
    # another store, another name, another order: the same digest
    other = store_at(tmp_path / "other.db")
    other.migrate()
    w = DatasetStore(other).commit("b", list(reversed(items)), actor="u", note="x")
    assert v.digest == w.digest and v.number == w.number == 1
    pairs = sorted([i.item_hash, i.split] for i in ds.items("a", 1))
    assert v.digest == "sha256:" + hashlib.sha256(orjson.dumps(pairs)).hexdigest()
    members = {i.item_hash: i.split for i in ds.items("a", 1)}
    assert members_digest(members) == v.digest
    # one item moved to another split, or one more item: another digest
    moved = dict(members)
    first = next(iter(moved))
    moved[first] = "golden"
    assert members_digest(moved) != v.digest
    assert ds.commit("a", labelled(1, "new"), actor="t").digest != v.digest


def test_versions_are_immutable_and_verified(ds: DatasetStore, store: Store) -> None:
    v1 = ds.commit("d", labelled(10), actor="alice", note="first")
    before = ds.items("d", 1)
    v2 = ds.commit("d", labelled(5, "more"), actor="bob")
    assert (v2.number, v2.parent, v2.items) == (2, 1, 15)
    assert ds.items("d", 1) == before and ds.version("d", 1) == v1
    assert {i.item_hash for i in before} < {i.item_hash for i in ds.items("d", 2)}
    assert ds.verify("d", 1) and ds.verify("d", 2)
    assert (v1.created_by, v1.note, v2.created_by, v2.note) == ("alice", "first", "bob", None)

    conn = store.connect()
    with conn:  # an item's content changed behind Keel's back: both versions holding it fail
        conn.execute("UPDATE dataset_items SET expected = ? WHERE item_hash = ?",
                     ('{"label":"forged"}', before[0].item_hash))
    assert not ds.verify("d", 1) and not ds.verify("d", 2)
    with conn:
        conn.execute("UPDATE dataset_items SET expected = ? WHERE item_hash = ?",
                     (orjson.dumps(before[0].expected).decode(), before[0].item_hash))
    assert ds.verify("d", 1)
    with conn:  # a split changed
        conn.execute("UPDATE dataset_members SET split = 'golden' WHERE dataset = 'd' AND number = 1"
                     " AND item_hash = ?", (before[1].item_hash,))
    assert not ds.verify("d", 1) and ds.verify("d", 2)
    with conn:  # an item gone
        conn.execute("DELETE FROM dataset_items WHERE item_hash = ?", (before[2].item_hash,))
    assert not ds.verify("d", 2)
    conn.close()


def test_the_same_content_is_the_same_version(ds: DatasetStore) -> None:
    items = labelled(8)
    v1 = ds.commit("d", items, actor="t")
    assert ds.commit("d", items, actor="t") == v1  # nothing new
    assert ds.commit("d", items[:3], actor="t", dedupe=False) == v1  # already there
    v2 = ds.commit("d", labelled(2, "x"), actor="t")
    assert v2.number == 2
    assert ds.commit("d", [], actor="t", base=1) == v1  # built on 1 with nothing new: that is 1
    assert ds.commit("d", items, actor="t", base=None) == v1  # same content from scratch
    assert [v.number for v in ds.versions("d")] == [1, 2]


def test_concurrent_commits_get_one_number_each(ds: DatasetStore) -> None:
    with ThreadPoolExecutor(4) as pool:
        versions = list(pool.map(lambda k: ds.commit("d", labelled(50, f"w{k}"), actor="t"),
                                 range(8)))
    assert sorted(v.number for v in versions) == list(range(1, 9))
    assert ds.version("d").items == 400 and all(ds.verify("d", n) for n in range(1, 9))


# --- dedupe and splits -----------------------------------------------------------------


def test_dedupe_keeps_the_first_of_equal_normalized_inputs(ds: DatasetStore) -> None:
    first = Item.of({"text": "Where is  my CARD?"}, {"label": "card_arrival"})
    again = Item.of({"text": " where is my card? "}, {"label": "lost_card"})
    other = Item.of({"text": "where is my card"}, {"label": "card_arrival"})  # no "?"
    v1 = ds.commit("d", [first, again, other], actor="t")
    assert v1.items == 2
    assert {i.item_hash for i in ds.items("d", 1)} == {first.item_hash, other.item_hash}
    # against the base too: the duplicate of a base item is dropped, the base item stays
    dup = Item.of({"text": "WHERE IS MY\tcard?"}, {"label": "x"})
    assert ds.commit("d", [dup], actor="t") == v1
    v2 = ds.commit("d", [dup], actor="t", dedupe=False)
    assert v2.items == 3 and v2.number == 2
    assert input_key({"text": "A  b"}) == input_key({"text": "a b"}) != input_key({"text": "ab"})


def test_split_policy_is_deterministic_and_follows_its_weights() -> None:
    policy = SplitPolicy.parse("eval=0.2, train=0.8")
    assert policy == SplitPolicy() and str(policy) == "eval=0.2,train=0.8"
    keys = [input_key({"text": f"sentence {i}"}) for i in range(4000)]
    splits = [policy.assign(k) for k in keys]
    assert splits == [SplitPolicy().assign(k) for k in keys]
    share = Counter(splits)["train"] / len(splits)
    assert 0.77 < share < 0.83, share
    three = SplitPolicy.parse("train=0.7,eval=0.2,golden=0.1")
    counts = Counter(three.assign(k) for k in keys)
    assert set(counts) == {"train", "eval", "golden"} and 0.08 < counts["golden"] / 4000 < 0.12
    # unlabelled items draw from the other splits only, or go to eval
    assert {three.assign(k, labelled=False) for k in keys} == {"eval", "golden"}
    assert {SplitPolicy.parse("train=1").assign(k, labelled=False) for k in keys[:50]} == {"eval"}


@pytest.mark.parametrize("text", ["train=0.8", "train=0.8,eval=0.3", "train=x", "Train=1",
                                  "train=0.5,train=0.5", "", "train=1,eval=0"])
def test_bad_split_policies(text: str) -> None:
    with pytest.raises(InvalidRequest):
        SplitPolicy.parse(text)


def test_splits_are_stable_across_versions_and_never_move(ds: DatasetStore) -> None:
    v1 = ds.commit("d", labelled(500), actor="t")
    split_of = {i.item_hash: i.split for i in ds.items("d", 1)}
    assert set(split_of.values()) == {"train", "eval"}
    v2 = ds.commit("d", labelled(500, "later"), actor="t",
                   split_policy=SplitPolicy.parse("train=0.5,eval=0.5"))
    later = {i.item_hash: i.split for i in ds.items("d", v2.number)}
    assert all(later[h] == s for h, s in split_of.items())
    # the same input gets the same split in another dataset, whatever the order
    ds.commit("e", list(reversed(labelled(500))), actor="t")
    assert {i.item_hash: i.split for i in ds.items("e", 1)} == split_of
    # an explicit split is kept; a base item offered again in another split stays put
    golden = Item.of({"text": "gold"}, {"label": "g"}, split="golden")
    moved = Item.of(ds.items("d", 1)[0].input, ds.items("d", 1)[0].expected,
                    ds.items("d", 1)[0].metadata, ds.items("d", 1)[0].provenance, "golden")
    v3 = ds.commit("d", [golden, moved], actor="t", dedupe=False)
    final = {i.item_hash: i.split for i in ds.items("d", v3.number)}
    assert final[golden.item_hash] == "golden" and final[moved.item_hash] == split_of[moved.item_hash]
    assert v3.splits["golden"] == 1 and v1.items + 500 + 1 == v3.items


def test_an_unlabelled_item_is_never_in_train(ds: DatasetStore) -> None:
    with pytest.raises(InvalidRequest, match="cannot be in train"):
        ds.commit("d", [Item.of({"text": "x"}, None, split="train")], actor="t")
    unlabelled = [Item.of({"text": f"t{i}"}) for i in range(200)]
    v = ds.commit("d", unlabelled, actor="t", split_policy=SplitPolicy.parse("train=1"))
    assert v.splits == {"eval": 200}


# --- the draft --------------------------------------------------------------------------


def test_the_draft_of_review_verdicts_commits_to_versions(ds: DatasetStore, store: Store) -> None:
    sink = DatasetSink(store)
    for i, verdict in enumerate(["approve", "edit", "reject"] * 40):
        expected = None if verdict == "reject" else {"label": "billing" if verdict == "approve" else "other"}
        assert sink.add("triage-reviews", f"t{i}", {"text": f"ticket {i}"}, expected,
                        {"feature": "triage", "verdict": verdict}, review_provenance(f"t{i}", verdict))
    v1 = ds.commit("triage-reviews", actor="t")
    assert (v1.number, v1.items, v1.parent) == (1, 120, None)
    items = ds.items("triage-reviews", 1)
    rejected = [i for i in items if i.metadata["verdict"] == "reject"]
    assert len(rejected) == 40 and all(i.expected is None for i in rejected)
    assert all(i.split != "train" for i in rejected)
    assert all(i.provenance["source"] == "review" and i.provenance["trace_id"].startswith("t")
               for i in items)
    assert Counter(i.split for i in items if i.expected is not None)["train"] > 40
    # nothing new in the draft: the same version; new verdicts: a new version on top
    assert ds.commit("triage-reviews", actor="t") == v1
    sink.add("triage-reviews", "t-new", {"text": "a new ticket"}, {"label": "billing"},
             {"verdict": "approve"}, review_provenance("t-new", "approve"))
    sink.add("triage-reviews", "t-dup", {"text": "TICKET 1"}, {"label": "billing"},
             {"verdict": "approve"}, review_provenance("t-dup", "approve"))
    v2 = ds.commit("triage-reviews", actor="t", note="week 2")
    assert (v2.number, v2.items, v2.parent, v2.note) == (2, 121, 1, "week 2")
    assert ds.datasets() == [{"name": "triage-reviews", "versions": 2, "latest": 2,
                              "digest": v2.digest, "items": 121, "draft": 122}]


# --- lookups and errors -------------------------------------------------------------------


def test_lookup_errors_say_what_exists(ds: DatasetStore, store: Store) -> None:
    with pytest.raises(DatasetNotFound, match="no dataset 'nope'; there are no datasets yet"):
        ds.version("nope")
    ds.commit("alpha", labelled(3), actor="t")
    ds.commit("alpha", labelled(3, "b"), actor="t")
    DatasetSink(store).add("drafty", "e1", {"text": "x"}, None, {}, review_provenance("e1", "reject"))
    with pytest.raises(DatasetNotFound, match=r"no dataset 'nope'; datasets: alpha, drafty"):
        ds.resolve("nope@1")
    with pytest.raises(DatasetNotFound, match=r"'alpha' has no version 9; its versions: 1, 2"):
        ds.resolve("alpha@9")
    with pytest.raises(DatasetNotFound, match=r"no versions yet, only 1 draft example"):
        ds.version("drafty")
    with pytest.raises(DatasetNotFound, match=r"alpha@2 has no split 'golden'; its splits: "):
        ds.items("alpha", 2, "golden")
    with pytest.raises(DatasetNotFound, match="no dataset 'ghost'"):
        ds.commit("ghost", actor="t")
    with pytest.raises(DatasetNotFound, match="no version 7"):
        ds.commit("alpha", labelled(1, "z"), actor="t", base=7)
    assert ds.resolve("alpha").number == 2 and ds.resolve("alpha@1").number == 1
    assert ds.versions("nope") == []


@pytest.mark.parametrize("ref", ["", "alpha@", "alpha@x", "alpha@0", "@2", "alpha@1@2", "al pha",
                                 "alpha@-1"])
def test_bad_references(ds: DatasetStore, ref: str) -> None:
    with pytest.raises(InvalidRequest, match="bad dataset reference"):
        ds.resolve(ref)


def test_bad_commits(ds: DatasetStore) -> None:
    with pytest.raises(InvalidRequest, match="bad dataset name"):
        ds.commit("has space", labelled(1), actor="t")
    with pytest.raises(InvalidRequest, match="does not match its content"):
        good = labelled(1)[0]
        ds.commit("d", [Item(good.item_hash, {"text": "other"}, good.expected, {}, {})], actor="t")
    with pytest.raises(InvalidRequest, match="bad split name"):
        ds.commit("d", [Item.of({"text": "x"}, {"label": "a"}, split="Train")], actor="t")
    with pytest.raises(InvalidRequest, match="nothing to commit"):
        ds.commit("d", [], actor="t")
    with pytest.raises(InvalidRequest, match="must be a JSON object"):
        Item.of(["not", "a", "dict"], None)  # type: ignore[arg-type]
    assert ds.datasets() == []


def test_items_are_ordered_by_hash_and_filter_by_split(ds: DatasetStore) -> None:
    v = ds.commit("d", [*labelled(50), Item.of({"text": "g"}, {"label": "x"}, split="golden")],
                  actor="t")
    items = ds.items("d", 1)
    assert [i.item_hash for i in items] == sorted(i.item_hash for i in items)
    assert [i.split for i in ds.items("d", 1, "golden")] == ["golden"]
    assert len(ds.items("d", 1, "train")) == v.splits["train"]
    assert sum(v.splits.values()) == v.items == 51


def test_pins_and_diffs(ds: DatasetStore) -> None:
    v1 = ds.commit("d", labelled(10), actor="t")
    with pytest.raises(DatasetNotFound):
        ds.pin("triage", "d", 2, actor="t")
    assert ds.pinned("triage") is None
    ds.pin("triage", "d", 1, actor="t")
    assert ds.pinned("triage") == ("d", 1)
    v2 = ds.commit("d", labelled(4, "new"), actor="t")
    ds.pin("triage", "d", 2, actor="t")
    assert ds.pinned("triage") == ("d", 2)
    d = ds.diff(v1, v2)
    assert (d.added, d.removed, d.moved, d.unchanged) == (4, 0, 0, 10)
    v3 = ds.commit("d", labelled(3), actor="t", base=None)
    d = ds.diff(v2, v3)
    assert (d.added, d.removed, d.moved, d.unchanged) == (0, 11, 0, 3)


# --- files ---------------------------------------------------------------------------------


def mixed_items() -> list[Item]:
    return [
        Item.of({"text": "plain, with \"quotes\"\nand a newline"}, {"label": "a"}, {"n": 1},
                {"source": "review", "trace_id": "t1"}, "train"),
        Item.of({"text": "ünïcode ✓", "lang": "de"}, {"total": 10.5, "items": [1, 2]},
                {"nested": {"x": None}}, {"source": "api"}, "golden"),
        Item.of({"text": "rejected one"}, None, {"verdict": "reject"}, {"source": "review"}, "eval"),
        Item.of({"text": "label is a number"}, {"label": 7}, {}, {"source": "x"}, "eval"),
    ]


def plain_items() -> list[Item]:
    return [Item.of({"text": f"text {i}"}, None if i % 5 == 0 else {"label": f"l{i % 3}"},
                    {"i": str(i)}, {"source": "import", "file": "x.csv", "line": i + 2},
                    "eval" if i % 5 == 0 else "train") for i in range(20)]


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "parquet"])
@pytest.mark.parametrize("make", [mixed_items, plain_items])
def test_export_then_import_gives_the_same_version(ds: DatasetStore, tmp_path: Path, suffix: str,
                                                   make: Callable[[], list[Item]]) -> None:
    v = ds.commit("src", make(), actor="t")
    path = tmp_path / f"out.{suffix}"
    seen: list[tuple[int, int]] = []
    assert write_items(ds.items("src", 1), path, progress=lambda d, t: seen.append((d, t))) == v.items
    assert seen[-1] == (v.items, v.items)
    back = read_items(path)
    assert sorted(back, key=lambda i: i.item_hash) == ds.items("src", 1)
    w = ds.commit("copy", back, actor="t", base=None)
    assert w.digest == v.digest and ds.items("copy", 1) == ds.items("src", 1)
    if suffix == "csv":
        header = path.read_text().splitlines()[0]
        assert header.startswith("text,label," if make is plain_items else "input,expected,")
    again = tmp_path / f"again.{suffix}"
    write_items(ds.items("copy", 1), again)
    assert again.read_bytes() == path.read_bytes()


def test_a_foreign_csv_maps_columns(tmp_path: Path) -> None:
    path = tmp_path / "tickets.csv"
    path.write_text("text,category,priority,split\nmy card?,card_arrival,high,golden\n"
                    "\n\"a\nb\",top_up,,\nno label,,low,\n", encoding="utf-8")
    items = read_items(path, options=ReadOptions(label_column="category"))
    assert [(i.input, i.expected, i.metadata, i.provenance, i.split) for i in items] == [
        ({"text": "my card?"}, {"label": "card_arrival"}, {"priority": "high"},
         {"source": "import", "file": "tickets.csv", "line": 2}, "golden"),
        ({"text": "a\nb"}, {"label": "top_up"}, {}, {"source": "import", "file": "tickets.csv",
                                                     "line": 4}, ""),
        ({"text": "no label"}, None, {"priority": "low"},
         {"source": "import", "file": "tickets.csv", "line": 6}, ""),
    ]
    other = read_items(path, options=ReadOptions(label_column="category", split="eval"))
    assert [i.split for i in other] == ["golden", "eval", "eval"]


def test_jsonl_shorthands(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "hi", "label": "greet", "source_id": 4}\n\n'
                     b'{"input": {"q": "sum"}, "expected": {"total": 3}, "split": "golden"}\n')
    seen: list[tuple[int, int]] = []
    a, b = read_items(path, progress=lambda d, t: seen.append((d, t)))
    assert (a.input, a.expected, a.metadata) == ({"text": "hi"}, {"label": "greet"}, {"source_id": 4})
    assert a.provenance == {"source": "import", "file": "x.jsonl", "line": 1}
    assert (b.input, b.expected, b.split, b.provenance["line"]) == ({"q": "sum"}, {"total": 3},
                                                                    "golden", 3)
    assert seen[-1] == (path.stat().st_size,) * 2


@pytest.mark.parametrize(("name", "content", "options", "message"), [
    ("bad.jsonl", b'{"text": "a"}\n{"text": "b"}\n{"text": \n', None, r"bad.jsonl line 3: not valid JSON"),
    ("list.jsonl", b'{"text": "a"}\n[1, 2]\n', None, r"list.jsonl line 2: expected a JSON object, not list"),
    ("noinput.jsonl", b'{"label": "a"}\n', None, r"line 1: no input: give 'input' or 'text'"),
    ("split.jsonl", b'{"text": "a", "label": "x", "split": "Eval"}\n', None, r"line 1: bad split 'Eval'"),
    ("train.jsonl", b'{"text": "a", "split": "train"}\n', None, r"line 1: .*cannot be in train"),
    ("label.jsonl", b'{"text": "a"}\n', ReadOptions(label_column="category"),
     r"line 1: no field 'category'"),
    ("empty.jsonl", b"", None, r"empty.jsonl: the file has no items"),
    ("blank.jsonl", b"\n  \n", None, r"blank.jsonl: the file has no items"),
    ("empty.csv", b"", None, r"empty.csv: the file has no items"),
    ("header.csv", b"text,label\n", None, r"header.csv: the file has no items"),
    ("cols.csv", b"body,category\nx,y\n", None,
     r"cols.csv: no column 'text' \(columns: body, category\); name the text column with --text-column"),
    ("lab.csv", b"text,category\nx,y\n", ReadOptions(label_column="intent"),
     r"lab.csv: no column 'intent' \(columns: text, category\)"),
    ("fields.csv", b"text,label\na,b\nc,d,e\n", None, r"fields.csv line 3: 3 fields, but the header has 2"),
    ("emptytext.csv", b"text,label\na,b\n,d\n", None, r"emptytext.csv line 3: 'text' is empty"),
    ("json.csv", b"input,label\nnot json,b\n", None, r"json.csv line 2: 'input' is not JSON"),
    ("latin.csv", b"text,label\ncaf\xe9,b\n", None, r"latin.csv line 2: not UTF-8 text"),
    ("dup.csv", b"text,text\na,b\n", None, r"dup.csv: a column name appears twice"),
    ("notparquet.parquet", b"PAR1 but not really", None, r"notparquet.parquet: not a readable Parquet file"),
    ("data.txt", b"text\n", None, r"cannot tell the format from the extension '.txt'"),
])
def test_malformed_files_name_the_file_and_line(tmp_path: Path, name: str, content: bytes,
                                                options: ReadOptions | None, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InvalidRequest, match=message):
        read_items(path, options=options)


def test_missing_files_and_formats(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match=r"nope\.csv: no such file"):
        read_items(tmp_path / "nope.csv")
    with pytest.raises(InvalidRequest, match="not a file"):
        read_items(tmp_path, format="csv")
    with pytest.raises(InvalidRequest, match="unknown format 'xml'"):
        read_items(tmp_path / "a.csv", format="xml")
    with pytest.raises(InvalidRequest, match="no such directory"):
        write_items(labelled(1), tmp_path / "missing" / "out.jsonl")


def test_parquet_without_pyarrow_names_the_extra(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.parquet"
    write_items(labelled(2), path)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ConfigError, match=r"pip install 'keel\[data\]'"):
        read_items(path)
    with pytest.raises(ConfigError, match=r"pip install 'keel\[data\]'"):
        write_items(labelled(2), tmp_path / "y.parquet")


@pytest.mark.slow
def test_banking77_train_imports_and_reimports_to_the_same_version(ds: DatasetStore) -> None:
    path = BANKING77 / "train.csv"
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) > 10_000
    unique = {" ".join(r["text"].casefold().split()) for r in rows}
    items = read_items(path, options=ReadOptions(label_column="category"))
    assert len(items) == len(rows)
    assert items[0].input == {"text": rows[0]["text"]}
    assert items[0].expected == {"label": rows[0]["category"]}
    v1 = ds.commit("banking77", items, actor="t", note="train.csv")
    assert v1.items == len(unique) and sum(v1.splits.values()) == v1.items
    assert set(v1.splits) == {"train", "eval"} and 0.78 < v1.splits["train"] / v1.items < 0.82
    labels = Counter(i.expected["label"] for i in ds.items("banking77", 1))
    assert len(labels) == 77
    assert ds.verify("banking77", 1)
    again = ds.commit("banking77", read_items(path, options=ReadOptions(label_column="category")),
                      actor="t")
    assert again == v1
    fresh = ds.commit("banking77-copy", items, actor="t")
    assert fresh.digest == v1.digest
