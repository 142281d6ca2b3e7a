"""``keel data``: named, versioned datasets, straight on the store (no server).

``list`` and ``show`` look; ``import`` reads a JSONL, CSV or Parquet file into a new
version; ``commit`` snapshots the draft (e.g. review verdicts); ``export`` writes a
version to a file; ``diff``, ``verify`` and ``pin`` compare, check and pin versions.
See docs/datasets.md.
"""

from __future__ import annotations

import datetime as dt
import enum
import getpass
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.progress import BarColumn, Progress, TaskProgressColumn, TimeRemainingColumn
from rich.table import Table

from keel.cli.common import ConfigOpt, DatabaseOpt, console, fail, load, settings_for
from keel.control.dataset_io import Progress as ProgressFn
from keel.control.dataset_io import ReadOptions, detect_format, read_items, write_items
from keel.control.datasets import DatasetStore, DatasetVersion, SplitPolicy
from keel.errors import KeelError
from keel.store import open_store

app = typer.Typer(name="data", no_args_is_help=True, add_completion=False,
                  help="Named, versioned datasets: list, show, import, commit, export, diff, "
                       "verify, pin.")


class FormatChoice(enum.StrEnum):
    auto = "auto"
    jsonl = "jsonl"
    csv = "csv"
    parquet = "parquet"


RefArg = Annotated[str, typer.Argument(help="NAME@N, or NAME for its latest version")]
FormatOpt = Annotated[FormatChoice, typer.Option(help="file format; auto: from the extension")]
SplitOpt = Annotated[str | None, typer.Option(help="only this split (e.g. eval)")]


@contextmanager
def _errors() -> Iterator[None]:
    """Keel errors print one line and exit 2, never a traceback."""
    try:
        yield
    except KeelError as exc:
        fail(exc.message)


def _store(config: Path | None, database: str | None, *, create: bool = False) -> DatasetStore:
    settings = settings_for(config, database)
    if not create and not settings.has_store:
        fail(f"no store at {settings.store_name}; pass --db, or `keel data import` to create one")
    store = open_store(settings)
    store.migrate()
    return DatasetStore(store)


def actor() -> str:
    """Who runs the command, as recorded: ``cli:<OS user>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):  # no login name (e.g. a container with an unnamed uid)
        return "cli:unknown"


@contextmanager
def _progress(description: str) -> Iterator[ProgressFn]:
    with Progress("[progress.description]{task.description}", BarColumn(), TaskProgressColumn(),
                  TimeRemainingColumn(), console=console, transient=True,
                  disable=not console.is_terminal) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


@app.command("list")
def list_datasets(
    name: Annotated[str | None, typer.Argument(help="list this dataset's versions")] = None,
    config: ConfigOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """The datasets (or one dataset's versions)."""
    store = _store(config, database)
    if name is not None:
        with _errors():
            latest = store.version(name)
        table = Table(title=f"{name}: {latest.number} version(s)", title_justify="left")
        for column in ("version", "items", "splits", "digest", "created", "note"):
            table.add_column(column, overflow="fold", no_wrap=column not in {"splits", "note"},
                             min_width=12 if column == "note" else None,
                             justify="right" if column in {"version", "items"} else "left")
        for v in store.versions(name):
            table.add_row(str(v.number), str(v.items), _splits(v), _digest(v.digest),
                          _when(v.created_at, "%m-%d %H:%M"), v.note or "")
        console.print(table)
        return
    rows = store.datasets()
    if not rows:
        console.print("no datasets yet: `keel data import NAME FILE`, or review verdicts and "
                      "`keel data commit NAME`")
        return
    table = Table(title=f"{len(rows)} dataset(s)", title_justify="left")
    for column in ("name", "versions", "latest", "items", "digest", "draft"):
        table.add_column(column, justify="left" if column in {"name", "digest"} else "right")
    for row in rows:
        table.add_row(row["name"], str(row["versions"]), _opt(row["latest"]), _opt(row["items"]),
                      _digest(row["digest"]), str(row["draft"]))
    console.print(table)


@app.command("show")
def show(
    ref: RefArg,
    split: SplitOpt = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=0, help="items to print")] = 10,
    config: ConfigOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """A version's facts and its first items (ordered by item hash)."""
    store = _store(config, database)
    with _errors():
        version = store.resolve(ref)
        items = store.items(version.dataset, version.number, split)
    _facts(version)
    if not limit:
        return
    table = Table(title=f"{len(items)} item(s)" + (f" in {split}" if split else ""),
                  title_justify="left")
    for column in ("item", "split", "input", "expected", "source"):
        table.add_column(column, overflow="fold", no_wrap=column == "item")
    for item in items[:limit]:
        table.add_row(item.item_hash.removeprefix("sha256:")[:12], item.split, _short(item.input),
                      _short(item.expected), str(item.provenance.get("source", "-")))
    console.print(table)
    if len(items) > limit:
        console.print(f"… and {len(items) - limit} more (--limit)")


