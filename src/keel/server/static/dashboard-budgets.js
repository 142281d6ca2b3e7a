// Budgets and costs (#/budgets): each budget's spend against its limit, throttles,
// alerts, and the cost ledger grouped by key, user, feature or version.

import { get, shared } from "./api.js";
import { barChart, meterBar } from "./charts.js";
import { el, empty, load, panel, stateBadge, table } from "./dom.js";
import { ago, compact, int, isNum, pct, stamp, usd } from "./format.js";

const GROUPS = { feature: "Feature", version: "Version", key: "Key", user: "User" };
const TOP = 15;

export async function render(ctx) {
  const { main, range, query, signal } = ctx;
  const budgets = shared(() => get("/api/budgets", {}, { signal }));
  const list = panel("Budgets", { wide: true });
  const throttles = panel("Throttles");
  const alerts = panel("Alerts");
  const group = GROUPS[query.get("group")] ? query.get("group") : "feature";
  const feature = query.get("feature") || "";
  const tabs = el("div", { class: "tabs", role: "radiogroup", "aria-label": "Group the costs by" },
    Object.entries(GROUPS).map(([g, label]) => el("button", {
      type: "button", role: "radio", class: "range-btn", "data-group": g,
      "aria-checked": g === group ? "true" : "false", tabindex: g === group ? "0" : "-1", text: label,
    })));
  const costs = panel(feature ? `Costs of ${feature}` : "Costs", { wide: true, actions: tabs });
  main.replaceChildren(
    el("div", { class: "page-head" },
      el("h1", { class: "page-title", tabindex: "-1", text: "Budgets and costs" }),
      el("p", { class: "page-sub muted", text: `Spend against each budget's limit; the ledger ${range.label}.` })),
    el("div", { class: "grid" }, list.root, costs.root, alerts.root, throttles.root));

  const pick = (g) => {
    ctx.setQuery({ group: g, feature });
    for (const b of tabs.querySelectorAll("[data-group]")) {
      const on = b.dataset.group === g;
      b.setAttribute("aria-checked", on ? "true" : "false");
      b.tabIndex = on ? 0 : -1;
    }
    loadCosts(costs.body, g, feature, range, signal);
  };
  tabs.addEventListener("click", (event) => {
    const b = event.target.closest("[data-group]");
    if (b) pick(b.dataset.group);
  });
  tabs.addEventListener("keydown", (event) => {
    const keys = Object.keys(GROUPS);
    const step = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 }[event.key];
    if (!step) return;
    event.preventDefault();
    const current = tabs.querySelector("[aria-checked=true]").dataset.group;
    const next = keys[(keys.indexOf(current) + step + keys.length) % keys.length];
    pick(next);
    tabs.querySelector(`[data-group="${next}"]`).focus();
  });

  const what = { what: "Budgets", endpoint: "GET /api/budgets" };
  await Promise.all([
    load(list.body, budgets, (d) => renderBudgets(list.body, d), what),
    load(throttles.body, budgets, (d) => renderThrottles(throttles.body, d), what),
    load(alerts.body, budgets, (d) => renderAlerts(alerts.body, d), what),
    loadCosts(costs.body, group, feature, range, signal),
  ]);
}

function renderBudgets(body, data) {
  const budgets = Array.isArray(data?.budgets) ? data.budgets : [];
  if (!budgets.length) {
    empty(body, "No budgets", "Set spending limits per key, user or feature under budgets: in keel.yaml.");
    return;
  }
  const list = el("div", { class: "budgets" });
  body.replaceChildren(list);
  for (const b of budgets) {
    const spent = b.spent_usd ?? 0;
    const share = isNum(b.share) ? b.share : b.limit_usd ? spent / b.limit_usd : null;
    const state = b.state || (share >= 1 ? "exceeded" : share >= 0.8 ? "warning" : "ok");
    const host = el("div", { class: "chart-host" });
    const scope = [b.scope, b.match && b.match !== "*" ? b.match : null].filter(Boolean).join(" ");
    list.append(el("article", { class: `budget budget-${state}`, "data-budget": b.name, "data-match": b.match ?? null },
      el("header", { class: "budget-head" },
        el("h3", { class: "budget-name", text: b.name }), stateBadge(state),
        el("span", { class: "muted small", text: [scope, b.period ? `per ${b.period}` : ""].filter(Boolean).join(" · ") })),
      el("p", { class: "budget-numbers" },
        el("strong", { class: "budget-spent", text: usd(spent) }), ` of ${usd(b.limit_usd)} `,
        el("span", { class: "muted", text: `(${pct(share, 0)})` }),
        b.reserved_usd ? el("span", { class: "muted", text: ` · ${usd(b.reserved_usd)} reserved in flight` }) : null,
        b.period_end ? el("span", { class: "muted", text: ` · resets ${ago(b.period_end)}` }) : null),
      host));
    meterBar(host, {
      title: `Budget ${b.name}: ${usd(spent)} of ${usd(b.limit_usd)}`, spent, reserved: b.reserved_usd || 0,
      limit: b.limit_usd, format: usd, state: state === "exceeded" ? "bad" : state === "warning" ? "warn" : "ok",
      summary: `${pct(share, 0)} of the ${b.period || ""} limit spent; marks at 50, 80 and 100 percent.`,
    });
  }
}

