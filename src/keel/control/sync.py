"""Keeps a running Keel in step with the control plane in its store.

At start (:meth:`ControlSync.bootstrap`) keel.yaml's versions are registered (a version
changed in place is refused: versions are immutable), a feature the store has never
seen gets keel.yaml's aliases, and every feature's router takes the store's aliases.

While serving, a loop (every ``settings.control_interval_s``) asks the store one cheap
question, "did anything change?" (alias moves, registered versions, rollout steps,
policy changes, finished eval runs), and only then reloads: new versions are compiled
and prepared before an alias may point at them, routers get the new aliases and canary
splits, thresholds their new values, ``cheapest`` routing policies their eval records.
So ``keel versions alias`` or ``keel rollout`` run in another process reach this one
within one interval. The same loop lets this process's leader lease
drive the rollout controller (:meth:`set_leader_task`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from keel.control.leader import Lease
from keel.control.registry import Registry, bootstrap
from keel.control.retention import Pruner
from keel.control.rollout import RolloutController, controller_for, current_splits
from keel.control.route_evals import refresh_routing
from keel.errors import KeelError
from keel.stages.route import Split

if TYPE_CHECKING:
    from keel.gateway import Keel

log = logging.getLogger("keel.control")

SplitInfo = tuple[str, float, int]  # canary version, weight, rollout id


RECONCILE_S = 60.0


def instance_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class ControlSync:
    def __init__(self, keel: Keel) -> None:
        self.keel = keel
        self.registry = Registry(keel.store)
        self._revision: tuple[float, ...] | None = None
        self._task: asyncio.Task[None] | None = None
        self._leader_task: Callable[[], Awaitable[None]] | None = None
        self.splits: dict[str, SplitInfo] = {}
        self._lease: Lease | None = None
        self._controller: RolloutController | None = None
        self._pruner: Pruner | None = None  # retention, pruned by the leader
        self._reconciled = -math.inf  # when the leader last reconciled budgets with the ledger

    # --- start --------------------------------------------------------------------

    def bootstrap(self) -> None:
        """Register keel.yaml's versions and seed aliases (see registry.bootstrap)."""
        bootstrap(self.keel.store, self.keel.spec)
        self._revision = self._read_revision()

    async def load_registered(self) -> list[tuple[str, str]]:
        """Compile and prepare registered versions this process does not serve yet, then
        apply aliases and splits. Returns the (feature, version) pairs loaded."""
        loaded: list[tuple[str, str]] = []
        for fname, feature in self.keel.features.items():
            records = await asyncio.to_thread(self.registry.list, fname)
            for record in records:
                if record.name in feature.targets:
                    continue
                try:
                    await self.keel.load_version(fname, record.name, record.version_spec())
                except (KeelError, ValueError) as exc:
                    message = exc.message if isinstance(exc, KeelError) else str(exc)
                    log.warning("version %s of %s cannot be served here: %s", record.name,
                                fname, message)
                    continue
                loaded.append((fname, record.name))
        await self._apply_aliases()
        await refresh_routing(self.keel)  # routing policies that choose by eval records
        return loaded

    async def _apply_aliases(self) -> None:
        aliases = await asyncio.to_thread(self.registry.all_aliases)
        splits = await asyncio.to_thread(self._current_splits)
        self.splits = splits
        for fname, feature in self.keel.features.items():
            wanted = aliases.get(fname) or dict(feature.spec.aliases)
            servable = {a: v for a, v in wanted.items() if v in feature.targets}
            for alias in set(wanted) - set(servable):
                log.warning("alias %s of %s points at %s, which is not loaded here; kept the "
                            "previous target", alias, fname, wanted[alias])
                previous = feature.router.aliases.get(alias)
                if previous is not None:
                    servable[alias] = previous
            if "champion" not in servable:
                continue
            feature.router.set_aliases(servable)
            split = splits.get(fname)
            if split is not None and servable.get("canary") == split[0]:
                feature.router.set_split(Split(split[1], feature.spec.rollout.sticky,
                                               str(split[2])))
            else:
                feature.router.set_split(None)
        if self.keel.cache is not None:
            # a champion or canary move empties the feature's cache, in every process
            from keel.stages.cache import read_generations

            self.keel.cache.set_generations(
                await asyncio.to_thread(read_generations, self.keel.store))

    def _current_splits(self) -> dict[str, SplitInfo]:
        return current_splits(self.keel.store)

    # --- the loop -----------------------------------------------------------------

    def _read_revision(self) -> tuple[float, ...]:
        conn = self.keel.store.connect()
        try:
            row = conn.execute(
                "SELECT (SELECT COALESCE(MAX(id), 0) FROM alias_moves),"
                " (SELECT COUNT(*) FROM versions),"
                " (SELECT COALESCE(MAX(updated_at), 0) FROM rollouts),"
                " (SELECT COUNT(*) FROM rollouts),"
                " (SELECT COALESCE(MAX(id), 0) FROM policy_changes),"
                " (SELECT COALESCE(MAX(finished_at), 0) FROM eval_runs)").fetchone()
        finally:
            conn.close()
        return tuple(float(x) for x in row)

    async def refresh(self, force: bool = False) -> bool:
        """Reload when the store changed since the last look; True when it did."""
        revision = await asyncio.to_thread(self._read_revision)
        if not force and revision == self._revision:
            return False
        self._revision = revision
        await self.load_registered()
        self.keel.apply_policy_overrides()
        return True

    def set_leader_task(self, task: Callable[[], Awaitable[None]] | None) -> None:
        """Work one process does per interval (the rollout controller's tick)."""
        self._leader_task = task

    def start(self) -> None:
        interval = self.keel.settings.control_interval_s
        if interval > 0 and self._task is None:
            if self._leader_task is None:
                self._lease = Lease(self.keel.store, "control-plane", instance_id(),
                                    ttl_s=max(5.0, 3 * interval))
                self._controller = controller_for(self.keel.store, self.keel.spec)
                self._pruner = Pruner(self.keel.store, self.keel.spec.retention)
                self._leader_task = self._lead
            self._task = asyncio.get_running_loop().create_task(self._run(interval))

    async def _lead(self) -> None:
        """The leader's round: take or renew the lease, then tick the rollout controller."""
        if self._lease is None or self._controller is None:
            return
        if not await asyncio.to_thread(self._lease.acquire):
            return
        transitions = await asyncio.to_thread(self._controller.tick)
        for t in transitions:
            log.info("rollout %s: %s -> %s (%s)", t.rollout_id, t.from_state, t.to_state, t.reason)
        if transitions:
            await self.refresh(force=True)  # serve the new split or champion at once
        if self._pruner is not None:  # old events, payloads, reviews, rollups: in batches
            await asyncio.to_thread(self._pruner.tick)
        await self._reconcile_budgets()

    async def _reconcile_budgets(self) -> None:
        """Budgets in Redis: raise each period's shared spend to the ledger's, at most once
        a minute (a flushed or restarted Redis must not forget money spent)."""
        gate = self.keel.pipeline.budgets
        reconcile = getattr(gate.limits, "reconcile", None) if gate is not None else None
        now = time.monotonic()
        if reconcile is None or now - self._reconciled < RECONCILE_S:
            return
        self._reconciled = now
        await asyncio.to_thread(reconcile)

    @property
    def leader(self) -> bool:
        return self._lease is not None and self._lease.held

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._lease is not None and self._lease.held:
            try:  # another process may lead at once
                await asyncio.to_thread(self._lease.release)
            except Exception as exc:  # the store is down: the lease expires by itself
                log.warning("control-plane lease not released (%s)", exc)

    async def _run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                if self._leader_task is not None:
                    await self._leader_task()
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("control-plane sync failed; retrying in %.1fs", interval)
