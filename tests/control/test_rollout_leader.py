"""The leader lease: one holder at a time, taken over when it expires."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from keel.control.leader import Lease
from keel.store import Store
from tests.backends import store_at
from tests.control.rollout_fakes import Clock


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = store_at(tmp_path / "keel.db")
    s.migrate()
    return s


def test_two_holders_contend(store: Store) -> None:
    clock = Clock()
    a = Lease(store, "rollouts", "host-a:1", ttl_s=30, clock=clock)
    b = Lease(store, "rollouts", "host-b:2", ttl_s=30, clock=clock)
    assert a.acquire() and a.held
    assert not b.acquire() and not b.held
    clock.advance(20)
    assert a.renew()  # extends to now + 30
    clock.advance(20)
    assert not b.acquire()  # a renewed: not expired yet
    assert b.current_holder() == ("host-a:1", clock.t + 10)
    clock.advance(11)  # a stopped renewing (died): b takes over
    assert not a.held
    assert b.acquire() and b.held
    assert not a.renew() and not a.held
    b.release()
    assert b.current_holder() is None
    assert a.acquire()
    b.release()  # not b's: nothing happens
    assert b.current_holder() == ("host-a:1", clock.t + 30)


def test_racing_processes_one_winner(store: Store) -> None:
    barrier = threading.Barrier(8)
    wins: list[str] = []

    def contend(i: int) -> None:
        lease = Lease(store, "rollouts", f"h{i}", ttl_s=60)
        barrier.wait()
        if lease.acquire():
            wins.append(lease.holder)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1


def test_ttl_must_be_positive(store: Store) -> None:
    with pytest.raises(ValueError):
        Lease(store, "x", "me", ttl_s=0)
