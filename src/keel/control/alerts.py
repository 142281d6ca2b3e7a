"""Budget alerts: when a budget's spend crosses 50 / 80 / 100% (``alerts.thresholds``)
in a period, one alert is stored (the dashboard and ``GET /api/budgets`` show it) and,
when ``alerts.webhook`` is set, POSTed there as JSON.

Raising an alert is synchronous and cheap (it happens while an event is observed on the
event loop); storing and delivering run in a background task: a slow or failing webhook
never delays a call. Delivery is tried three times with backoff; the stored alert says
whether it got through.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from keel.spec import AlertsSpec, BudgetSpec
from keel.stages.budget import Balance
from keel.store.db import Store

log = logging.getLogger("keel.alerts")


@dataclass(frozen=True, slots=True)
class Alert:
    budget: str
    scope: str
    value: str
    period: str
    period_start: float
    threshold: float
    spent_usd: float
    limit_usd: float
    ts: float

    def message(self) -> str:
        who = "" if self.scope == "all" else f" ({self.scope} {self.value})"
        return (f"budget '{self.budget}'{who}: {self.threshold:.0%} spent, ${self.spent_usd:.4f} "
                f"of ${self.limit_usd:g} this {self.period}")


class AlertSink:
    def __init__(self, store: Store, spec: AlertsSpec) -> None:
        self.store = store
        self.spec = spec
        self._queue: asyncio.Queue[Alert] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.delivered = 0
        self.failed = 0

    def raise_(self, budget: BudgetSpec, value: str, balance: Balance, threshold: float) -> None:
        alert = Alert(budget.name, budget.scope, value, budget.period, balance.period_start,
                      threshold, round(balance.spent, 6), budget.limit_usd, time.time())
        log.warning("%s", alert.message())
        self._queue.put_nowait(alert)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Deliver what is queued (bounded by the webhook timeout), then stop."""
        task, self._task = self._task, None
        if task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout=self.spec.timeout_s * 3)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=self.spec.timeout_s) as client:
            while True:
                alert = await self._queue.get()
                try:
                    delivered = await self._deliver(client, alert) if self.spec.webhook else None
                    await asyncio.to_thread(self._store, alert, delivered)
                except Exception:  # one bad alert must not stop the others
                    log.exception("storing budget alert failed")
                finally:
                    self._queue.task_done()

    async def _deliver(self, client: httpx.AsyncClient, alert: Alert) -> bool:
        assert self.spec.webhook is not None
        body = {"type": "budget_alert", "message": alert.message(), **asdict(alert)}
        for attempt in range(3):
            try:
                response = await client.post(self.spec.webhook, json=body)
                if response.status_code < 300:
                    self.delivered += 1
                    return True
                log.warning("alert webhook answered %d", response.status_code)
            except httpx.HTTPError as exc:
                log.warning("alert webhook failed: %s", exc)
            await asyncio.sleep(0.2 * 2**attempt)
        self.failed += 1
        return False

    def _store(self, alert: Alert, delivered: bool | None) -> None:
        conn = self.store.connect()
        try:
            with conn:
                conn.execute(
                    "INSERT INTO budget_alerts (budget, scope, value, period, period_start,"
                    " threshold, spent_usd, limit_usd, delivered, ts) VALUES (?,?,?,?,?,?,?,?,?,?)"
                    " ON CONFLICT (budget, value, period_start, threshold) DO NOTHING",
                    (alert.budget, alert.scope, alert.value, alert.period, alert.period_start,
                     alert.threshold, alert.spent_usd, alert.limit_usd,
                     None if delivered is None else int(delivered), alert.ts))
        finally:
            conn.close()


def recent_alerts(store: Store, limit: int = 100) -> list[dict[str, Any]]:
    conn = store.connect()
    try:
        rows = conn.execute("SELECT * FROM budget_alerts ORDER BY ts DESC LIMIT ?",
                            (limit,)).fetchall()
    finally:
        conn.close()
    return [{**dict(r), "delivered": None if r["delivered"] is None else bool(r["delivered"])}
            for r in rows]


