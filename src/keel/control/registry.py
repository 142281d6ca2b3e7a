"""The version registry: immutable versions, and the aliases that point at them.

A version is written once: its provider, model, prompt and parameters are hashed
(``spec_hash``), a local model file is hashed too (``artifact_sha256``), and registering
the same name again with anything different is refused (:class:`VersionExists`). The
versions declared in keel.yaml are registered when Keel starts (actor ``keel.yaml``);
trained ones by the trainer; others through the API or ``keel versions register``.

Aliases (``champion``, ``canary``, custom) move only through the API or the CLI, one
row update and one history row in one transaction, each with its actor. keel.yaml's
aliases only seed a feature the store has never seen. Moving ``champion`` needs the id
of a passing eval run of the version on the feature's pinned gate dataset, unless an
admin forces it, and the force is recorded.

Synchronous like the store; async callers run it in a thread.
"""

from __future__ import annotations

import builtins
import getpass
import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from keel.control import audit
from keel.errors import (
    ConfigError,
    DatasetNotFound,
    GateRequired,
    InvalidRequest,
    VersionExists,
    VersionNotFound,
)
from keel.spec import FeatureSpec, KeelSpec, VersionSpec
from keel.store.db import Store
from keel.types import JSON

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def cli_actor() -> str:
    """Who a command-line action is recorded as."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (some containers)
        return "cli:unknown"


@dataclass(frozen=True, slots=True)
class VersionRecord:
    feature: str
    name: str
    number: int
    provider: str
    model: str
    spec: dict[str, JSON]
    spec_hash: str
    artifact_path: str | None
    artifact_sha256: str | None
    dataset: str | None
    dataset_digest: str | None
    card: dict[str, JSON]
    source: str
    registered_by: str
    registered_at: float

    def version_spec(self) -> VersionSpec:
        return VersionSpec.model_validate(self.spec)

    def to_dict(self) -> dict[str, JSON]:
        return {k: getattr(self, k) for k in self.__slots__}


@dataclass(frozen=True, slots=True)
class AliasMove:
    id: int
    feature: str
    alias: str
    old_version: str | None
    new_version: str | None
    actor: str
    forced: bool
    reason: str | None
    eval_run: str | None
    ts: float


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def artifact_of(spec: VersionSpec) -> str | None:
    """The file a local version serves from: its trained head, else the embedded model."""
    if spec.provider != "local" and spec.provider != "llama_cpp":
        return None
    head = spec.params.get("head")
    if isinstance(head, str):
        return head
    if spec.provider == "local":
        try:
            from keel.providers.local.embedder import model_path

            return str(model_path())
        except Exception:
            return None
    return None


def spec_hash(spec: VersionSpec, artifact_sha256: str | None) -> str:
    """sha256 over what decides a version's answers. A head file counts by its content,
    not its path, so one version hashes the same in every checkout."""
    body = spec.model_dump(mode="json")
    params = dict(body.get("params") or {})
    if "head" in params:
        params["head"] = artifact_sha256
    body["params"] = params
    return "sha256:" + hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def model_card(feature: str, fspec: FeatureSpec | None, name: str, spec: VersionSpec,
               dataset: str | None, dataset_digest: str | None,
               extra: dict[str, JSON] | None) -> dict[str, JSON]:
    """The static part of a version's model card; eval metrics are joined on read."""
    kind = fspec.output.kind if fspec else None
    limits: list[str] = []
    if spec.provider == "local" and "head" not in spec.params:
        limits.append("zero-shot: scores the input against label descriptions; no training "
                      "examples, so confidences are calibrated only through the feature policy")
    if "head" in spec.params:
        limits.append("predicts only labels seen in its training data")
    if spec.provider == "local":
        limits.append("the embedded model truncates inputs at 128 tokens and was trained on "
                      "English text")
    if kind == "label" and fspec is not None and fspec.output.labels:
        limits.append(f"answers one of {len(fspec.output.labels)} labels; anything else is "
                      "out of scope")
    card: dict[str, JSON] = {
        "intended_use": (fspec.description if fspec and fspec.description else
                         f"the '{feature}' feature"),
        "output_kind": kind,
        "model": {"provider": spec.provider, "model": spec.model,
                  "prompt": spec.prompt, "system": spec.system,
                  "params": orjson.loads(orjson.dumps(spec.params, default=str))},
        "data": {"dataset": dataset, "digest": dataset_digest},
        "limits": limits,  # type: ignore[dict-item]
    }
    if extra:
        card.update(extra)
    return card


