"""The version registry: immutable versions, alias moves with actors, the champion gate,
and a running Keel picking up registry changes made elsewhere."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from keel.control.registry import Registry, bootstrap, file_sha256, spec_hash
from keel.errors import ConfigError, GateRequired, InvalidRequest, VersionExists, VersionNotFound
from keel.gateway import Keel
from keel.spec import VersionSpec
from keel.store import Store
from keel.types import Completion
from tests.backends import store_at
from tests.conftest import basic_feature, scripted, settings_in, spec_with


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = store_at(tmp_path / "keel.db")
    store.migrate()
    return store


def passing_run(store: Store, feature: str, version: str, passed: bool = True) -> str:
    """An eval_runs row as the evaluator writes it when a gate is decided."""
    run_id = f"run-{version}-{int(passed)}"
    conn = store.connect()
    with conn:
        conn.execute(
            "INSERT INTO eval_runs (id, feature, version, dataset, dataset_number, dataset_digest,"
            " split, status, config, metrics, gate, passed, items, done, actor, started_at,"
            " finished_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (run_id, feature, version, "golden", 1, "sha256:x", None, "done", "{}",
             '{"accuracy": 0.9}', "{}", int(passed), 10, 10, "test", time.time(), time.time()))
    conn.close()
    return run_id


def test_register_is_idempotent_and_numbers_versions(store: Store) -> None:
    registry = Registry(store)
    a = registry.register("f", "v1", VersionSpec(provider="p1", model="m1"), actor="me", source="t")
    again = registry.register("f", "v1", VersionSpec(provider="p1", model="m1"), actor="other",
                              source="t")
    b = registry.register("f", "v2", VersionSpec(provider="p1", model="m2"), actor="me", source="t")
    assert (a.number, b.number) == (1, 2)
    assert again == a and again.registered_by == "me"
    assert [r.name for r in registry.list("f")] == ["v1", "v2"]
    assert registry.next_name("f", "trained") == "trained-3"


def test_a_registered_version_cannot_change(store: Store) -> None:
    registry = Registry(store)
    registry.register("f", "v1", VersionSpec(provider="p1", model="m1", prompt="A"), actor="me",
                      source="t")
    with pytest.raises(VersionExists, match="immutable"):
        registry.register("f", "v1", VersionSpec(provider="p1", model="m1", prompt="B"),
                          actor="me", source="t")


def test_bad_names_are_refused(store: Store) -> None:
    with pytest.raises(InvalidRequest):
        Registry(store).register("f", "no spaces", VersionSpec(model="m"), actor="me", source="t")


def test_a_head_counts_by_content_not_path(tmp_path: Path) -> None:
    one, two = tmp_path / "a.npz", tmp_path / "b.npz"
    for path in (one, two):
        path.write_bytes(b"head-bytes")
    same = [spec_hash(VersionSpec(model="m", params={"head": str(p)}), file_sha256(p)) for p in (one, two)]
    assert same[0] == same[1]
    two.write_bytes(b"other-bytes")
    assert spec_hash(VersionSpec(model="m", params={"head": str(two)}), file_sha256(two)) != same[0]


def test_bootstrap_seeds_aliases_once_and_refuses_edited_versions(store: Store) -> None:
    spec = spec_with(basic_feature())
    registry = bootstrap(store, spec)
    assert registry.aliases("f") == {"champion": "v1"}
    assert {r.name: r.source for r in registry.list("f")} == {"v1": "keel.yaml", "v2": "keel.yaml"}
    registry.move_alias("f", "champion", "v2", actor="admin", force=True)
    bootstrap(store, spec)  # a restart: the store's aliases win over keel.yaml's
    assert registry.aliases("f") == {"champion": "v2"}
    edited = basic_feature()
    edited["versions"]["v1"]["model"] = "m-new"
    with pytest.raises(ConfigError, match=r"features\.f\.versions\.v1: .*immutable"):
        bootstrap(store, spec_with(edited))


def test_champion_needs_a_passing_eval_run_unless_forced(store: Store) -> None:
    registry = bootstrap(store, spec_with(basic_feature()))
    with pytest.raises(GateRequired, match="keel eval f --version v2 --gate"):
        registry.move_alias("f", "champion", "v2", actor="me")
    failed = passing_run(store, "f", "v2", passed=False)
    with pytest.raises(GateRequired, match="did not pass"):
        registry.move_alias("f", "champion", "v2", actor="me", gate_run=failed)
    with pytest.raises(GateRequired, match="not a run of"):
        registry.move_alias("f", "champion", "v1", actor="me", gate_run=passing_run(store, "f", "v2"))
    move = registry.move_alias("f", "champion", "v2", actor="me", gate_run="run-v2-1")
    assert (move.old_version, move.new_version, move.eval_run, move.forced) == ("v1", "v2", "run-v2-1", False)
    forced = registry.move_alias("f", "champion", "v1", actor="admin", force=True, reason="hotfix")
    assert forced.forced
    history = registry.history("f")
    assert [(m.alias, m.old_version, m.new_version, m.actor, m.forced) for m in history[:2]] == [
        ("champion", "v2", "v1", "admin", True), ("champion", "v1", "v2", "me", False)]
    assert history[0].reason == "hotfix"
    assert history[-1].actor == "keel.yaml"


def test_other_aliases_move_freely_and_the_canary_can_go(store: Store) -> None:
    registry = bootstrap(store, spec_with(basic_feature()))
    registry.move_alias("f", "canary", "v2", actor="me")
    assert registry.aliases("f") == {"champion": "v1", "canary": "v2"}
    removed = registry.remove_alias("f", "canary", actor="me", reason="rolled back")
    assert removed is not None and removed.old_version == "v2" and removed.new_version is None
    assert registry.remove_alias("f", "canary", actor="me") is None
    with pytest.raises(InvalidRequest):
        registry.remove_alias("f", "champion", actor="me")
    with pytest.raises(VersionNotFound, match="versions: v1, v2"):
        registry.move_alias("f", "canary", "v9", actor="me")
    with pytest.raises(InvalidRequest):
        registry.move_alias("f", "Bad Alias", "v1", actor="me")


async def test_a_running_keel_serves_versions_and_aliases_changed_elsewhere(tmp_path: Path) -> None:
    spec = spec_with(basic_feature())
    keel = Keel(spec, settings_in(tmp_path))
    async with keel:
        p1 = scripted(keel, "p1")
        p1.default = Completion(output={"label": "a"}, confidence=0.9)
        # another process registers v3 and makes it champion
        other = Registry(store_at(tmp_path / "keel.db"))
        other.register("f", "v3", VersionSpec(provider="p1", model="m3"), actor="cli:x", source="cli")
        other.move_alias("f", "champion", "v3", actor="cli:x", force=True)
        assert keel.sync is not None
        assert await keel.sync.refresh()
        assert not await keel.sync.refresh()  # nothing changed since
        outcome = await keel.call("f", {"text": "hi"})
        assert outcome.version == "v3"
        assert p1.requests[-1].model == "m3"


async def test_an_alias_to_a_version_this_process_cannot_serve_keeps_the_old_one(tmp_path: Path) -> None:
    keel = Keel(spec_with(basic_feature()), settings_in(tmp_path))
    async with keel:
        other = Registry(store_at(tmp_path / "keel.db"))
        other.register("f", "elsewhere", VersionSpec(provider="nowhere", model="m"), actor="x",
                       source="cli")
        other.move_alias("f", "champion", "elsewhere", actor="x", force=True)
        assert keel.sync is not None
        await keel.sync.refresh()
        assert (await keel.call("f", {"text": "hi"})).version == "v1"


async def test_pinned_calls_serve_one_version_and_record_nothing(tmp_path: Path) -> None:
    keel = Keel(spec_with(basic_feature()), settings_in(tmp_path))
    async with keel:
        outcome = await keel.call("f", {"text": "hi"}, pin="v2")
        assert outcome.version == "v2"
        with pytest.raises(VersionNotFound):
            await keel.call("f", {"text": "hi"}, pin="v9")
        live = await keel.call("f", {"text": "hi"})
        keel.writer.flush()
        events = keel.store.recent_events(10)
        assert [e["trace_id"] for e in events] == [live.trace_id]
        assert events[0]["routed"] == "v1"
