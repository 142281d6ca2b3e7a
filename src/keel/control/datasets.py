"""Labelled examples and the immutable dataset versions made of them.

Two layers:

* the **draft** (``dataset_examples``): every producer of labelled data (the review
  queue first) writes through :class:`DatasetSink`. An example is keyed by
  ``(dataset, example_id)`` and written once: adding the same key again changes
  nothing, so a retried write never duplicates or rewrites an example.
* **versions** (``dataset_versions``, ``dataset_items``, ``dataset_members``):
  :meth:`DatasetStore.commit` snapshots the draft, or items read from a file, into a
  numbered version that never changes. Items are content-addressed (``item_hash`` is
  sha256 over the canonical JSON of input, expected, metadata and provenance) and
  shared between versions; a version's ``digest`` is sha256 over its sorted
  ``(item_hash, split)`` members, so the same content has the same digest anywhere.

Synchronous, like the store: async callers run it in a thread.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

import orjson

from keel.control import audit
from keel.errors import DatasetNotFound, InvalidRequest
from keel.store.db import Connection, Store
from keel.types import JSON

DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SPLIT_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_REF = re.compile(r"(?P<name>[^@]+)(?:@(?P<number>[0-9]+))?")


class Provenance(TypedDict):
    """Where an example came from. For review examples ``source`` is ``"review"``."""

    trace_id: str
    version: str | None
    reviewers: list[str]
    time: float  # when the label was decided
    original_output: JSON  # what the model answered
    verdict: str  # approve | edit | reject
    source: str


@dataclass(frozen=True, slots=True)
class Example:
    dataset: str
    example_id: str
    input: JSON
    expected: JSON  # None for a rejected output: a negative with no correct answer given
    metadata: dict[str, JSON]
    provenance: Provenance
    ts: float = field(default_factory=time.time)


class DatasetSink:
    def __init__(self, store: Store) -> None:
        self.store = store


    def add(self, dataset: str, example_id: str, input: JSON, expected: JSON,
            metadata: dict[str, JSON], provenance: Provenance) -> bool:
        """Write one example; False when ``(dataset, example_id)`` was already there."""
        example = Example(dataset, example_id, input, expected, metadata, provenance)
        with self.store.connection() as conn, conn:
            return self.write(conn, example)

    @staticmethod
    def write(conn: Connection, example: Example) -> bool:
        """Write inside the caller's transaction (e.g. the one closing a review item)."""
        if not example.dataset or not example.example_id:
            raise ValueError("an example needs a dataset name and an example id")
        cursor = conn.execute(
            "INSERT INTO dataset_examples (dataset, example_id, input, expected, metadata,"
            " provenance, ts) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (dataset, example_id) DO NOTHING",
            (example.dataset, example.example_id, _dumps(example.input),
             None if example.expected is None else _dumps(example.expected),
             _dumps(example.metadata), _dumps(example.provenance), example.ts))
        return bool(cursor.rowcount == 1)

    @staticmethod
    def replace(conn: Connection, example: Example) -> None:
        """Write or overwrite one draft example inside the caller's transaction: only for
        weak labels whose sender may change their mind (end-user feedback,
        :mod:`keel.control.feedback`). Review examples are written once (:meth:`write`);
        versions already committed never change either way."""
        if not example.dataset or not example.example_id:
            raise ValueError("an example needs a dataset name and an example id")
        conn.execute(
            "INSERT INTO dataset_examples (dataset, example_id, input, expected, metadata,"
            " provenance, ts) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (dataset, example_id) DO UPDATE SET input = excluded.input,"
            " expected = excluded.expected, metadata = excluded.metadata,"
            " provenance = excluded.provenance, ts = excluded.ts",
            (example.dataset, example.example_id, _dumps(example.input),
             None if example.expected is None else _dumps(example.expected),
             _dumps(example.metadata), _dumps(example.provenance), example.ts))

    def list(self, dataset: str, limit: int = 100, offset: int = 0) -> list[Example]:
        """Examples of one dataset, oldest first."""
        with self.store.connection() as conn:
            rows = conn.execute(
                "SELECT * FROM dataset_examples WHERE dataset = ? ORDER BY ts, example_id"
                " LIMIT ? OFFSET ?", (dataset, limit, offset)).fetchall()
        return [_example(row) for row in rows]

    def get(self, dataset: str, example_id: str) -> Example | None:
        with self.store.connection() as conn:
            row = conn.execute("SELECT * FROM dataset_examples WHERE dataset = ? AND example_id = ?",
                               (dataset, example_id)).fetchone()
        return None if row is None else _example(row)

    def count(self, dataset: str) -> int:
        with self.store.connection() as conn:
            row = conn.execute("SELECT COUNT(*) FROM dataset_examples WHERE dataset = ?",
                               (dataset,)).fetchone()
        return int(row[0])