class Registry:
    def __init__(self, store: Store) -> None:
        self.store = store


    # --- versions -------------------------------------------------------------------

    def register(self, feature: str, name: str, spec: VersionSpec, *, actor: str, source: str,
                 fspec: FeatureSpec | None = None, dataset: str | None = None,
                 dataset_digest: str | None = None,
                 card_extra: dict[str, JSON] | None = None) -> VersionRecord:
        """Register a version; registering the identical version again returns it.
        Raises VersionExists when the name is taken by a different version."""
        if not NAME.match(name):
            raise InvalidRequest(
                f"version name {name!r} must be 1-64 letters, digits, '.', '_' or '-'",
                param="name")
        artifact = artifact_of(spec)
        artifact_sha = None
        if artifact is not None and Path(artifact).is_file():
            artifact_sha = file_sha256(artifact)
        digest = spec_hash(spec, artifact_sha)
        card = model_card(feature, fspec, name, spec, dataset, dataset_digest, card_extra)
        now = time.time()
        with self.store.connection() as conn, conn:
            self.store.lock(conn, "audit")
            row = conn.execute("SELECT * FROM versions WHERE feature = ? AND name = ?",
                               (feature, name)).fetchone()
            if row is not None:
                existing = _record(row)
                if existing.spec_hash != digest:
                    raise VersionExists(
                        f"version '{name}' of '{feature}' is already registered with different "
                        f"settings ({existing.spec_hash[:19]}…, now {digest[:19]}…); versions are "
                        "immutable: register the change under a new name")
                return existing
            number = conn.execute("SELECT COALESCE(MAX(number), 0) + 1 FROM versions"
                                  " WHERE feature = ?", (feature,)).fetchone()[0]
            conn.execute(
                "INSERT INTO versions (feature, name, number, provider, model, spec, spec_hash,"
                " artifact_path, artifact_sha256, dataset, dataset_digest, card, source,"
                " registered_by, registered_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (feature, name, number, spec.provider, spec.model, _dumps(spec.model_dump(mode="json")),
                 digest, artifact, artifact_sha, dataset, dataset_digest, _dumps(card), source,
                 actor, now))
            audit.append(conn, actor, "version.register", f"{feature}/{name}",
                         {"number": number, "spec_hash": digest, "source": source})
        return self.get(feature, name)

    def get(self, feature: str, name: str) -> VersionRecord:
        with self.store.connection() as conn:
            row = conn.execute("SELECT * FROM versions WHERE feature = ? AND name = ?",
                               (feature, name)).fetchone()
        if row is None:
            known = ", ".join(v.name for v in self.list(feature)) or "none"
            raise VersionNotFound(f"feature '{feature}' has no version '{name}' (versions: {known})")
        return _record(row)

    def list(self, feature: str) -> list[VersionRecord]:
        with self.store.connection() as conn:
            rows = conn.execute("SELECT * FROM versions WHERE feature = ? ORDER BY number",
                                (feature,)).fetchall()
        return [_record(r) for r in rows]

    def next_name(self, feature: str, prefix: str) -> str:
        """``prefix-N`` with N one past the feature's highest version number."""
        with self.store.connection() as conn:
            n = conn.execute("SELECT COALESCE(MAX(number), 0) + 1 FROM versions WHERE feature = ?",
                             (feature,)).fetchone()[0]
        return f"{prefix}-{n}"

    def verify_artifact(self, record: VersionRecord) -> bool:
        """The artifact file still has the content it was registered with."""
        if record.artifact_path is None or record.artifact_sha256 is None:
            return True
        path = Path(record.artifact_path)
        return path.is_file() and file_sha256(path) == record.artifact_sha256

    # --- aliases --------------------------------------------------------------------

    def aliases(self, feature: str) -> dict[str, str]:
        with self.store.connection() as conn:
            rows = conn.execute("SELECT alias, version FROM aliases WHERE feature = ?",
                                (feature,)).fetchall()
        return {r["alias"]: r["version"] for r in rows}

    def all_aliases(self) -> dict[str, dict[str, str]]:
        with self.store.connection() as conn:
            rows = conn.execute("SELECT feature, alias, version FROM aliases").fetchall()
        out: dict[str, dict[str, str]] = {}
        for r in rows:
            out.setdefault(r["feature"], {})[r["alias"]] = r["version"]
        return out

    def seed_aliases(self, feature: str, aliases: dict[str, str], *, actor: str) -> bool:
        """Write keel.yaml's aliases for a feature the store has none for; False if it has."""
        now = time.time()
        with self.store.connection() as conn, conn:
            self.store.lock(conn, "audit")
            if conn.execute("SELECT 1 FROM aliases WHERE feature = ? LIMIT 1",
                            (feature,)).fetchone():
                return False
            for alias, version in aliases.items():
                conn.execute("INSERT INTO aliases VALUES (?,?,?,?,?)",
                             (feature, alias, version, actor, now))
                conn.execute(
                    "INSERT INTO alias_moves (feature, alias, old_version, new_version, actor,"
                    " forced, reason, eval_run, ts) VALUES (?,?,?,?,?,?,?,?,?)",
                    (feature, alias, None, version, actor, 0, "seeded from keel.yaml", None, now))
                audit.append(conn, actor, "alias.seed", f"{feature}/{alias}", {"to": version})
        return True

    def move_alias(self, feature: str, alias: str, version: str, *, actor: str,
                   force: bool = False, reason: str | None = None,
                   gate_run: str | None = None) -> AliasMove:
        """Point ``alias`` at ``version``. ``champion`` needs ``gate_run``, a passing eval
        run of this version (:func:`keel.control.gates.passing_run`), unless ``force``."""
        if not ALIAS.match(alias):
            raise InvalidRequest(f"alias {alias!r} must be lower-case letters, digits, '_' or '-'",
                                 param="alias")
        self.get(feature, version)  # raises VersionNotFound
        if alias == "champion" and not force:
            if gate_run is None:
                raise GateRequired(
                    f"'{version}' has no passing eval on the gate dataset of '{feature}'; run "
                    f"`keel eval {feature} --version {version} --gate`, or force it as an admin")
            self._check_run(feature, version, gate_run)
        now = time.time()
        with self.store.connection() as conn, conn:
            self.store.lock(conn, "audit")
            row = conn.execute("SELECT version FROM aliases WHERE feature = ? AND alias = ?",
                               (feature, alias)).fetchone()
            old = row["version"] if row else None
            conn.execute(
                "INSERT INTO aliases VALUES (?,?,?,?,?) ON CONFLICT (feature, alias)"
                " DO UPDATE SET version = excluded.version, actor = excluded.actor, ts = excluded.ts",
                (feature, alias, version, actor, now))
            move_id = conn.execute(
                "INSERT INTO alias_moves (feature, alias, old_version, new_version, actor, forced,"
                " reason, eval_run, ts) VALUES (?,?,?,?,?,?,?,?,?) RETURNING id",
                (feature, alias, old, version, actor, int(force), reason, gate_run, now)).fetchone()[0]
            audit.append(conn, actor, "alias.move", f"{feature}/{alias}",
                         {"from": old, "to": version, "forced": force, "reason": reason,
                          "eval_run": gate_run})
        return AliasMove(int(move_id or 0), feature, alias, old, version, actor, force, reason,
                         gate_run, now)

    def remove_alias(self, feature: str, alias: str, *, actor: str,
                     reason: str | None = None) -> AliasMove | None:
        """Drop an alias (the canary after a rollout ends). ``champion`` cannot go."""
        if alias == "champion":
            raise InvalidRequest("the champion alias cannot be removed, only moved", param="alias")
        now = time.time()
        with self.store.connection() as conn, conn:
            self.store.lock(conn, "audit")
            row = conn.execute("SELECT version FROM aliases WHERE feature = ? AND alias = ?",
                               (feature, alias)).fetchone()
            if row is None:
                return None
            conn.execute("DELETE FROM aliases WHERE feature = ? AND alias = ?", (feature, alias))
            move_id = conn.execute(
                "INSERT INTO alias_moves (feature, alias, old_version, new_version, actor, forced,"
                " reason, eval_run, ts) VALUES (?,?,?,?,?,?,?,?,?) RETURNING id",
                (feature, alias, row["version"], None, actor, 0, reason, None, now)).fetchone()[0]
            audit.append(conn, actor, "alias.remove", f"{feature}/{alias}",
                         {"from": row["version"], "reason": reason})
        return AliasMove(int(move_id), feature, alias, row["version"], None, actor,
                         False, reason, None, now)

    def history(self, feature: str, limit: int = 100) -> builtins.list[AliasMove]:
        with self.store.connection() as conn:
            rows = conn.execute("SELECT * FROM alias_moves WHERE feature = ? ORDER BY id DESC"
                                " LIMIT ?", (feature, limit)).fetchall()
        return [AliasMove(r["id"], r["feature"], r["alias"], r["old_version"], r["new_version"],
                          r["actor"], bool(r["forced"]), r["reason"], r["eval_run"], r["ts"])
                for r in rows]

    def eval_metrics(self, feature: str, name: str) -> builtins.list[dict[str, Any]]:
        """The version's finished eval runs, newest first, for its model card."""
        with self.store.connection() as conn:
            rows = conn.execute(
                "SELECT id, dataset, dataset_number, dataset_digest, split, metrics, passed,"
                " finished_at FROM eval_runs WHERE feature = ? AND version = ? AND status = 'done'"
                " ORDER BY finished_at DESC", (feature, name)).fetchall()
        return [{**dict(r), "metrics": orjson.loads(r["metrics"]) if r["metrics"] else None,
                 "passed": None if r["passed"] is None else bool(r["passed"])} for r in rows]

    def _check_run(self, feature: str, version: str, run_id: str) -> None:
        with self.store.connection() as conn:
            row = conn.execute("SELECT feature, version, status, passed FROM eval_runs WHERE id = ?",
                               (run_id,)).fetchone()
        if row is None or row["feature"] != feature or row["version"] != version:
            raise GateRequired(f"eval run '{run_id}' is not a run of '{feature}' version '{version}'")
        if row["status"] != "done" or not row["passed"]:
            raise GateRequired(f"eval run '{run_id}' of '{version}' did not pass its gate")


