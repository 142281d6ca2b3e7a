// What the overview and a feature's page share: the headline numbers, calls by decision
// and latency over time, read from /api/stats/overview or /api/stats/features/{f}.

import { timeChart } from "./charts.js";
import { DECISIONS, empty, el, kpi } from "./dom.js";
import { compact, int, isNum, ms, pct, toDate, usd } from "./format.js";

/** The API's series as chart points (t: Date), oldest first. */
export function points(data) {
  const series = Array.isArray(data?.series) ? data.series : [];
  return series.map((s) => ({
    t: toDate(s.t ?? s.ts ?? s.start),
    values: { ...(s.decisions || {}), calls: s.calls, errors: s.errors, cost: s.cost_usd ?? s.cost, p50: s.p50, p95: s.p95 },
  })).filter((p) => p.t).sort((a, b) => a.t - b.t);
}

/** The decisions that occur, in the pipeline's order (then any others). */
export function decisionSeries(data) {
  // the decisions that happened (the API may list every decision, with zeros)
  const seen = new Set();
  for (const s of data?.series || []) {
    for (const [d, n] of Object.entries(s.decisions || {})) if (n > 0) seen.add(d);
  }
  const known = DECISIONS.filter((d) => seen.has(d));
  const other = [...seen].filter((d) => !DECISIONS.includes(d)).sort();
  return [...known, ...other].map((d) => ({ key: d, label: d, cls: DECISIONS.includes(d) ? d : "other" }));
}

export function totalCalls(data) {
  return Number(data?.totals?.calls ?? 0);
}

/** The tiles: calls, error rate, cost, latency, tokens. */
export function renderKpis(body, data, range) {
  const t = data?.totals || {};
  const calls = Number(t.calls ?? 0);
  const errors = Number(t.errors ?? 0);
  const lat = t.latency_ms || t.latency || {};
  const review = t.decisions?.review;
  const priced = calls - (t.cost_unknown ?? 0);
  body.replaceChildren(el("div", { class: "kpis" },
    kpi("Calls", int(calls), { id: "kpi-calls", sub: range.label }),
    kpi("Error rate", calls ? pct(errors / calls) : "—", { id: "kpi-errors", sub: `${int(errors)} errors`, tone: calls && errors / calls > 0.05 ? "bad" : "" }),
    kpi("Cost", usd(t.cost_usd ?? 0), { id: "kpi-cost", sub: [
      priced > 0 && isNum(t.cost_usd) ? `${usd(t.cost_usd / priced)} per call` : "",
      t.cost_unknown ? `${int(t.cost_unknown)} of unknown cost` : ""].filter(Boolean).join(" · ") }),
    kpi("Latency p50", ms(lat.p50), { id: "kpi-p50", sub: `p95 ${ms(lat.p95)} · p99 ${ms(lat.p99)}` }),
    kpi("To review", isNum(review) ? int(review) : "—", { id: "kpi-review", sub: isNum(review) && calls ? `${pct(review / calls)} of calls` : "" }),
    kpi("Tokens", compact((t.input_tokens ?? 0) + (t.output_tokens ?? 0)), { id: "kpi-tokens", sub: `${compact(t.input_tokens)} in · ${compact(t.output_tokens)} out` })));
}

export function renderCalls(body, data, range, hint) {
  const pts = points(data);
  if (!totalCalls(data) && !pts.some((p) => p.values.calls > 0)) {
    empty(body, `No calls in the ${range.label}`, "Calls show up here as they are made, for example:", hint);
    return;
  }
  const series = decisionSeries(data);
  if (!series.length) series.push({ key: "calls", label: "calls", cls: "calls" });
  timeChart(body, {
    title: `Calls by decision, ${range.label}`, type: "stacked", series, points: pts,
    bucket: range.bucketSeconds, domain: range.domain, format: compact, integer: true, legend: true, legendTotals: true,
    summary: `${int(totalCalls(data))} calls in the ${range.label}: ${series.map((s) => `${int(data?.totals?.decisions?.[s.key] ?? 0)} ${s.label}`).join(", ")}.`,
  });
}

export function renderLatency(body, data, range) {
  const pts = points(data).filter((p) => isNum(p.values.p50) || isNum(p.values.p95));
  if (!pts.length) {
    empty(body, "No latencies yet", "The p50 and p95 of each period appear once calls are recorded.");
    return;
  }
  const lat = data?.totals?.latency_ms || {};
  timeChart(body, {
    title: `Latency p50 and p95, ${range.label}`, type: "line", area: true, points: pts,
    series: [{ key: "p95", label: "p95", cls: "p95" }, { key: "p50", label: "p50", cls: "p50" }],
    bucket: range.bucketSeconds, domain: range.domain, format: ms, legend: true,
    summary: `Over the ${range.label}: p50 ${ms(lat.p50)}, p95 ${ms(lat.p95)}.`,
  });
}

/** Cost per day from /api/stats/costs?group=day rows. */
export function costPoints(rows) {
  // "2025-03-03" is a calendar day: local midnight, so the bars sit on the day ticks
  const dayOf = (v) => {
    const m = typeof v === "string" && v.match(/^(\d{4})-(\d{2})-(\d{2})$/);
    return m ? new Date(Number(m[1]), Number(m[2]) - 1, Number(m[3])) : toDate(v);
  };
  return rows.map((r) => ({ t: dayOf(r.value ?? r.day ?? r.t), values: { cost: r.cost_usd ?? 0 } }))
    .filter((p) => p.t).sort((a, b) => a.t - b.t);
}

export function renderCostPerDay(body, data, range) {
  const rows = Array.isArray(data?.rows) ? data.rows : [];
  const pts = costPoints(rows);
  const total = rows.reduce((a, r) => a + (r.cost_usd || 0), 0);
  if (!pts.length) {
    empty(body, `No cost recorded in the ${range.label}`,
      "Costs are known for models with a price: in Keel's price table, or `price:` on a version.");
    return;
  }
  const startDay = new Date(range.domain[0]);
  startDay.setHours(0, 0, 0, 0);
  const firstT = Math.min(startDay.getTime(), pts[0].t.getTime());
  timeChart(body, {
    title: `Cost per day, ${range.label}`, type: "stacked", points: pts,
    series: [{ key: "cost", label: "cost", cls: "cost" }], bucket: 86400,
    domain: [new Date(firstT), new Date(Math.max(range.domain[1].getTime(), pts.at(-1).t.getTime() + 86400000))],
    format: usd, summary: `${usd(total)} over ${pts.length} day(s).`,
  });
}
