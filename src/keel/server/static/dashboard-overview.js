// The overview (#/): totals, calls by decision, latency, cost per day, and every feature.

import { get, shared } from "./api.js";
import { el, empty, link, load, panel, table } from "./dom.js";
import { int, ms, pct, usd } from "./format.js";
import { renderCalls, renderCostPerDay, renderKpis, renderLatency } from "./dashboard-stats.js";

export async function render(ctx) {
  const { main, range, signal } = ctx;
  const period = { since: range.since, until: range.until };
  const overview = shared(() => get("/api/stats/overview", { ...period, bucket: range.bucket }, { signal }));
  const features = shared(() => get("/v1/features", {}, { signal }));
  // cost per day: at least a week, whatever the range (a day is one bar)
  const costSince = Math.min(range.since, range.until - 7 * 86400);
  const costs = shared(() => get("/api/stats/costs", { group: "day", since: costSince, until: range.until }, { signal }));

  const kpis = panel("Totals", { cls: "panel-kpis" });
  const calls = panel("Calls by decision", { wide: true });
  const latency = panel("Latency");
  const cost = panel("Cost per day");
  const list = panel("Features", { wide: true });
  main.replaceChildren(
    el("div", { class: "page-head" },
      el("h1", { class: "page-title", tabindex: "-1", text: "Overview" }),
      el("p", { class: "page-sub muted", text: `Every call through this Keel, ${range.label}.` })),
    kpis.root, el("div", { class: "grid" }, calls.root, latency.root, cost.root, list.root));

  const hint = async () => {
    const names = await features().then((f) => f.features.map((x) => x.name)).catch(() => []);
    return `keel call ${names[0] || "FEATURE"} '{"text": "hello"}'`;
  };
  const what = { what: "The overview", endpoint: "GET /api/stats/overview" };
  const command = await hint();
  await Promise.all([
    load(kpis.body, overview, (data) => renderKpis(kpis.body, data, range), what),
    load(calls.body, overview, (data) => renderCalls(calls.body, data, range, command), what),
    load(latency.body, overview, (data) => renderLatency(latency.body, data, range), what),
    load(cost.body, costs, (data) => renderCostPerDay(cost.body, data, costRange(range, costSince)),
      { what: "Costs", endpoint: "GET /api/stats/costs" }),
    load(list.body, () => Promise.all([features(), overview().catch(() => null)]),
      ([f, o]) => renderFeatures(list.body, f, o, command), { what: "The features", endpoint: "GET /v1/features" }),
  ]);
}

function costRange(range, since) {
  if (since === range.since) return range;
  return { ...range, label: "last 7 days", since, domain: [new Date(since * 1000), range.domain[1]] };
}

function renderFeatures(body, featureList, overview, command) {
  const stats = new Map((overview?.features || []).map((f) => [f.name ?? f.feature, f]));
  const names = new Set([...(featureList?.features || []).map((f) => f.name), ...stats.keys()]);
  if (!names.size) {
    empty(body, "No features yet", "Declare one in keel.yaml and restart `keel serve`.", command);
    return;
  }
  const info = new Map((featureList?.features || []).map((f) => [f.name, f]));
  const rows = [...names].map((name) => ({ name, ...info.get(name), stats: stats.get(name) || null }))
    .sort((a, b) => (b.stats?.calls ?? -1) - (a.stats?.calls ?? -1) || a.name.localeCompare(b.name));
  const s = (row, key) => row.stats?.[key];
  body.replaceChildren(table([
    { label: "Feature", value: (r) => link(`/features/${encodeURIComponent(r.name)}`, r.name, { "data-feature": r.name }) },
    { label: "Serves", value: (r) => (r.aliases?.champion ? `champion → ${r.aliases.champion}` : Object.keys(r.versions || {}).join(", ") || "—") },
    { label: "Calls", num: true, value: (r) => (overview ? int(s(r, "calls") ?? 0) : "—") },
    { label: "Error rate", num: true, value: (r) => (s(r, "calls") ? pct((s(r, "errors") ?? 0) / s(r, "calls")) : "—") },
    { label: "Cost", num: true, value: (r) => (overview ? usd(s(r, "cost_usd") ?? 0) : "—") },
    { label: "p95", num: true, value: (r) => ms(s(r, "p95")) },
  ], rows, { caption: "Features, their calls, error rates, costs and p95 latency", cls: "table-features" }));
}