def _example(row: Any) -> Example:
    return Example(row["dataset"], row["example_id"], orjson.loads(row["input"]),
                   None if row["expected"] is None else orjson.loads(row["expected"]),
                   orjson.loads(row["metadata"]), orjson.loads(row["provenance"]), row["ts"])


def _dumps(value: object) -> str:
    return orjson.dumps(value).decode()


# --- content addressing --------------------------------------------------------------


def canonical(value: object) -> bytes:
    """The canonical JSON of ``value``: keys sorted, no whitespace (the same bytes anywhere)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        raise InvalidRequest(f"not JSON: {exc}") from None


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def item_hash(input: Mapping[str, JSON], expected: JSON, metadata: Mapping[str, JSON],
              provenance: Mapping[str, JSON]) -> str:
    """``sha256:<hex>`` of the canonical JSON of an item's content (its split is not part of it)."""
    return _sha256(canonical({"input": input, "expected": expected, "metadata": metadata,
                              "provenance": provenance}))


def members_digest(members: Mapping[str, str]) -> str:
    """A version's digest: ``sha256:<hex>`` of the canonical JSON of its sorted
    ``[item_hash, split]`` pairs."""
    return _sha256(canonical(sorted(members.items())))


def normalized(value: JSON) -> JSON:
    """What dedupe compares: every string casefolded with its whitespace collapsed."""
    if isinstance(value, str):
        return " ".join(value.casefold().split())
    if isinstance(value, dict):
        return {k: normalized(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [normalized(v) for v in value]
    return value


def input_key(input: Mapping[str, JSON]) -> str:
    """The hex sha256 of an input's normalized canonical JSON: equal for duplicates."""
    return hashlib.sha256(canonical(normalized(dict(input)))).hexdigest()


@dataclass(frozen=True, slots=True)
class Item:
    """One dataset item as stored in a version. Make new ones with :meth:`Item.of`."""

    item_hash: str  # see item_hash()
    input: dict[str, JSON]
    expected: JSON  # None: no correct answer known (e.g. a rejected output); never in train
    metadata: dict[str, JSON]
    provenance: dict[str, JSON]  # {"source": "review", "trace_id": ...} or {"source": "import", ...}
    split: str = ""  # "" only before a commit, which then asks the split policy

    @classmethod
    def of(cls, input: dict[str, JSON], expected: JSON = None, metadata: dict[str, JSON] | None = None,
           provenance: dict[str, JSON] | None = None, split: str = "") -> Item:
        metadata = {} if metadata is None else metadata
        provenance = {} if provenance is None else provenance
        for name, value in (("input", input), ("metadata", metadata), ("provenance", provenance)):
            if not isinstance(value, dict):
                raise InvalidRequest(f"an item's {name} must be a JSON object, not {_kind(value)}")
        return cls(item_hash(input, expected, metadata, provenance), input, expected, metadata,
                   provenance, split)


@dataclass(frozen=True, slots=True)
class DatasetVersion:
    dataset: str
    number: int
    digest: str  # see members_digest()
    items: int
    splits: dict[str, int]
    parent: int | None  # the version it was built on
    note: str | None
    created_by: str
    created_at: float

    @property
    def ref(self) -> str:
        return f"{self.dataset}@{self.number}"


@dataclass(frozen=True, slots=True)
class DatasetDiff:
    added: int  # items in the second version only
    removed: int  # items in the first version only
    moved: int  # items in both, in another split
    unchanged: int


class DatasetSummary(TypedDict):
    name: str
    versions: int
    latest: int | None
    digest: str | None
    items: int | None  # of the latest version
    draft: int  # examples in the draft


@dataclass(frozen=True, slots=True)
class SplitPolicy:
    """Gives an item without a split one, from the hash of its normalized input: an input
    lands in the same split in every version and on every machine, and near-duplicates
    share a split (so they never straddle train and eval). Weights must add up to 1."""

    weights: tuple[tuple[str, float], ...] = (("train", 0.8), ("eval", 0.2))

    def __post_init__(self) -> None:
        names = [name for name, _ in self.weights]
        if not names:
            raise InvalidRequest("a split policy needs at least one split")
        for name, weight in self.weights:
            if not SPLIT_NAME.fullmatch(name):
                raise InvalidRequest(f"bad split name {name!r}: [a-z][a-z0-9_-]*")
            if not 0 < weight <= 1:
                raise InvalidRequest(f"split {name}: weight {weight:g} is not in (0, 1]")
        if len(set(names)) != len(names):
            raise InvalidRequest(f"a split is named twice in {self}")
        total = sum(weight for _, weight in self.weights)
        if abs(total - 1) > 1e-6:
            raise InvalidRequest(f"split weights must add up to 1, not {total:g} ({self})")
        object.__setattr__(self, "weights", tuple(sorted(self.weights)))  # canonical order

    @classmethod
    def parse(cls, text: str) -> SplitPolicy:
        """``"train=0.8,eval=0.2"``."""
        pairs: list[tuple[str, float]] = []
        for part in text.split(","):
            name, _, weight = part.partition("=")
            try:
                pairs.append((name.strip(), float(weight)))
            except ValueError:
                raise InvalidRequest(f"bad split policy {text!r}: expected NAME=WEIGHT pairs, "
                                     "e.g. train=0.8,eval=0.2") from None
        return cls(tuple(pairs))

    def assign(self, key: str, *, labelled: bool = True) -> str:
        """The split for an item whose :func:`input_key` is ``key``. Unlabelled items
        (expected None) draw from the other splits only, and go to eval when there are none."""
        weights = [p for p in self.weights if labelled or p[0] != "train"]
        if not weights:
            return "eval"
        point = int(key[:16], 16) / 16**16 * sum(weight for _, weight in weights)
        for name, weight in weights:
            if point < weight:
                return name
            point -= weight
        return weights[-1][0]

    def __str__(self) -> str:
        return ",".join(f"{name}={weight:g}" for name, weight in self.weights)


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``"name@3"`` -> ``("name", 3)``; ``"name"`` -> ``("name", None)`` (the latest)."""
    match = _REF.fullmatch(ref.strip())
    digits = None if match is None else match["number"]
    # a version number is a 64-bit integer in the store: a longer one is no reference
    number = None if digits is None or len(digits.lstrip("0")) > 19 else int(digits)
    if (match is None or not DATASET_NAME.fullmatch(match["name"]) or number == 0
            or (digits is not None and (number is None or number >= 2**63))):
        raise InvalidRequest(f"bad dataset reference {ref!r}: expected NAME or NAME@N "
                             "(N = 1, 2, …), e.g. triage-reviews@3", param="dataset")
    return match["name"], number


class DatasetStore:
    """Named datasets with numbered, immutable, content-addressed versions."""

    def __init__(self, store: Store) -> None:
        self.store = store


    def commit(self, dataset: str, items: Iterable[Item] | None = None, *, actor: str,
               note: str | None = None, base: int | Literal["latest"] | None = "latest",
               dedupe: bool = True, split_policy: SplitPolicy | None = None) -> DatasetVersion:
        """A new version: the ``base`` version's items plus ``items`` (default: the draft
        examples not in the base yet), in one transaction.

        ``dedupe`` drops a new item whose normalized input (:func:`input_key`) is already in
        the version, keeping the first. A new item without a split gets one from
        ``split_policy`` (default train 0.8 / eval 0.2); items never change split. When the
        result has the digest of an existing version, that version is returned.
        """
        if not DATASET_NAME.fullmatch(dataset):
            raise InvalidRequest(f"bad dataset name {dataset!r}: up to 128 letters, digits, '.', "
                                 "'_' or '-', starting with a letter or digit", param="dataset")
        if not actor:
            raise InvalidRequest("a commit needs an actor", param="actor")
        new = None if items is None else [_checked(item) for item in items]
        with self.store.transaction("datasets") as conn:  # numbers are not raced
            return self._commit(conn, dataset, new, base, dedupe, split_policy or SplitPolicy(),
                                actor, note)

    def _commit(self, conn: Connection, dataset: str, new: list[Item] | None,
                base: int | Literal["latest"] | None, dedupe: bool, policy: SplitPolicy,
                actor: str, note: str | None) -> DatasetVersion:
        if isinstance(base, str):
            if base != "latest":
                raise InvalidRequest(f"base must be a version number, None or 'latest', not {base!r}")
            row = self._row(conn, dataset, None)
        else:
            row = None if base is None else self._row(conn, dataset, base)
            if base is not None and row is None:
                raise self._not_found(conn, dataset, base)
        parent = None if row is None else _version(row)
        members = {} if parent is None else self._members(conn, dataset, parent.number)
        if new is None:
            new = [item for item in self._draft(conn, dataset) if item.item_hash not in members]
            if not new and not members and not self._names(conn, dataset):
                raise self._not_found(conn, dataset, None)
        seen = self._input_keys(conn, dataset, parent.number) if dedupe and parent else set()
        fresh: list[Item] = []
        for item in new:
            if item.item_hash in members:
                continue  # the same item: it keeps its split
            key = input_key(item.input)
            if dedupe:
                if key in seen:
                    continue
                seen.add(key)
            members[item.item_hash] = item.split or policy.assign(
                key, labelled=item.expected is not None)
            fresh.append(item)
        if not members:
            raise InvalidRequest(f"nothing to commit to {dataset!r}: no items")
        digest = members_digest(members)
        same = conn.execute("SELECT * FROM dataset_versions WHERE dataset = ? AND digest = ?",
                            (dataset, digest)).fetchone()
        if same is not None:
            return _version(same)
        last = conn.execute("SELECT MAX(number) FROM dataset_versions WHERE dataset = ?",
                            (dataset,)).fetchone()[0]
        splits: dict[str, int] = {}
        for split in members.values():
            splits[split] = splits.get(split, 0) + 1
        version = DatasetVersion(dataset, (last or 0) + 1, digest, len(members),
                                 dict(sorted(splits.items())), None if parent is None else parent.number,
                                 note, actor, time.time())
        conn.executemany(
            "INSERT INTO dataset_items (item_hash, input, expected, metadata, provenance)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (item_hash) DO NOTHING",
            [(i.item_hash, _canonical_text(i.input),
              None if i.expected is None else _canonical_text(i.expected),
              _canonical_text(i.metadata), _canonical_text(i.provenance)) for i in fresh])
        conn.executemany(
            "INSERT INTO dataset_members (dataset, number, item_hash, split) VALUES (?, ?, ?, ?)",
            [(dataset, version.number, h, split) for h, split in members.items()])
        conn.execute(
            "INSERT INTO dataset_versions (dataset, number, digest, items, splits, parent, note,"
            " created_by, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (dataset, version.number, digest, version.items, _canonical_text(version.splits),
             version.parent, note, actor, version.created_at))
        return version

    def version(self, dataset: str, number: int | None = None) -> DatasetVersion:
        """Version ``number`` of ``dataset`` (None: the latest)."""
        with self.store.connection() as conn:
            row = self._row(conn, dataset, number)
            if row is None:
                raise self._not_found(conn, dataset, number)
        return _version(row)

    def resolve(self, ref: str) -> DatasetVersion:
        """``"name@3"``, or ``"name"`` for its latest version."""
        return self.version(*parse_ref(ref))

    def items(self, dataset: str, number: int, split: str | None = None) -> list[Item]:
        """The items of one version (of one split), ordered by item_hash."""
        version = self.version(dataset, number)
        if split is not None and split not in version.splits:
            have = ", ".join(f"{name} ({count})" for name, count in version.splits.items())
            raise DatasetNotFound(f"{version.ref} has no split {split!r}; its splits: {have}")
        sql = ("SELECT m.item_hash, m.split, i.input, i.expected, i.metadata, i.provenance"
               " FROM dataset_members m JOIN dataset_items i ON i.item_hash = m.item_hash"
               " WHERE m.dataset = ? AND m.number = ?")
        args: tuple[Any, ...] = (dataset, number)
        if split is not None:
            sql, args = sql + " AND m.split = ?", (*args, split)
        with self.store.connection() as conn:
            rows = conn.execute(sql + " ORDER BY m.item_hash", args).fetchall()
        return [Item(r["item_hash"], orjson.loads(r["input"]),
                     None if r["expected"] is None else orjson.loads(r["expected"]),
                     orjson.loads(r["metadata"]), orjson.loads(r["provenance"]), r["split"])
                for r in rows]

    def versions(self, dataset: str) -> list[DatasetVersion]:
        """Every version of ``dataset``, oldest first (empty when it has none)."""
        with self.store.connection() as conn:
            rows = conn.execute("SELECT * FROM dataset_versions WHERE dataset = ? ORDER BY number",
                                (dataset,)).fetchall()
        return [_version(row) for row in rows]

    def datasets(self) -> list[DatasetSummary]:
        """Every dataset with a version or a draft, by name."""
        with self.store.connection() as conn:
            latest = {r["dataset"]: r for r in conn.execute(
                "SELECT v.*, c.n FROM dataset_versions v JOIN (SELECT dataset, MAX(number) AS top,"
                " COUNT(*) AS n FROM dataset_versions GROUP BY dataset) c"
                " ON c.dataset = v.dataset AND c.top = v.number")}
            drafts = dict(conn.execute(
                "SELECT dataset, COUNT(*) FROM dataset_examples GROUP BY dataset").fetchall())
        out: list[DatasetSummary] = []
        for name in sorted(latest.keys() | drafts.keys()):
            row = latest.get(name)
            out.append({"name": name, "versions": 0 if row is None else row["n"],
                        "latest": None if row is None else row["number"],
                        "digest": None if row is None else row["digest"],
                        "items": None if row is None else row["items"],
                        "draft": drafts.get(name, 0)})
        return out

    def diff(self, a: DatasetVersion, b: DatasetVersion) -> DatasetDiff:
        """What changed from version ``a`` to version ``b`` (of any datasets)."""
        with self.store.connection() as conn:
            old = self._members(conn, a.dataset, a.number)
            new = self._members(conn, b.dataset, b.number)
        both = old.keys() & new.keys()
        moved = sum(old[h] != new[h] for h in both)
        return DatasetDiff(len(new.keys() - old.keys()), len(old.keys() - new.keys()), moved,
                           len(both) - moved)

    def pin(self, feature: str, dataset: str, number: int, *, actor: str) -> None:
        """The dataset version ``feature``'s eval gate uses when its gate names no version."""
        if not feature:
            raise InvalidRequest("pin needs a feature name", param="feature")
        self.version(dataset, number)
        with self.store.connection() as conn, conn:
            self.store.lock(conn, "audit")
            old = conn.execute("SELECT dataset, number FROM gate_pins WHERE feature = ?",
                               (feature,)).fetchone()
            conn.execute(
                "INSERT INTO gate_pins (feature, dataset, number, actor, ts) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (feature) DO UPDATE SET dataset = excluded.dataset,"
                " number = excluded.number, actor = excluded.actor, ts = excluded.ts",
                (feature, dataset, number, actor, time.time()))
            audit.append(conn, actor, "gate.pin", f"{feature}/gate",
                         {"from": None if old is None else f"{old[0]}@{old[1]}",
                          "to": f"{dataset}@{number}"})

    def pinned(self, feature: str) -> tuple[str, int] | None:
        with self.store.connection() as conn:
            row = conn.execute("SELECT dataset, number FROM gate_pins WHERE feature = ?",
                               (feature,)).fetchone()
        return None if row is None else (row[0], int(row[1]))

    def verify(self, dataset: str, number: int) -> bool:
        """Recompute every item hash and the digest from what is stored: False if anything
        was changed behind Keel's back."""
        version = self.version(dataset, number)
        with self.store.connection() as conn:
            rows = conn.execute(
                "SELECT m.item_hash, m.split, i.input, i.expected, i.metadata, i.provenance"
                " FROM dataset_members m LEFT JOIN dataset_items i ON i.item_hash = m.item_hash"
                " WHERE m.dataset = ? AND m.number = ?", (dataset, number)).fetchall()
        members: dict[str, str] = {}
        for r in rows:
            try:
                content = item_hash(orjson.loads(r["input"]),
                                    None if r["expected"] is None else orjson.loads(r["expected"]),
                                    orjson.loads(r["metadata"]), orjson.loads(r["provenance"]))
            except (TypeError, orjson.JSONDecodeError):  # a missing or mangled item
                return False
            if content != r["item_hash"]:
                return False
            members[r["item_hash"]] = r["split"]
        splits: dict[str, int] = {}
        for split in members.values():
            splits[split] = splits.get(split, 0) + 1
        return (members_digest(members) == version.digest and len(members) == version.items
                and splits == version.splits)

    # --- helpers ----------------------------------------------------------------------

    @staticmethod
    def _row(conn: Connection, dataset: str, number: int | None) -> Any | None:
        if number is None:
            row: Any | None = conn.execute(
                "SELECT * FROM dataset_versions WHERE dataset = ? ORDER BY number DESC LIMIT 1",
                (dataset,)).fetchone()
        else:
            row = conn.execute("SELECT * FROM dataset_versions WHERE dataset = ? AND number = ?",
                               (dataset, number)).fetchone()
        return row

    @staticmethod
    def _members(conn: Connection, dataset: str, number: int) -> dict[str, str]:
        return dict(conn.execute(
            "SELECT item_hash, split FROM dataset_members WHERE dataset = ? AND number = ?",
            (dataset, number)).fetchall())

    @staticmethod
    def _input_keys(conn: Connection, dataset: str, number: int) -> set[str]:
        rows = conn.execute(
            "SELECT i.input FROM dataset_members m JOIN dataset_items i ON i.item_hash = m.item_hash"
            " WHERE m.dataset = ? AND m.number = ?", (dataset, number))
        return {input_key(orjson.loads(row[0])) for row in rows}

    @staticmethod
    def _draft(conn: Connection, dataset: str) -> list[Item]:
        """The draft examples as items, oldest first (so dedupe keeps the first verdict)."""
        rows = conn.execute("SELECT input, expected, metadata, provenance FROM dataset_examples"
                            " WHERE dataset = ? ORDER BY ts, example_id", (dataset,))
        out = []
        for r in rows:
            value = orjson.loads(r["input"])
            out.append(Item.of(value if isinstance(value, dict) else {"value": value},
                               None if r["expected"] is None else orjson.loads(r["expected"]),
                               orjson.loads(r["metadata"]), orjson.loads(r["provenance"])))
        return out

    @staticmethod
    def _names(conn: Connection, dataset: str | None = None) -> list[str]:
        """Names of the datasets with a version or a draft (``dataset`` only, if given)."""
        sql = ("SELECT dataset FROM dataset_versions{w} UNION"
               " SELECT dataset FROM dataset_examples{w} ORDER BY 1")
        if dataset is None:
            return [r[0] for r in conn.execute(sql.format(w=""))]
        return [r[0] for r in conn.execute(sql.format(w=" WHERE dataset = ?"), (dataset, dataset))]

    def _not_found(self, conn: Connection, dataset: str,
                   number: int | None) -> DatasetNotFound:
        numbers = [r[0] for r in conn.execute(
            "SELECT number FROM dataset_versions WHERE dataset = ? ORDER BY number", (dataset,))]
        if numbers:
            have = (", ".join(map(str, numbers)) if len(numbers) <= 10
                    else f"{numbers[0]} to {numbers[-1]}")
            return DatasetNotFound(f"dataset {dataset!r} has no version {number}; "
                                   f"its versions: {have}")
        drafts = conn.execute("SELECT COUNT(*) FROM dataset_examples WHERE dataset = ?",
                              (dataset,)).fetchone()[0]
        if drafts:
            return DatasetNotFound(f"dataset {dataset!r} has no versions yet, only {drafts} draft "
                                   f"example(s); commit them first (keel data commit {dataset})")
        names = self._names(conn)
        listed = ", ".join(names[:20]) + (" …" if len(names) > 20 else "")
        return DatasetNotFound(f"no dataset {dataset!r}; "
                               + (f"datasets: {listed}" if names else "there are no datasets yet"))


def _checked(item: Item) -> Item:
    if not isinstance(item, Item):
        raise InvalidRequest(f"commit takes Item objects, not {_kind(item)}")
    if item_hash(item.input, item.expected, item.metadata, item.provenance) != item.item_hash:
        raise InvalidRequest(f"item {item.item_hash}: the hash does not match its content "
                             "(make items with Item.of)")
    if item.split and not SPLIT_NAME.fullmatch(item.split):
        raise InvalidRequest(f"item {item.item_hash}: bad split name {item.split!r}: [a-z][a-z0-9_-]*")
    if item.split == "train" and item.expected is None:
        raise InvalidRequest(f"item {item.item_hash}: an item without an expected output "
                             "cannot be in train")
    return item


def _version(row: Any) -> DatasetVersion:
    return DatasetVersion(row["dataset"], row["number"], row["digest"], row["items"],
                          orjson.loads(row["splits"]), row["parent"], row["note"],
                          row["created_by"], row["created_at"])


def _canonical_text(value: object) -> str:
    return canonical(value).decode()


def _kind(value: object) -> str:
    return type(value).__name__