def _record(row: Any) -> VersionRecord:
    return VersionRecord(
        row["feature"], row["name"], row["number"], row["provider"], row["model"],
        orjson.loads(row["spec"]), row["spec_hash"], row["artifact_path"], row["artifact_sha256"],
        row["dataset"], row["dataset_digest"], orjson.loads(row["card"]), row["source"],
        row["registered_by"], row["registered_at"])


def _dumps(value: object) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=str).decode()


def gate_run_for(store: Store, feature: str, fspec: FeatureSpec, version: str) -> str | None:
    """The passing eval run that lets ``version`` be champion, if there is one. Raises
    GateRequired when the feature has no gate dataset pinned."""
    from keel.control.datasets import DatasetStore
    from keel.control.gates import gate_dataset, passing_run

    try:
        dataset = gate_dataset(fspec.gate, DatasetStore(store), feature)
    except DatasetNotFound as exc:
        raise GateRequired(f"the gate dataset of '{feature}' is missing: {exc.message}") from None
    return passing_run(store, feature, version, dataset.dataset, dataset.number)


def promote(store: Store, feature: str, fspec: FeatureSpec, version: str, *, actor: str,
            force: bool = False, reason: str | None = None) -> AliasMove:
    """Make ``version`` champion: with its passing eval run, or forced (and recorded)."""
    run = None
    if not force:
        run = gate_run_for(store, feature, fspec, version)
        if run is None:
            raise GateRequired(
                f"'{version}' has no passing eval on the gate dataset of '{feature}'; run "
                f"`keel eval {feature} --version {version} --gate` first (or force it as an admin)")
    return Registry(store).move_alias(feature, "champion", version, actor=actor, force=force,
                                      reason=reason, gate_run=run)


def bootstrap(store: Store, spec: KeelSpec) -> Registry:
    """Register keel.yaml's versions and seed aliases for features the store has not
    seen. A keel.yaml version changed in place is a ConfigError (versions are immutable)."""
    registry = Registry(store)
    for fname, fspec in spec.features.items():
        for vname, vspec in fspec.versions.items():
            try:
                registry.register(fname, vname, vspec, actor="keel.yaml", source="keel.yaml",
                                  fspec=fspec)
            except VersionExists as exc:
                raise ConfigError(f"features.{fname}.versions.{vname}: {exc.message}") from None
        registry.seed_aliases(fname, dict(fspec.aliases), actor="keel.yaml")
    return registry
