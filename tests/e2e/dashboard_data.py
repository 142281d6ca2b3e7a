"""Data for the dashboard's browser tests.

- :func:`history`: a week of made-up calls as :class:`~keel.types.Event` records, written
  into a store before ``keel serve`` starts (``seed``), so a real server's pages have
  days of traffic to draw;
- :class:`MockApi`: a made-up but realistic Keel API (a month of traffic on three
  features, budgets, SLOs, drift, a canary) answered through Playwright's request
  interception, so the charts' behaviour is checked on rich, fixed data whatever a real
  server has recorded. ``MockApi(now).handle(route)`` answers ``/api/...`` and
  ``/v1/features``; anything it does not know is a 404 ``not_found`` in Keel's error
  shape, and ``fail[path] = (status, body)`` makes a path answer that instead.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

from keel.types import Attempt, Decision, Event, OnFail, ValidationResult
from tests.backends import store_at

if TYPE_CHECKING:
    from pathlib import Path

    from playwright.sync_api import Route

HOUR = 3600
DAY = 86400


class Profile(NamedTuple):
    description: str
    kind: str
    share: float  # of the calls
    cost: float  # USD per call
    p50: float  # ms


FEATURES = {
    "triage": Profile("Route a banking customer's message to an intent.", "label", 0.62, 0.00042, 38.0),
    "reply": Profile("Draft a reply to a support ticket.", "text", 0.28, 0.0031, 820.0),
    "summarize": Profile("Summarize a long document.", "json", 0.10, 0.0094, 1650.0),
}
DECISION_MIX = {"accepted": 0.81, "repaired": 0.04, "fallback": 0.03, "review": 0.08,
                "refused": 0.015, "error": 0.025}


# --- a week of calls for a real server -------------------------------------------------

# feature -> (version, share of calls, median latency ms, input and output tokens, $/call)
HISTORY = {"triage": ("mini-2", 0.6, 45.0, 160, 4, 0.0007),
           "reply": ("r1", 0.3, 900.0, 700, 180, 0.0041),
           "ticket": ("v1", 0.1, 300.0, 240, 60, 0.0009)}


def history(now: float, days: int = 7, per_hour: int = 24, seed: int = 5) -> list[Event]:
    """Calls over the ``days`` before ``now`` (none in the last 15 minutes, so live
    traffic stands apart), with a daily rhythm and an upstream incident 30 hours ago."""
    rng = random.Random(seed)
    out: list[Event] = []
    start = now - days * DAY
    hours = int((now - 900 - start) // HOUR)
    for h in range(hours):
        t0 = start + h * HOUR
        rhythm = 0.5 + 0.5 * math.sin(((t0 % DAY) / DAY) * 2 * math.pi - 1.9)
        incident = abs(now - 30 * HOUR - t0) < HOUR
        for _ in range(int(per_hour * (0.3 + rhythm) + rng.random())):
            feature = rng.choices(list(HISTORY), [v[1] for v in HISTORY.values()])[0]
            version, _, median, tin, tout, cost = HISTORY[feature]
            decision = rng.choices(list(DECISION_MIX), list(DECISION_MIX.values()))[0]
            if incident and rng.random() < 0.5:
                decision = "error"
            latency = median * math.exp(rng.gauss(0, 0.45)) * (3 if incident else 1)
            out.append(_event(rng, t0 + rng.random() * HOUR, feature, version, decision, latency,
                              tin, tout, cost))
    return out


def _event(rng: random.Random, ts: float, feature: str, version: str, decision: str,
           latency: float, tin: int, tout: int, cost: float | None) -> Event:
    failed = decision == "error"
    invoke = latency * 0.93
    return Event(
        trace_id=f"{rng.getrandbits(128):032x}", ts=ts, feature=feature, version=version,
        decision=Decision(decision), confidence=None if failed else round(rng.uniform(0.35, 0.99), 3),
        latency_ms=round(latency, 3),
        timings_ms={"checks": 0.3, "guards": round(latency * 0.02, 3), "route": 0.05,
                    "invoke": round(invoke, 3), "validate": 0.4, "decide": 0.05,
                    "total": round(latency, 3)},
        input_tokens=0 if failed else tin, output_tokens=0 if failed else tout,
        cost_usd=None if failed or cost is None else round(cost * rng.uniform(0.7, 1.3), 7),
        attempts=[Attempt(version, "openai", not failed, round(invoke, 3),
                          error_code="provider_unavailable" if failed else None)],
        validations=[] if failed else [ValidationResult("allowed_labels", decision != "review",
                                                         OnFail.REVIEW)],
        input={"text": "my card has not arrived"}, output=None if failed else {"label": "card_arrival"},
        user=f"user-{rng.randint(1, 6)}", key=None,
        error_code="all_targets_failed" if failed else None, routed=version)


def seed(database: Path, events: list[Event]) -> None:
    """Write ``events`` into a new store as the event writer would (rollups included)."""
    store = store_at(database)
    store.migrate()
    conn = store.connect()
    try:
        for i in range(0, len(events), 1000):
            store.write_events(conn, events[i:i + 1000])
    finally:
        conn.close()


# --- a made-up API ------------------------------------------------------------------------


def error(code: str, message: str, status: int) -> tuple[int, dict[str, Any]]:
    kind = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error"}
    return status, {"error": {"code": code, "message": message,
                              "type": kind.get(status, "api_error"), "param": None}}


class MockApi:
    def __init__(self, now: float) -> None:
        self.now = now
        self.fail: dict[str, tuple[int, dict[str, Any]]] = {}  # path -> answer
        self.requests: list[str] = []
        rng = random.Random(7)
        self.hourly = self._traffic(rng)
        self.events = self._events(random.Random(11))

    # --- the data ---------------------------------------------------------------------

    def _traffic(self, rng: random.Random) -> list[dict[str, Any]]:
        """30 days of hourly buckets per feature: calls with a daily rhythm, a bad hour."""
        start = (int(self.now) // HOUR - 30 * 24 + 1) * HOUR
        rows = []
        for h in range(30 * 24):
            t = start + h * HOUR
            daily = 0.55 + 0.45 * math.sin((t % DAY) / DAY * 2 * math.pi - 1.9)
            for name, f in FEATURES.items():
                calls = max(0, int(rng.gauss(240 * f.share * (0.4 + daily), 6)))
                incident = h == 30 * 24 - 20  # an upstream incident 20 hours ago
                mix = dict(DECISION_MIX)
                if incident:
                    mix["error"], mix["fallback"] = 0.2, 0.15
                decisions = {d: int(calls * p + rng.random()) for d, p in mix.items()}
                p50 = f.p50 * (1 + 0.15 * daily + rng.uniform(-.05, .05)) * (2.5 if incident else 1)
                rows.append({"t": t, "feature": name, "calls": sum(decisions.values()),
                             "errors": decisions["error"], "decisions": decisions,
                             "cost_usd": round(sum(decisions.values()) * f.cost, 6),
                             "input_tokens": calls * 180, "output_tokens": calls * 22,
                             "p50": round(p50, 1), "p95": round(p50 * rng.uniform(2.2, 2.8), 1)})
        return rows

    def _events(self, rng: random.Random) -> list[dict[str, Any]]:
        out = []
        for i in range(130):
            feature = rng.choices(list(FEATURES), [f.share for f in FEATURES.values()])[0]
            decision = rng.choices(list(DECISION_MIX), list(DECISION_MIX.values()))[0]
            if i in (3, 17):
                decision = "error"
            latency = FEATURES[feature].p50 * rng.uniform(0.6, 2.5)
            out.append({
                "trace_id": f"{rng.getrandbits(128):032x}", "ts": self.now - 40 - i * 173.0,
                "feature": feature, "version": "mini-3" if i % 5 == 0 and feature == "triage" else "mini-2",
                "decision": decision, "confidence": round(rng.uniform(0.3, 0.99), 3),
                "latency_ms": round(latency, 2),
                "cost_usd": None if decision == "error" else round(FEATURES[feature].cost * rng.uniform(.6, 1.4), 6),
                "user": f"user-{rng.randint(1, 9)}", "key": ["a1b2c3d4e5f6", "0f9e8d7c6b5a"][i % 2],
                "error_code": "all_targets_failed" if decision == "error" else None,
            })
        return out

    def _window(self, q: dict[str, str]) -> tuple[float, float]:
        return float(q.get("since") or self.now - DAY), float(q.get("until") or self.now)

    def _stats(self, q: dict[str, str], feature: str | None) -> dict[str, Any]:
        since, until = self._window(q)
        step = {"minute": 60, "hour": HOUR, "day": DAY}[q.get("bucket") or "hour"]
        rows = [r for r in self.hourly if since <= r["t"] < until and (feature in (None, r["feature"]))]
        buckets: dict[int, dict[str, Any]] = {}
        for r in rows:
            b = buckets.setdefault(int(r["t"] // step * step), {
                "calls": 0, "errors": 0, "cost_usd": 0.0, "decisions": {}, "lat": []})
            b["calls"] += r["calls"]
            b["errors"] += r["errors"]
            b["cost_usd"] += r["cost_usd"]
            b["lat"].append((r["p50"], r["p95"], r["calls"]))
            for d, n in r["decisions"].items():
                b["decisions"][d] = b["decisions"].get(d, 0) + n

        def wavg(lat: list[tuple[float, float, int]], i: int) -> float | None:
            n = sum(x[2] for x in lat)
            return round(sum(x[i] * x[2] for x in lat) / n, 1) if n else None

        series = [{"t": t, "calls": b["calls"], "errors": b["errors"],
                   "cost_usd": round(b["cost_usd"], 6), "decisions": b["decisions"],
                   "p50": wavg(b["lat"], 0), "p95": wavg(b["lat"], 1)}
                  for t, b in sorted(buckets.items())]
        decisions: dict[str, int] = {}
        for s in series:
            for d, n in s["decisions"].items():
                decisions[d] = decisions.get(d, 0) + n
        lat = [x for b in buckets.values() for x in b["lat"]]
        totals = {"calls": sum(s["calls"] for s in series), "errors": sum(s["errors"] for s in series),
                  "cost_usd": round(sum(s["cost_usd"] for s in series), 4),
                  "input_tokens": sum(r["input_tokens"] for r in rows),
                  "output_tokens": sum(r["output_tokens"] for r in rows), "decisions": decisions,
                  "latency_ms": {"p50": wavg(lat, 0), "p95": wavg(lat, 1),
                                 "p99": (wavg(lat, 1) or 0) * 1.6 or None}}
        out: dict[str, Any] = {"totals": totals, "series": series}
        if feature is None:
            out["features"] = []
            for name in FEATURES:
                fr = [r for r in rows if r["feature"] == name]
                out["features"].append({
                    "name": name, "calls": sum(r["calls"] for r in fr),
                    "errors": sum(r["errors"] for r in fr),
                    "cost_usd": round(sum(r["cost_usd"] for r in fr), 4),
                    "p95": wavg([(r["p50"], r["p95"], r["calls"]) for r in fr], 1)})
        else:
            calls = totals["calls"]
            out["versions"] = [
                {"version": "mini-2", "calls": int(calls * .9), "p50": 36.1, "p95": 92.4,
                 "error_rate": 0.021, "validation_failure_rate": 0.034, "review_rate": 0.081,
                 "cost_per_call": 0.00042, "decisions": {}},
                {"version": "mini-3", "calls": calls - int(calls * .9), "p50": 33.0, "p95": 88.0,
                 "error_rate": 0.018, "validation_failure_rate": 0.029, "review_rate": 0.072,
                 "cost_per_call": 0.00039, "decisions": {}}] if feature == "triage" else []
        return out

    def _costs(self, q: dict[str, str]) -> dict[str, Any]:
        since, until = self._window(q)
        group = q.get("group", "feature")
        rows = [r for r in self.hourly if since <= r["t"] < until
                and (not q.get("feature") or r["feature"] == q["feature"])]
        out: dict[str, dict[str, Any]] = {}
        for i, r in enumerate(rows):
            value = {"feature": r["feature"], "day": _day(r["t"]),
                     "version": "mini-2" if r["feature"] != "summarize" else "v4",
                     "key": ["a1b2c3d4e5f6", "0f9e8d7c6b5a", "77aa21c0be3f"][i % 3],
                     "user": f"user-{i % 7 + 1}"}[group]
            row = out.setdefault(value, {"value": value, "calls": 0, "input_tokens": 0,
                                         "output_tokens": 0, "cost_usd": 0.0})
            row["calls"] += r["calls"]
            row["input_tokens"] += r["input_tokens"]
            row["output_tokens"] += r["output_tokens"]
            row["cost_usd"] = round(row["cost_usd"] + r["cost_usd"], 6)
        ordered = sorted(out.values(), key=lambda r: (r["value"] if group == "day" else -r["cost_usd"]))
        return {"group": group, "rows": ordered[: int(q.get("limit") or 100)]}

    def _event_list(self, q: dict[str, str]) -> dict[str, Any]:
        rows = [e for e in self.events
                if all(not q.get(k) or e[k] == q[k] for k in ("feature", "version", "decision", "user", "key"))
                and e["trace_id"].startswith(q.get("trace", ""))
                and e["ts"] >= float(q.get("since") or 0) and e["ts"] < float(q.get("until") or 1e12)]
        start = int(q.get("cursor") or 0)
        limit = int(q.get("limit") or 50)
        page = rows[start:start + limit]
        return {"events": page, "next": str(start + limit) if start + limit < len(rows) else None}

    def _event(self, trace: str) -> tuple[int, dict[str, Any]]:
        e = next((e for e in self.events if e["trace_id"] == trace), None)
        if e is None:
            return error("event_not_found", f"no event with trace id '{trace}'", 404)
        failed = e["decision"] in ("error", "fallback")
        attempts = [{"version": e["version"], "provider": "openai", "ok": not failed,
                     "latency_ms": round(e["latency_ms"] * (.45 if failed else .8), 2), "retry": 0,
                     "error_code": "provider_timeout" if failed else None,
                     "error": "no answer within 5 s" if failed else None, "rejected_by": None}]
        if failed:
            attempts.append({"version": "fallback-1", "provider": "anthropic", "ok": e["decision"] == "fallback",
                             "latency_ms": round(e["latency_ms"] * .4, 2), "retry": 0,
                             "error_code": None if e["decision"] == "fallback" else "provider_unavailable",
                             "error": None, "rejected_by": None})
        invoke = sum(a["latency_ms"] for a in attempts)
        timings = {"checks": 0.31, "guards": 1.9, "route": 0.04, "invoke": round(invoke, 2),
                   "validate": 0.52, "decide": 0.03}
        timings["total"] = round(sum(timings.values()), 2)
        return 200, {**e, "input_tokens": 182, "output_tokens": 9, "routed": e["version"],
                     "reason": "confidence 0.41 < accept_at 0.5" if e["decision"] == "review" else None,
                     "timings": timings, "attempts": attempts,
                     "validations": [{"validator": "allowed_labels", "passed": True, "on_fail": "review",
                                      "message": None, "repaired": None},
                                     {"validator": "pii", "passed": e["decision"] != "repaired",
                                      "on_fail": "repair", "message": "an email address in the output"
                                      if e["decision"] == "repaired" else None, "repaired": None}],
                     "checks": [{"check": "injection", "passed": True, "score": 0.02}],
                     "input": {"text": "my card still has not arrived, it has been two weeks"},
                     "output": {"label": "card_arrival"}}

    def _budgets(self) -> dict[str, Any]:
        day0 = int(self.now) // DAY * DAY
        month0 = day0 - 17 * DAY
        return {
            "budgets": [
                {"name": "company", "scope": "global", "match": "*", "period": "month", "limit_usd": 500.0,
                 "spent_usd": 212.4, "reserved_usd": 0.8, "share": 0.4248, "period_start": month0,
                 "period_end": month0 + 30 * DAY, "state": "ok"},
                {"name": "reply-daily", "scope": "feature", "match": "reply", "period": "day", "limit_usd": 25.0,
                 "spent_usd": 21.7, "reserved_usd": 0.3, "share": 0.868, "period_start": day0,
                 "period_end": day0 + DAY, "state": "warning"},
                {"name": "key-0f9e", "scope": "key", "match": "0f9e8d7c6b5a", "period": "day", "limit_usd": 5.0,
                 "spent_usd": 5.02, "reserved_usd": 0.0, "share": 1.004, "period_start": day0,
                 "period_end": day0 + DAY, "state": "exceeded"}],
            "throttles": [
                {"name": "per-user", "scope": "user", "match": "*", "requests_per_minute": 60, "tokens_per_minute": None},
                {"name": "reply-tokens", "scope": "feature", "match": "reply", "requests_per_minute": None,
                 "tokens_per_minute": 200000}],
            "alerts": [
                {"id": 3, "budget": "key-0f9e", "threshold": 1.0, "spent_usd": 5.02, "limit_usd": 5.0,
                 "ts": self.now - 900, "delivered": True},
                {"id": 2, "budget": "reply-daily", "threshold": 0.8, "spent_usd": 20.1, "limit_usd": 25.0,
                 "ts": self.now - 3 * HOUR, "delivered": True},
                {"id": 1, "budget": "key-0f9e", "value": "0f9e8d7c6b5a", "threshold": 0.5, "spent_usd": 2.6,
                 "limit_usd": 5.0, "ts": self.now - 7 * HOUR, "delivered": None}],
        }

    def _slo(self, feature: str) -> dict[str, Any]:
        return {"feature": feature, "window_days": 30, "objectives": [
            {"feature": feature, "objective": "latency_p95_ms", "target": 250, "window_days": 30,
             "calls": 102311, "bad": 3890, "allowed": 5115.6, "observed": 231.0,
             "budget_remaining": 0.2396, "burn_rates": {"5m": 0.4, "30m": 0.8, "1h": 1.3, "6h": 0.9},
             "page": False, "ticket": False, "met": True},
            {"feature": feature, "objective": "error_rate", "target": 0.01, "window_days": 30,
             "calls": 102311, "bad": 1301, "allowed": 1023.1, "observed": 0.0127,
             "budget_remaining": -0.2716, "burn_rates": {"5m": 16.2, "30m": 7.7, "1h": 15.1, "6h": 6.4},
             "page": True, "ticket": True, "met": False},
            {"feature": feature, "objective": "review_rate", "target": 0.1, "window_days": 30,
             "calls": 102311, "bad": 8102, "allowed": 10231.1, "observed": 0.0792,
             "budget_remaining": 0.2081, "burn_rates": {"5m": 0.7, "30m": 0.8, "1h": 0.8, "6h": 0.79},
             "page": False, "ticket": False, "met": True}]}

    def _drift(self, feature: str) -> dict[str, Any]:
        """The shape of keel.control.drift.DriftReport.to_json: the first window is the
        reference; input.length drifts in the last three, output.label in one."""
        windows = []
        for i in range(14):
            start = (int(self.now) // DAY - 13 + i) * DAY
            late = i >= 11

            def test(method: str, p: float, drifted: bool = False, **summary: Any) -> dict[str, Any]:
                return {"method": method, "statistic": round(1 - p, 3), "p_value": p, "p_adjusted": p,
                        "threshold": 0.01, "n": 3400, "drifted": drifted, "summary": summary, "note": None}

            cols = {} if i == 0 else {
                "input.length": test("ks", 0.001 if late else 0.62 - 0.04 * i, late, mean=120 + 30 * late, p50=96, p95=310),
                "input.language": test("chi2", 0.55, shares={"en": 0.91, "de": 0.09}),
                "output.label": test("chi2", 0.004 if i == 12 else 0.5, i == 12, shares={"card_arrival": 0.4, "other": 0.2}),
                "confidence": test("ks", 0.08 if i in (5, 6) else 0.4, mean=0.81, p50=0.86, p95=0.99),
            }
            drifted = [c for c, t in cols.items() if t["drifted"]]
            windows.append({"index": i, "start": start, "end": start + DAY, "n": 3400 + 37 * i,
                            "role": "reference" if i == 0 else "tested", "drifted": bool(drifted),
                            "alert": i >= 12, "drifted_columns": drifted, "columns": cols})
        return {"feature": feature, "window_s": DAY,
                "reference": {"kind": "window", "description": "the first window", "n": 3400},
                "windows": windows, "alert": True, "alert_active": True, "notes": [],
                "skipped": {"pii": "no PII check ran"}}

    def _rollout(self, feature: str) -> tuple[int, dict[str, Any]]:
        if feature != "triage":
            return error("rollout_not_found", f"'{feature}' has had no rollout; start one with POST "
                         f"/api/features/{feature}/rollout", 404)
        started = self.now - 5 * HOUR
        return 200, {
            "rollout": {"id": 4, "feature": feature, "candidate": "mini-3", "baseline": "mini-2",
                        "state": "running", "step": 2, "steps": [0.01, 0.05, 0.25, 0.5, 1.0],
                        "weight": 0.25, "forced": False, "gate_run": "run-19", "step_started_at": self.now - 1800,
                        "inconclusive_since": None, "reason": "step 2 passed: candidate no worse on error rate and latency",
                        "created_by": "cli:ana", "created_at": started, "updated_at": self.now - 1800},
            "metrics": {
                "candidate": {"version": "mini-3", "calls": 412, "errors": 6, "validation_failures": 9,
                              "reviews": 28, "refusals": 1, "overrides": 2, "verdicts": 11,
                              "latency_p95_ms": 88.0, "latency_samples": 412, "cost_per_call_usd": 0.00039, "cost_known": 412},
                "baseline": {"version": "mini-2", "calls": 1240, "errors": 21, "validation_failures": 35,
                             "reviews": 96, "refusals": 4, "overrides": 9, "verdicts": 40,
                             "latency_p95_ms": 92.4, "latency_samples": 1240, "cost_per_call_usd": 0.00042, "cost_known": 1240}},
            "transitions": [
                {"id": 9, "rollout_id": 4, "feature": feature, "from_state": "running", "to_state": "running",
                 "step": 2, "weight": 0.25, "reason": "step 1 passed", "metrics": None, "actor": "controller", "at": self.now - 1800},
                {"id": 8, "rollout_id": 4, "feature": feature, "from_state": "running", "to_state": "running",
                 "step": 1, "weight": 0.05, "reason": "step 0 passed", "metrics": None, "actor": "controller", "at": self.now - 3 * HOUR},
                {"id": 7, "rollout_id": 4, "feature": feature, "from_state": None, "to_state": "running",
                 "step": 0, "weight": 0.01, "reason": "started (eval run-19 passed)", "metrics": None, "actor": "cli:ana", "at": started}],
            "now": self.now}

    def _versions(self, feature: str) -> dict[str, Any]:
        names = ["mini-3", "mini-2"] if feature == "triage" else ["mini-2"]
        aliases = {"champion": "mini-2", "canary": "mini-3"} if feature == "triage" else {"champion": "mini-2"}
        return {"feature": feature, "aliases": aliases, "versions": [
            {"feature": feature, "name": n, "number": len(names) - i, "provider": "openai", "model": "gpt-4.1-mini",
             "spec": {}, "spec_hash": f"sha256:{(i + 3) * 'ab12'}{'0' * 48}", "artifact_path": None, "artifact_sha256": None,
             "dataset": None, "dataset_digest": None, "card": {}, "source": "config" if n == "mini-2" else "api",
             "registered_by": "cli:ana", "registered_at": self.now - (2 + 10 * i) * DAY,
             "aliases": sorted(a for a, v in aliases.items() if v == n), "served": True}
            for i, n in enumerate(names)]}

    def _reviews(self, feature: str | None) -> dict[str, Any]:
        rows = [{"feature": "reply", "pending": 14, "in_progress": 2, "done": 311, "approved": 240, "edited": 51,
                 "rejected": 20, "rejected_share": 20 / 311, "agreement": {"items": 40, "unanimous": 0.85, "pairwise": 0.9}},
                {"feature": "summarize", "pending": 3, "in_progress": 0, "done": 64, "approved": 50, "edited": 9,
                 "rejected": 5, "rejected_share": 5 / 64, "agreement": {"items": 0, "unanimous": None, "pairwise": None}},
                {"feature": "triage", "pending": 41, "in_progress": 1, "done": 1204, "approved": 1001, "edited": 170,
                 "rejected": 33, "rejected_share": 33 / 1204, "agreement": {"items": 120, "unanimous": 0.91, "pairwise": 0.94}}]
        return {"features": [r for r in rows if feature in (None, r["feature"])]}

    def _features(self) -> dict[str, Any]:
        return {"features": [{"name": n, "description": f.description, "input_schema": {},
                              "output_kind": f.kind, "labels": None,
                              "versions": {"mini-2": {"provider": "openai", "model": "gpt-4.1-mini"}},
                              "aliases": self._versions(n)["aliases"], "fallbacks": []}
                             for n, f in FEATURES.items()]}

    # --- the router -------------------------------------------------------------------

    def answer(self, path: str, q: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if path in self.fail:
            return self.fail[path]
        parts = [unquote(p) for p in path.strip("/").split("/")]
        known = set(FEATURES)
        match parts:
            case ["v1", "features"]:
                return 200, self._features()
            case ["api", "stats", "overview"]:
                return 200, self._stats(q, None)
            case ["api", "stats", "features", f] if f in known:
                return 200, self._stats(q, f)
            case ["api", "stats", "costs"]:
                return 200, self._costs(q)
            case ["api", "events"]:
                return 200, self._event_list(q)
            case ["api", "events", trace]:
                return self._event(trace)
            case ["api", "budgets"]:
                return 200, self._budgets()
            case ["api", "slo", f] if f in known:
                return 200, self._slo(f)
            case ["api", "drift", f] if f in known:
                return 200, self._drift(f)
            case ["api", "features", f, "rollout"] if f in known:
                return self._rollout(f)
            case ["api", "features", f, "versions"] if f in known:
                return 200, self._versions(f)
            case ["api", "reviews", "stats"]:
                return 200, self._reviews(q.get("feature"))
            case ["api", "slo" | "drift", f] | ["api", "stats", "features", f] | ["api", "features", f, _]:
                return error("feature_not_found",
                             f"no feature named '{f}' (features: {', '.join(sorted(known))})", 404)
        return error("not_found", f"no route GET {path}", 404)

    def handle(self, route: Route) -> None:
        url = urlsplit(route.request.url)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self.requests.append(f"{url.path}?{url.query}" if url.query else url.path)
        status, body = self.answer(url.path, q)
        route.fulfill(status=status, json=body)


def _day(t: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d")