@app.command("import")
def import_file(
    name: Annotated[str, typer.Argument(help="dataset to add the file's items to")],
    file: Annotated[Path, typer.Argument(help="a .jsonl, .csv or .parquet file")],
    format: FormatOpt = FormatChoice.auto,
    split: Annotated[str | None, typer.Option(
        help="put every item without a split of its own in this split (e.g. golden)")] = None,
    split_policy: Annotated[str | None, typer.Option(
        help="split the other items by input hash, e.g. train=0.8,eval=0.2 [default]")] = None,
    text_column: Annotated[str, typer.Option(help="the column with the input text")] = "text",
    label_column: Annotated[str | None, typer.Option(
        help="the column whose value becomes expected {\"label\": value} [default: label, if any]")
    ] = None,
    note: Annotated[str | None, typer.Option(help="why (recorded with the version)")] = None,
    dedupe: Annotated[bool, typer.Option(
        "--dedupe/--no-dedupe", help="drop items whose normalized input is already there")] = True,
    replace: Annotated[bool, typer.Option(
        "--replace", help="the version holds only the file's items (default: the latest "
                          "version's items plus the file's)")] = False,
    config: ConfigOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """Read a file into a new version of NAME (one commit: all items or none)."""
    if split is not None and split_policy is not None:
        fail("give --split or --split-policy, not both")
    with _errors():
        policy = None if split_policy is None else SplitPolicy.parse(split_policy)
        options = ReadOptions(text_column, label_column, split or "")
        with _progress(f"reading {file.name}") as progress:
            items = read_items(file, format.value, options, progress)
        store = _store(config, database, create=True)
        before = store.versions(name)
        with _progress(f"committing {len(items)} item(s)"):
            version = store.commit(name, items, actor=actor(), note=note or f"import {file.name}",
                                   base=None if replace else "latest", dedupe=dedupe,
                                   split_policy=policy)
    kept = version.items - (0 if replace or not before else before[-1].items)
    _report(version, before, f"{len(items)} read from {file}, {kept} new, "
                             f"{len(items) - kept} duplicate(s) or already there")


@app.command("commit")
def commit(
    name: Annotated[str, typer.Argument(help="dataset whose draft (e.g. review verdicts) to snapshot")],
    note: Annotated[str | None, typer.Option(help="why (recorded with the version)")] = None,
    split_policy: Annotated[str | None, typer.Option(
        help="split new items by input hash, e.g. train=0.8,eval=0.2 [default]")] = None,
    config: ConfigOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """Snapshot NAME's draft examples not in its latest version into a new version."""
    store = _store(config, database)
    with _errors():
        policy = None if split_policy is None else SplitPolicy.parse(split_policy)
        before = store.versions(name)
        version = store.commit(name, actor=actor(), note=note, split_policy=policy)
    kept = version.items - (before[-1].items if before else 0)
    _report(version, before, f"{kept} new item(s) from the draft")


@app.command("export")
def export(
    ref: RefArg,
    file: Annotated[Path, typer.Argument(help="where to write (.jsonl, .csv or .parquet)")],
    split: SplitOpt = None,
    format: FormatOpt = FormatChoice.auto,
    config: ConfigOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """Write a version's items (ordered by item hash) to a file."""
    store = _store(config, database)
    with _errors():
        detect_format(file, format.value)
        version = store.resolve(ref)
        items = store.items(version.dataset, version.number, split)
        with _progress(f"writing {file.name}") as progress:
            count = write_items(items, file, format.value, progress)
    console.print(f"wrote {count} item(s) of {version.ref}" + (f" ({split})" if split else "")
                  + f" to {file}", highlight=False)


@app.command("diff")
def diff(
    old: Annotated[str, typer.Argument(help="NAME@A")],
    new: Annotated[str, typer.Argument(help="NAME@B")],
    config: ConfigOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """Items added, removed and moved to another split from one version to another."""
    store = _store(config, database)
    with _errors():
        a, b = store.resolve(old), store.resolve(new)
        d = store.diff(a, b)
    console.print(f"{a.ref} -> {b.ref}: {d.added} added, {d.removed} removed, {d.moved} moved to "
                  f"another split, {d.unchanged} unchanged", highlight=False)


@app.command("verify")
def verify(ref: RefArg, config: ConfigOpt = None, database: DatabaseOpt = None) -> None:
    """Recompute a version's item hashes and digest from the store (exit 1 if they differ)."""
    store = _store(config, database)
    with _errors():
        version = store.resolve(ref)
        ok = store.verify(version.dataset, version.number)
    if not ok:
        fail(f"{version.ref} does not match its digest {version.digest}: its stored items were "
             "changed", code=1)
    console.print(f"ok: {version.ref} matches its digest {version.digest}", highlight=False)


@app.command("pin")
def pin(
    feature: Annotated[str, typer.Argument(help="feature whose eval gate uses the version")],
    ref: Annotated[str, typer.Argument(help="NAME@N (NAME: its latest version now)")],
    config: ConfigOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """Pin the dataset version FEATURE's eval gate runs on."""
    settings = settings_for(config, database)
    spec = load(settings)
    if feature not in spec.features:
        fail(f"no feature {feature!r} in {settings.config}; features: {', '.join(spec.features)}")
    store = _store(config, database)
    with _errors():
        version = store.resolve(ref)
        store.pin(feature, version.dataset, version.number, actor=actor())
    console.print(f"pinned {feature} to {version.ref} ({version.digest})", highlight=False)


def _report(version: DatasetVersion, before: list[DatasetVersion], counts: str) -> None:
    if before and version.number <= before[-1].number:
        console.print(f"no new version: the result is {version.ref}, which exists ({counts})",
                      highlight=False)
        return
    console.print(f"committed {version.ref}: {version.items} item(s) ({_splits(version)}), "
                  f"{version.digest} ({counts})", highlight=False)


def _facts(version: DatasetVersion) -> None:
    facts = Table.grid(padding=(0, 2))
    facts.add_row("version", version.ref)
    facts.add_row("digest", version.digest)
    facts.add_row("items", f"{version.items} ({_splits(version)})")
    facts.add_row("parent", _opt(version.parent))
    facts.add_row("created", f"{_when(version.created_at)} by {version.created_by}")
    if version.note:
        facts.add_row("note", version.note)
    console.print(facts)


def _splits(version: DatasetVersion) -> str:
    return ", ".join(f"{name} {count}" for name, count in version.splits.items())


def _digest(digest: str | None) -> str:
    return "-" if digest is None else digest.removeprefix("sha256:")[:12]


def _opt(value: int | None) -> str:
    return "-" if value is None else str(value)


def _when(ts: float, form: str = "%Y-%m-%d %H:%M:%S") -> str:
    return dt.datetime.fromtimestamp(ts).strftime(form)


def _short(value: Any, width: int = 50) -> str:
    if isinstance(value, dict) and len(value) == 1 and isinstance(next(iter(value.values())), str):
        text = str(next(iter(value.values())))
    else:
        text = orjson.dumps(value).decode()
    return text if len(text) <= width else text[: width - 1] + "…"
