"""``keel data``: every command through CliRunner, on a temporary store."""

from __future__ import annotations

import getpass
import os
from pathlib import Path

import orjson
import pytest
import typer
from typer.testing import CliRunner

from keel.cli import data
from keel.cli.common import console
from keel.control.datasets import DatasetSink, DatasetStore, Provenance
from tests.backends import store_at
from tests.conftest import SHARED_DATA

runner = CliRunner()
cli = typer.Typer()
cli.add_typer(data.app, name="data")

ROOT = Path(__file__).resolve().parents[2]
BANKING77 = ROOT / os.environ.get("KEEL_BANKING77_DIR", str(SHARED_DATA))

CONFIG = """
providers:
  up: {type: openai, base_url: "http://127.0.0.1:9/v1"}
features:
  triage:
    output: {kind: label, labels: [billing, shipping, other]}
    versions: {v1: {provider: up, model: fake-model}}
    aliases: {champion: v1}
"""

LINES = [
    {"text": "Where is my refund?", "label": "billing"},
    {"text": "where is my   REFUND?", "label": "billing"},  # a duplicate once normalized
    {"text": "My parcel is late", "label": "shipping", "split": "golden"},
    {"input": {"text": "Cancel my order", "lang": "en"}, "expected": {"label": "other"}},
    {"text": "hello there", "label": "other", "metadata": {"channel": "chat"}},
]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(console, "width", 200)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keel.yaml").write_text(CONFIG)
    (tmp_path / "tickets.jsonl").write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in LINES))
    return tmp_path


