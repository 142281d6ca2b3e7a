"""kill -9 under load: every call that got an answer has its event stored once the
server is back on the same database (the write-ahead journal, docs/resilience.md)."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from keel.testing import FakeUpstream
from tests.backends import store_at
from tests.e2e.server import KeelProcess

CONFIG = """
providers:
  up: {{type: openai, base_url: "{url}", timeout_s: 5}}
features:
  triage:
    output: {{kind: label, labels: [billing, shipping, other]}}
    versions:
      v1: {{provider: up, model: fake-model}}
    aliases: {{champion: v1}}
    safe_default: {{label: other}}
"""
CALLS = 400
CONCURRENCY = 64
KILL_AFTER = 200  # answers


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(reply="billing") as fake:
        yield fake


async def load_then_kill(server: KeelProcess) -> list[str]:
    """CALLS calls, CONCURRENCY at a time; SIGKILL once KILL_AFTER have their answer.
    The trace ids of the calls answered (200, whole body read)."""
    answered: list[str] = []
    killed = asyncio.Event()
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=server.base_url, limits=limits, timeout=30) as client:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(i: int) -> None:
            async with gate:
                if killed.is_set():
                    return
                try:
                    r = await client.post("/v1/features/triage",
                                          json={"input": {"text": f"charged twice #{i}"}})
                except httpx.TransportError:
                    return  # cut by the kill: no answer
            if r.status_code == 200:
                answered.append(r.json()["trace_id"])
            if len(answered) >= KILL_AFTER and not killed.is_set():
                killed.set()
                assert server.proc is not None
                server.proc.send_signal(signal.SIGKILL)

        await asyncio.gather(*(one(i) for i in range(CALLS)))
    assert server.proc is not None
    assert server.proc.wait(timeout=10) == -signal.SIGKILL
    return answered


def stored(database: Path, trace_ids: list[str]) -> set[str]:
    with store_at(database).connection() as conn:
        found: set[str] = set()
        for i in range(0, len(trace_ids), 500):
            chunk = trace_ids[i:i + 500]
            found.update(r[0] for r in conn.execute(
                f"SELECT trace_id FROM events WHERE trace_id IN ({','.join('?' * len(chunk))})",
                chunk))
    return found


def all_stored_after_restart(config: Path, database: Path, answered: list[str]) -> dict[str, int]:
    with KeelProcess(config, database) as again:
        deadline = time.monotonic() + 30
        while (missing := set(answered) - stored(database, answered)) and time.monotonic() < deadline:
            time.sleep(0.1)
        store = httpx.get(f"{again.base_url}/healthz").json()["store"]
    assert not missing, f"{len(missing)} answered calls have no event"
    return {"replayed": store["replayed"]}


def test_every_answered_call_is_stored_after_kill_9(upstream: FakeUpstream, tmp_path: Path) -> None:
    config = tmp_path / "keel.yaml"
    config.write_text(CONFIG.format(url=upstream.base_url))
    database = tmp_path / "keel.db"
    server = KeelProcess(config, database).start()
    try:
        answered = asyncio.run(load_then_kill(server))
    finally:
        server.stop()
    assert len(answered) >= KILL_AFTER
    all_stored_after_restart(config, database, answered)


@pytest.mark.sqlite_only
def test_answers_the_store_never_took_are_replayed_from_the_journal(
        upstream: FakeUpstream, tmp_path: Path) -> None:
    """The same with the database locked by another process during the load: the writer
    cannot commit anything, so what the restart finds comes from the journal alone."""
    config = tmp_path / "keel.yaml"
    config.write_text(CONFIG.format(url=upstream.base_url))
    database = tmp_path / "keel.db"
    server = KeelProcess(config, database).start()
    blocker = sqlite3.connect(database, isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")  # no writer gets in until we let go
        answered = asyncio.run(load_then_kill(server))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        server.stop()
    assert not stored(database, answered)  # none made it to the store before the kill
    seen = all_stored_after_restart(config, database, answered)
    assert seen["replayed"] >= len(answered)
