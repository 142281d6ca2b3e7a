"""The audit trail: every control-plane change appends a hash-chained row in its own
transaction; verify names the first row edited, deleted or inserted behind Keel's back."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from keel.control import audit, keys
from keel.control.datasets import DatasetStore, Item
from keel.control.registry import Registry
from keel.control.rollout import RolloutStore
from keel.errors import RolloutConflict, VersionNotFound
from keel.spec import RolloutSpec, VersionSpec
from keel.store import Store
from keel.store.policy import record_policy_change
from tests.backends import store_at


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = store_at(tmp_path / "keel.db")
    store.migrate()
    return store


def append(store: Store, n: int, actor: str = "cli:ann") -> None:
    for i in range(n):
        with store.connection() as conn, conn:
            store.lock(conn, "audit")
            audit.append(conn, actor, "test.change", f"f/thing{i}", {"i": i, "note": "ü"})


def execute(store: Store, sql: str, args: tuple[Any, ...] = ()) -> None:
    """Tampering, as someone with the database's credentials would."""
    with store.connection() as conn, conn:
        conn.execute(sql, args)


def rows(store: Store) -> list[Any]:
    with store.connection() as conn:
        return conn.execute("SELECT seq, prev_hash, hash FROM audit_log ORDER BY seq").fetchall()


def test_each_row_is_chained_to_the_one_before(store: Store) -> None:
    assert audit.verify(store) == audit.Verification(True, 0, audit.GENESIS)
    append(store, 3)
    chain = rows(store)
    assert [r[0] for r in chain] == [1, 2, 3]
    assert chain[0][1] == audit.GENESIS
    assert [r[1] for r in chain[1:]] == [r[2] for r in chain[:-1]]
    result = audit.verify(store)
    assert result.ok and result.rows == 3 and result.head == chain[-1][2]
    newest = audit.entries(store, limit=2)
    assert [e.seq for e in newest] == [3, 2] and newest[0].details == {"i": 2, "note": "ü"}
    assert [e.seq for e in audit.entries(store, before=2)] == [1]
    assert [e.target for e in audit.entries(store, target="f/thing1")] == ["f/thing1"]


def test_every_control_plane_change_is_a_row_with_its_actor(store: Store, tmp_path: Path) -> None:
    registry = Registry(store)
    spec = VersionSpec(provider="p1", model="m1")
    registry.register("f", "v1", spec, actor="keel.yaml", source="keel.yaml")
    registry.register("f", "v1", spec, actor="keel.yaml", source="keel.yaml")  # no change
    registry.register("f", "v2", VersionSpec(provider="p1", model="m2"), actor="cli:ann",
                      source="cli")
    registry.seed_aliases("f", {"champion": "v1"}, actor="keel.yaml")
    registry.move_alias("f", "champion", "v2", actor="key:ops", force=True, reason="hotfix")
    registry.move_alias("f", "canary", "v1", actor="controller")
    registry.remove_alias("f", "canary", actor="controller", reason="rollout ended")
    datasets = DatasetStore(store)
    version = datasets.commit("golden", [Item.of({"text": "x"}, {"label": "a"})], actor="cli:ann")
    datasets.pin("f", "golden", version.number, actor="cli:ann")
    record_policy_change(store, "f", "accept_at", 0.7, 0.8, actor="cli:ann", source="calibrate",
                         details={"n": 200})
    rollouts = RolloutStore(store)
    rollout, _ = rollouts.create("f", "v1", "v2", RolloutSpec(), actor="key:ops", now=1.0)
    rollouts.change(rollout, "rolled_back", actor="controller", reason="worse", now=2.0)
    record, _ = keys.create(store, "ci", "app", ["f"], actor="cli:ann")
    keys.revoke(store, record.id, actor="key:ops")

    got = [(e.actor, e.action, e.target) for e in reversed(audit.entries(store, limit=100))]
    assert got == [
        ("keel.yaml", "version.register", "f/v1"),
        ("cli:ann", "version.register", "f/v2"),
        ("keel.yaml", "alias.seed", "f/champion"),
        ("key:ops", "alias.move", "f/champion"),
        ("controller", "alias.move", "f/canary"),
        ("controller", "alias.remove", "f/canary"),
        ("cli:ann", "gate.pin", "f/gate"),
        ("cli:ann", "policy.change", "f/policy.accept_at"),
        ("key:ops", "rollout.start", f"f/rollout#{rollout.id}"),
        ("controller", "rollout.rolled_back", f"f/rollout#{rollout.id}"),
        ("cli:ann", "key.create", f"key:{record.id}"),
        ("key:ops", "key.revoke", f"key:{record.id}"),
    ]
    forced = audit.entries(store, target="f/champion")[0]
    assert forced.details == {"from": "v1", "to": "v2", "forced": True, "reason": "hotfix",
                              "eval_run": None}
    assert audit.entries(store, target="f/gate")[0].details == {"from": None,
                                                                "to": f"golden@{version.number}"}
    assert len(audit.entries(store, target="f")) == 10
    assert audit.verify(store).ok


