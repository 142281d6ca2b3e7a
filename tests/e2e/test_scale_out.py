"""The scaled-out mode for real: ``keel serve --workers 2`` on PostgreSQL and Redis
(whatever --backend the suite runs with), and a second ``keel serve`` beside it, as on
another host behind a load balancer. Checked: every call answered is stored once,
a budget shared by all three processes holds (spend at most one call's estimate over
the limit), one process leads the control plane, and an alias moved by the CLI reaches
every worker."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import redis

from keel.testing import FakeUpstream
from tests.backends import POSTGRES_URL, REDIS_URL, url_for
from tests.e2e.server import KeelProcess

LIMIT_USD = 0.0004
CONFIG = """
providers:
  gpt: {{type: openai, base_url: "{gpt}", timeout_s: 5}}
features:
  chat:
    output: {{kind: chat}}
    versions:
      gpt-1: {{provider: gpt, model: gpt-4o-mini}}
      gpt-2: {{provider: gpt, model: gpt-4o-mini, system: "Be brief."}}
    aliases: {{champion: gpt-1}}
  other:
    output: {{kind: chat}}
    versions:
      a-1: {{provider: gpt, model: gpt-4o-mini}}
      a-2: {{provider: gpt, model: gpt-4o-mini, system: "Be brief."}}
    aliases: {{champion: a-1}}
budgets:
  - {{name: chat-daily, scope: feature, match: chat, period: day, limit_usd: {limit}}}
"""
# each call: ~6 input tokens + 250 output tokens of gpt-4o-mini = about $0.00015
ASK = {"model": "chat", "max_tokens": 250,
       "messages": [{"role": "user", "content": "say hello to the whole team"}]}


@pytest.fixture
def scaled(tmp_path: Path) -> Iterator[dict[str, str]]:
    schema_url = url_for(tmp_path / "scale.db")
    prefix = f"keel-test:{uuid.uuid4().hex[:8]}:"
    env = {"KEEL_DATABASE_URL": schema_url, "KEEL_REDIS_URL": REDIS_URL,
           "KEEL_REDIS_PREFIX": prefix, "KEEL_CONTROL_INTERVAL_S": "0.2"}
    yield env
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=prefix + "*"):
        client.delete(key)
    client.close()


def db(env: dict[str, str]) -> psycopg.Connection[tuple[object, ...]]:
    schema = env["KEEL_DATABASE_URL"].split("schema=")[1]
    return psycopg.connect(POSTGRES_URL, autocommit=True, options=f"-csearch_path={schema}")


async def fire(urls: list[str], n: int, concurrency: int, model: str = "chat") -> list[httpx.Response]:
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=30) as client:
        async def one(i: int) -> httpx.Response:
            async with sem:
                return await client.post(f"{urls[i % len(urls)]}/v1/chat/completions",
                                         json={**ASK, "model": model})
        return list(await asyncio.gather(*(one(i) for i in range(n))))


def test_workers_and_hosts_share_the_store_the_budget_and_the_leader(
        tmp_path: Path, scaled: dict[str, str]) -> None:
    with FakeUpstream(reply=" ".join(["hello"] * 240)) as gpt:
        config = tmp_path / "keel.yaml"
        config.write_text(CONFIG.format(gpt=gpt.base_url, limit=LIMIT_USD))
        env = {**os.environ, **scaled}
        env.pop("KEEL_DATABASE", None)
        with KeelProcess(config, None, env=scaled, startup_s=90,
                         args=("--workers", "2")) as pool, KeelProcess(
                config, None, env=scaled) as other:
            responses = asyncio.run(fire([pool.base_url, other.base_url], 60, 24))
            ok = [r for r in responses if r.status_code == 200]
            refused = [r for r in responses if r.status_code == 429]
            assert len(ok) + len(refused) == 60, {r.status_code for r in responses}
            assert refused and all(r.json()["error"]["code"] == "budget_exceeded" for r in refused)
            assert 1 <= len(ok) <= 5

            # every answered call is stored once, whichever process answered it
            ids = {r.json()["id"] for r in ok}
            deadline = time.monotonic() + 15
            with db(scaled) as conn:
                while True:  # the writers batch: wait for all 60 (refusals are events too)
                    total = conn.execute("SELECT count(*) FROM events").fetchone()
                    if (total and total[0] >= 60) or time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
                stored = conn.execute("SELECT trace_id, cost_usd FROM events WHERE feature ="
                                      " 'chat' AND decision <> 'refused'").fetchall()
                assert {t for t, _ in stored} == {r.headers["x-keel-trace-id"] for r in ok}, (
                    [(r.headers["x-keel-trace-id"], r.request.url.port) for r in ok], pool.port,
                    other.port)
                spent = sum(float(c or 0) for _, c in stored)
                per_call = max(float(c or 0) for _, c in stored)
                assert spent <= LIMIT_USD + per_call + 1e-12  # one estimate over, at most
                refused_events = conn.execute("SELECT count(*) FROM events WHERE decision ="
                                              " 'refused'").fetchone()
                assert refused_events is not None and refused_events[0] == len(refused)
                # one leader among the three processes
                holders = conn.execute("SELECT holder, until FROM leases").fetchall()
                assert len({h for h, _ in holders}) == 1
            assert {r.headers["x-keel-version"] for r in ok} == {"gpt-1"}
            assert len(ids) == len(ok)

            # a champion moved from the CLI reaches every process within a few syncs
            before = asyncio.run(fire([pool.base_url, other.base_url], 12, 6, "other"))
            assert {r.headers["x-keel-version"] for r in before} == {"a-1"}
            moved = subprocess.run(
                [sys.executable, "-m", "keel", "versions", "alias", "other", "champion", "a-2",
                 "--force", "--config", str(config)], env=env, capture_output=True, text=True,
                timeout=60)
            assert moved.returncode == 0, moved.stdout + moved.stderr
            time.sleep(1.5)  # several control intervals (0.2 s)
            after = asyncio.run(fire([pool.base_url, other.base_url], 24, 8, "other"))
            assert [r.status_code for r in after] == [200] * 24
            assert {r.headers["x-keel-version"] for r in after} == {"a-2"}