def run(env: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(cli, ["data", *args, "--config", str(env / "keel.yaml"),
                                 "--db", str(env / "keel.db")])
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def store(env: Path) -> DatasetStore:
    return DatasetStore(store_at(env / "keel.db"))


def test_import_show_list_export_verify(env: Path) -> None:
    code, out = run(env, "import", "tickets", "tickets.jsonl")
    assert code == 0, out
    assert "committed tickets@1: 4 item(s)" in out and "5 read from tickets.jsonl, 4 new, 1 dup" in out
    v1 = store(env).version("tickets", 1)
    assert v1.created_by == f"cli:{getpass.getuser()}" and v1.note == "import tickets.jsonl"
    assert v1.splits["golden"] == 1

    code, out = run(env, "list")
    assert code == 0 and "tickets" in out and v1.digest[7:19] in out
    code, out = run(env, "show", "tickets", "--limit", "2")
    assert code == 0, out
    assert v1.digest in out and "4 item(s)" in out and "… and 2 more" in out
    code, out = run(env, "show", "tickets@1", "--split", "golden")
    assert code == 0 and "My parcel is late" in out and "Where is my refund" not in out

    for suffix in ("jsonl", "csv", "parquet"):
        code, out = run(env, "export", "tickets@1", f"out.{suffix}")
        assert code == 0 and f"wrote 4 item(s) of tickets@1 to out.{suffix}" in out, out
        code, out = run(env, "import", f"copy-{suffix}", f"out.{suffix}", "--replace")
        assert code == 0, out
        assert store(env).version(f"copy-{suffix}").digest == v1.digest
    code, out = run(env, "export", "tickets", "golden.csv", "--split", "golden")
    assert code == 0 and "wrote 1 item(s) of tickets@1 (golden)" in out
    assert (env / "golden.csv").read_text().count("\n") == 2

    code, out = run(env, "verify", "tickets")
    assert code == 0 and f"ok: tickets@1 matches its digest {v1.digest}" in out
    conn = store_at(env / "keel.db").connect()
    with conn:
        conn.execute("UPDATE dataset_members SET split = 'train' WHERE split = 'golden'")
    conn.close()
    code, out = run(env, "verify", "tickets@1")
    assert code == 1 and "tickets@1 does not match its digest" in out


def test_reimport_is_the_same_version_and_versions_grow(env: Path) -> None:
    assert run(env, "import", "t", "tickets.jsonl")[0] == 0
    code, out = run(env, "import", "t", "tickets.jsonl")
    assert code == 0 and "no new version: the result is t@1, which exists" in out
    (env / "more.csv").write_text("text,label,priority\nRefund please,billing,high\n"
                                  "WHERE IS MY REFUND?,billing,low\n")
    code, out = run(env, "import", "t", "more.csv", "--split", "eval", "--note", "batch 2")
    assert code == 0 and "committed t@2: 5 item(s)" in out and "2 read" in out and "1 new" in out
    v2 = store(env).version("t", 2)
    assert (v2.parent, v2.note) == (1, "batch 2")
    code, out = run(env, "diff", "t@1", "t@2")
    assert code == 0 and "t@1 -> t@2: 1 added, 0 removed, 0 moved to another split, 4 unchanged" in out
    code, out = run(env, "import", "t", "more.csv", "--no-dedupe", "--split-policy", "eval=1")
    assert code == 0 and "committed t@3: 6 item(s)" in out
    code, out = run(env, "list", "t")
    assert code == 0 and "t: 3 version(s)" in out and "batch 2" in out


def test_commit_snapshots_the_draft_of_review_verdicts(env: Path) -> None:
    sqlite = store_at(env / "keel.db")
    sqlite.migrate()
    sink = DatasetSink(sqlite)
    for i, verdict in enumerate(["approve", "reject", "edit"]):
        provenance: Provenance = {"trace_id": f"t{i}", "version": "v1", "reviewers": ["ann"],
                                  "time": 1.0, "original_output": {"label": "billing"},
                                  "verdict": verdict, "source": "review"}
        sink.add("triage-reviews", f"t{i}", {"text": f"ticket {i}"},
                 None if verdict == "reject" else {"label": "billing"}, {"verdict": verdict},
                 provenance)
    code, out = run(env, "list")
    assert code == 0 and "triage-reviews" in out
    code, out = run(env, "commit", "triage-reviews", "--note", "week 1")
    assert code == 0 and "committed triage-reviews@1: 3 item(s)" in out, out
    items = store(env).items("triage-reviews", 1)
    rejected = [i for i in items if i.expected is None]
    assert len(rejected) == 1 and rejected[0].split != "train"
    code, out = run(env, "commit", "triage-reviews")
    assert code == 0 and "no new version" in out


def test_pin(env: Path) -> None:
    assert run(env, "import", "t", "tickets.jsonl")[0] == 0
    code, out = run(env, "pin", "triage", "t@1")
    assert code == 0 and "pinned triage to t@1" in out
    assert store(env).pinned("triage") == ("t", 1)
    code, out = run(env, "pin", "nope", "t@1")
    assert code == 2 and "no feature 'nope'" in out and "features: triage" in out
    code, out = run(env, "pin", "triage", "t@2")
    assert code == 2 and "'t' has no version 2; its versions: 1" in out
    assert store(env).pinned("triage") == ("t", 1)


def test_a_malformed_file_commits_nothing(env: Path) -> None:
    assert run(env, "import", "t", "tickets.jsonl")[0] == 0
    bad = env / "bad.jsonl"
    bad.write_bytes(b'{"text": "fine one", "label": "a"}\n' * 3 + b'{"text": "broken\n')
    code, out = run(env, "import", "t", "bad.jsonl")
    assert code == 2 and "bad.jsonl line 4: not valid JSON" in out
    assert [v.number for v in store(env).versions("t")] == [1]


@pytest.mark.parametrize(("args", "message"), [
    (("show", "ghost"), "no dataset 'ghost'; datasets: t"),
    (("show", "t@5"), "'t' has no version 5; its versions: 1"),
    (("show", "t@x"), "bad dataset reference 't@x'"),
    (("show", "t", "--split", "train"), "t@1 has no split 'train'; its splits: golden (1)"),
    (("diff", "t@1", "t@9"), "no version 9"),
    (("export", "t@1", "out.xml"), "cannot tell the format from the extension '.xml'"),
    (("commit", "ghost"), "no dataset 'ghost'"),
    (("import", "t", "missing.csv"), "missing.csv: no such file"),
    (("import", "t", "tickets.jsonl", "--split", "eval", "--split-policy", "eval=1"),
     "give --split or --split-policy, not both"),
    (("import", "t", "tickets.jsonl", "--split-policy", "train=0.9"), "must add up to 1"),
    (("import", "t", "tickets.jsonl", "--split", "Gold"), "bad split name 'Gold'"),
    (("import", "bad name", "tickets.jsonl"), "bad dataset name 'bad name'"),
])
def test_errors_are_one_line_and_exit_2(env: Path, args: tuple[str, ...], message: str) -> None:
    (env / "tickets.jsonl").write_bytes(b'{"text": "a", "label": "x", "split": "golden"}\n')
    assert run(env, "import", "t", "tickets.jsonl")[0] == 0
    code, out = run(env, *args)
    assert code == 2 and message in out, out
    assert out.strip().startswith("error:") and out.strip().count("\n") == 0


def test_file_errors(env: Path) -> None:
    (env / "empty.csv").write_text("")
    code, out = run(env, "import", "t", "empty.csv")
    assert code == 2 and "empty.csv: the file has no items" in out
    (env / "cols.csv").write_text("body,category\nhi,x\n")
    code, out = run(env, "import", "t", "cols.csv")
    assert code == 2 and "no column 'text' (columns: body, category)" in out
    code, out = run(env, "import", "t", "cols.csv", "--text-column", "body", "--label-column", "cat")
    assert code == 2 and "no column 'cat'" in out
    code, out = run(env, "import", "t", "cols.csv", "--text-column", "body", "--label-column",
                    "category")
    assert code == 0 and "committed t@1: 1 item(s)" in out
    assert store(env).items("t", 1)[0].expected == {"label": "x"}


@pytest.mark.sqlite_only  # a missing SQLite file; a server database is always there
def test_read_commands_need_a_store(env: Path) -> None:
    code, out = run(env, "list")
    assert code == 2 and "no store at" in out
    assert not (env / "keel.db").exists()
    (env / "keel.db").touch()
    code, out = run(env, "list")
    assert code == 0 and "no datasets yet" in out


@pytest.mark.slow
def test_banking77_import(env: Path) -> None:
    path = BANKING77 / "train.csv"
    code, out = run(env, "import", "banking77", str(path), "--label-column", "category")
    assert code == 0 and "committed banking77@1:" in out, out
    v1 = store(env).version("banking77", 1)
    assert v1.items > 9_000 and set(v1.splits) == {"train", "eval"}
    code, out = run(env, "import", "banking77", str(path), "--label-column", "category")
    assert code == 0 and "no new version: the result is banking77@1" in out
    code, out = run(env, "verify", "banking77")
    assert code == 0 and "ok: banking77@1" in out