function renderThrottles(body, data) {
  const rows = Array.isArray(data?.throttles) ? data.throttles : [];
  if (!rows.length) {
    empty(body, "No throttles", "Rate limits (requests or tokens per minute) go under budgets: in keel.yaml.");
    return;
  }
  body.replaceChildren(table([
    { label: "Throttle", value: (t) => t.name },
    { label: "Applies to", value: (t) => [t.scope, t.match].filter(Boolean).join(" ") || "—" },
    { label: "Requests / min", num: true, value: (t) => (isNum(t.requests_per_minute) ? int(t.requests_per_minute) : "—") },
    { label: "Tokens / min", num: true, value: (t) => (isNum(t.tokens_per_minute) ? compact(t.tokens_per_minute) : "—") },
  ], rows, { caption: "Throttles" }));
}

function renderAlerts(body, data) {
  const rows = Array.isArray(data?.alerts) ? data.alerts : [];
  if (!rows.length) {
    empty(body, "No alerts", "An alert fires when a budget crosses 50, 80 and 100 percent of its limit.");
    return;
  }
  body.replaceChildren(el("ol", { class: "alerts" }, rows.map((a) => el("li", { class: `alert-item${(a.threshold ?? 0) >= 1 ? " is-bad" : ""}` },
    el("span", { class: "alert-threshold", text: pct(a.threshold, 0) }),
    el("span", { class: "alert-text" }, el("strong", { text: a.budget }),
      a.value && a.value !== "*" ? el("span", { class: "muted", text: ` (${a.value})` }) : null,
      ` reached ${usd(a.spent_usd)} of ${usd(a.limit_usd)}`),
    el("time", { class: "muted small", datetime: new Date((a.ts ?? 0) * 1000).toISOString(), title: stamp(a.ts), text: ago(a.ts) }),
    // delivered: null when no webhook is set (the alert lives here only)
    a.delivered === null || a.delivered === undefined ? el("span", {})
      : el("span", { class: `small ${a.delivered ? "muted" : "warn-text"}`, text: a.delivered ? "sent" : "not sent" })))));
}

/** A ledger row's name: "(none)" for calls without one; versions with their feature. */
function labelOf(r) {
  const value = r.value === null || r.value === undefined || r.value === "" ? "(none)" : String(r.value);
  return r.feature && r.feature !== r.value ? `${r.feature} · ${value}` : value;
}

function loadCosts(body, group, feature, range, signal) {
  return load(body, () => get("/api/stats/costs", { group, since: range.since, until: range.until, feature, limit: 100 }, { signal }),
    (data) => {
      const rows = (Array.isArray(data?.rows) ? data.rows : []).slice().sort((a, b) => (b.cost_usd ?? 0) - (a.cost_usd ?? 0));
      if (!rows.length) {
        empty(body, `No costs ${range.label}`, "The ledger fills as calls are made to models with a price.");
        return;
      }
      const total = rows.reduce((a, r) => a + (r.cost_usd ?? 0), 0);
      const host = el("div", { class: "chart-host" });
      body.replaceChildren(host, table([
        { label: GROUPS[group], value: labelOf },
        { label: "Calls", num: true, value: (r) => int(r.calls) },
        { label: "Input tokens", num: true, value: (r) => compact(r.input_tokens) },
        { label: "Output tokens", num: true, value: (r) => compact(r.output_tokens) },
        { label: "Cost", num: true, value: (r) => usd(r.cost_usd) },
        { label: "Share", num: true, value: (r) => (total ? pct((r.cost_usd ?? 0) / total) : "—") },
      ], rows, { caption: `Costs by ${group}`, cls: "table-costs" }));
      barChart(host, {
        title: `Cost by ${group}, ${range.label}${rows.length > TOP ? ` (top ${TOP})` : ""}`, format: usd, valueLabel: "cost",
        rows: rows.slice(0, TOP).map((r) => ({ label: labelOf(r), value: r.cost_usd ?? 0, extra: [["calls", int(r.calls)]] })),
        summary: `${usd(total)} in total over ${rows.length} ${group}s.`,
      });
    }, { what: "Costs", endpoint: "GET /api/stats/costs" });
}