def test_a_change_that_fails_leaves_no_row(store: Store) -> None:
    registry = Registry(store)
    registry.register("f", "v1", VersionSpec(provider="p1", model="m1"), actor="a", source="t")
    rollouts = RolloutStore(store)
    rollouts.create("f", "v1", "v0", RolloutSpec(), actor="a", now=1.0)
    before = audit.verify(store).rows
    with pytest.raises(RolloutConflict):
        rollouts.create("f", "v1", "v0", RolloutSpec(), actor="a", now=2.0)
    with pytest.raises(VersionNotFound):
        registry.move_alias("f", "canary", "v9", actor="a")
    assert audit.verify(store).rows == before


def test_concurrent_writers_never_fork_the_chain(store: Store) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(5):
                keys.create(store, f"k{n}-{i}", "viewer", actor=f"t{n}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    result = audit.verify(store)
    assert result.ok and result.rows == 30


def _forge(store: Store, seq: int, prev: str) -> str:
    details = '{"to":"evil"}'
    return audit.entry_hash(prev, seq, 5.0, "mallory", "alias.move", "f/champion", details)


@pytest.mark.parametrize(("tamper", "bad", "why"), [
    ("edited", 3, "was changed after it was written"),
    ("edited and rehashed", 4, "does not follow the row before it"),
    ("deleted", 4, "rows 3..3 were deleted"),
    ("first deleted", 2, "the log starts at row 2"),
    ("inserted", 4, "does not follow the row before it"),
    ("inserted with a made-up hash", 3, "was changed after it was written"),
    ("appended", 6, "was changed after it was written"),
])
def test_verify_names_the_first_row_that_does_not_fit(store: Store, tamper: str, bad: int,
                                                      why: str) -> None:
    append(store, 5)
    chain = {r[0]: (r[1], r[2]) for r in rows(store)}
    if tamper == "edited":
        execute(store, "UPDATE audit_log SET details = ? WHERE seq = 3", ('{"i":99}',))
    elif tamper == "edited and rehashed":
        h = _forge(store, 3, chain[3][0])
        execute(store, "UPDATE audit_log SET actor = 'mallory', action = 'alias.move',"
                " target = 'f/champion', ts = 5.0, details = '{\"to\":\"evil\"}', hash = ?"
                " WHERE seq = 3", (h,))
    elif tamper == "deleted":
        execute(store, "DELETE FROM audit_log WHERE seq = 3")
    elif tamper == "first deleted":
        execute(store, "DELETE FROM audit_log WHERE seq = 1")
    elif tamper.startswith("inserted"):
        for seq in (5, 4, 3):  # make room at 3, one row at a time (the key is unique)
            execute(store, "UPDATE audit_log SET seq = ? WHERE seq = ?", (seq + 1, seq))
        h = _forge(store, 3, chain[2][1]) if tamper == "inserted" else "f" * 64
        execute(store, "INSERT INTO audit_log (seq, ts, actor, action, target, details,"
                " prev_hash, hash) VALUES (3, 5.0, 'mallory', 'alias.move', 'f/champion',"
                " '{\"to\":\"evil\"}', ?, ?)", (chain[2][1], h))
    elif tamper == "appended":
        execute(store, "INSERT INTO audit_log (seq, ts, actor, action, target, details,"
                " prev_hash, hash) VALUES (6, 5.0, 'mallory', 'x', 'y', '{}', ?, ?)",
                (chain[5][1], "0" * 64))
    result = audit.verify(store)
    assert not result.ok and result.bad_seq == bad, result
    assert why in (result.problem or ""), result.problem
    assert result.rows == bad - 1 or tamper in ("deleted", "first deleted")
