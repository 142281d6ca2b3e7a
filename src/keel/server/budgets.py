"""``GET /api/budgets``: every budget's spend this period (one row per budget and scope
value: the matched value, or each value seen since start), the throttles, and the
latest alerts."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from keel.control.alerts import recent_alerts
from keel.gateway import Keel
from keel.server.features import json_response
from keel.server.reviews import _int
from keel.stages.budget import Balance, period_bounds

router = APIRouter()

WARNING_SHARE = 0.8


def _row(name: str, scope: str, value: str | None, period: str, limit: float,
         balance: Balance | None, now: float) -> dict[str, Any]:
    start, end = (balance.period_start, balance.period_end) if balance else period_bounds(period, now)
    spent = balance.spent if balance else 0.0
    reserved = balance.reserved if balance else 0.0
    share = (spent + reserved) / limit
    state = "exceeded" if share >= 1 else "warning" if share >= WARNING_SHARE else "ok"
    return {"name": name, "scope": scope, "match": value, "period": period, "limit_usd": limit,
            "spent_usd": round(spent, 6), "reserved_usd": round(reserved, 6),
            "share": round(share, 4), "period_start": start, "period_end": end, "state": state}


@router.get("/api/budgets", summary="Budgets with their spend, throttles, and recent alerts")
async def budgets(request: Request) -> Response:
    """Query: ``alerts`` (how many recent alerts, 0..500, default 50)."""
    keel: Keel = request.app.state.keel
    n_alerts = _int(request, "alerts", 50, 0, 500)
    gate = keel.pipeline.budgets
    rows: list[dict[str, Any]] = []
    now = time.time()
    if gate is not None:
        limits = gate.limits
        for budget in keel.spec.budgets:
            values = [budget.match or "*"] if budget.match or budget.scope == "all" else []
            values += [v for (name, v) in limits.balances if name == budget.name and v not in values]
            for value in values:
                balance = limits.balances.get((budget.name, value))
                if balance is None or now >= balance.period_end:
                    await asyncio.to_thread(limits.load, budget, value)
                    balance = limits.balances.get((budget.name, value))
                rows.append(_row(budget.name, budget.scope,
                                 None if budget.scope == "all" else value, budget.period,
                                 budget.limit_usd, balance, now))
    rows.sort(key=lambda r: -r["share"])
    throttles = [t.model_dump() for t in keel.spec.throttles]
    alerts = await asyncio.to_thread(recent_alerts, keel.store, n_alerts) if n_alerts else []
    return json_response({"budgets": rows, "throttles": throttles, "alerts": alerts})
