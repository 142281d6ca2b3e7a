// A feature's page (#/features/{name}) and the list of features (#/features).

import { ApiError, get, isAbort, shared } from "./api.js";
import { barChart } from "./charts.js";
import { el, empty, failed, fill, link, load, panel, table } from "./dom.js";
import { ago, int, isNum, ms, pct, shortId, stamp, usd } from "./format.js";
import { renderFeedback } from "./dashboard-feedback.js";
import { noRollout, renderDrift, renderRollout, renderSlos } from "./dashboard-health.js";
import { renderCalls, renderKpis, renderLatency } from "./dashboard-stats.js";

const enc = encodeURIComponent;

// --- the list ------------------------------------------------------------------------------

export async function renderList(ctx) {
  const { main, signal } = ctx;
  const list = panel("Every feature", { wide: true });
  main.replaceChildren(el("div", { class: "page-head" },
    el("h1", { class: "page-title", tabindex: "-1", text: "Features" }),
    el("p", { class: "page-sub muted", text: "The AI features this Keel serves, as keel.yaml declares them." })),
  el("div", { class: "grid" }, list.root));
  await load(list.body, () => get("/v1/features", {}, { signal }), (data) => {
    const features = data?.features || [];
    if (!features.length) {
      empty(list.body, "No features yet", "Declare one in keel.yaml and restart `keel serve`.");
      return;
    }
    list.body.replaceChildren(table([
      { label: "Feature", value: (f) => link(`/features/${enc(f.name)}`, f.name, { "data-feature": f.name }) },
      { label: "Description", value: (f) => f.description || "—" },
      { label: "Output", value: (f) => f.output_kind || "—" },
      { label: "Versions", value: (f) => Object.keys(f.versions || {}).join(", ") || "—" },
      { label: "Aliases", value: (f) => aliasText(f.aliases) },
    ], features, { caption: "Features" }));
  }, { what: "The features", endpoint: "GET /v1/features" });
}

function aliasText(aliases) {
  const entries = Object.entries(aliases || {});
  return entries.length ? entries.map(([a, v]) => `${a} → ${v}`).join(", ") : "—";
}

// --- one feature ---------------------------------------------------------------------------

export async function render(ctx) {
  const { main, parts, range, signal } = ctx;
  const name = parts[1];
  const f = enc(name);
  const period = { since: range.since, until: range.until };
  const req = {
    stats: shared(() => get(`/api/stats/features/${f}`, { ...period, bucket: range.bucket }, { signal })),
    versions: shared(() => get(`/api/features/${f}/versions`, {}, { signal })),
    rollout: () => get(`/api/features/${f}/rollout`, {}, { signal }),
    slo: () => get(`/api/slo/${f}`, {}, { signal }),
    drift: () => get(`/api/drift/${f}`, {}, { signal }),
    reviews: () => get("/api/reviews/stats", { feature: name }, { signal }),
    feedback: () => get("/api/feedback/stats", { feature: name, ...period }, { signal }),
    info: () => get("/v1/features", {}, { signal }),
  };
  for (const key of ["stats", "versions"]) req[key]();

  const sub = el("p", { class: "page-sub muted", text: " " });
  const kpis = panel("Totals", { cls: "panel-kpis" });
  const calls = panel("Calls by decision", { wide: true });
  const latency = panel("Latency");
  const reviewLoad = panel("Review load", {
    actions: el("a", { class: "panel-link", href: "/review", text: "Open the review queue ↗" }) });
  const versions = panel("Versions and aliases", { wide: true });
  const routing = panel("Routing policy", { wide: true });
  routing.root.hidden = true; // shown when the feature's routing policy routed calls
  const rollout = panel("Rollout", { wide: true });
  const slo = panel("SLOs");
  const drift = panel("Drift");
  const feedback = panel("Feedback and outcomes", { wide: true });
  main.replaceChildren(
    el("div", { class: "page-head" },
      el("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, link("/features", "Features"), el("span", { "aria-hidden": "true", text: " / " })),
      el("h1", { class: "page-title", tabindex: "-1" }, el("span", { class: "page-feature", text: name })),
      sub,
      el("p", { class: "page-links" },
        link(`/events?feature=${f}`, "Its events"), " · ", link(`/budgets?feature=${f}`, "Its costs"))),
    kpis.root,
    el("div", { class: "grid" }, calls.root, latency.root, reviewLoad.root, versions.root, routing.root, rollout.root, slo.root, drift.root, feedback.root));

  // a feature that does not exist: say so once, in place of the page
  try {
    await req.versions();
  } catch (err) {
    if (isAbort(err)) return;
    if (err instanceof ApiError && err.code === "feature_not_found") {
      const box = el("div", { class: "panel" });
      main.replaceChildren(main.firstChild, box);
      failed(box, err, { what: `No feature named ${name}` });
      return;
    }
  }
  req.info().then((d) => {
    const it = (d?.features || []).find((x) => x.name === name);
    if (it) sub.textContent = [it.description, it.output_kind ? `output: ${it.output_kind}` : ""].filter(Boolean).join(" · ");
  }).catch(() => {});

  const statsWhat = { what: "The feature's stats", endpoint: `GET /api/stats/features/${name}` };
  const command = `keel call ${name} '{"text": "hello"}'`;
  await Promise.all([
    load(kpis.body, req.stats, (d) => renderKpis(kpis.body, d, range), statsWhat),
    load(calls.body, req.stats, (d) => renderCalls(calls.body, d, range, command), statsWhat),
    load(latency.body, req.stats, (d) => renderLatency(latency.body, d, range), statsWhat),
    load(reviewLoad.body, req.reviews, (d) => renderReviewLoad(reviewLoad.body, d, name),
      { what: "The review load", endpoint: "GET /api/reviews/stats" }),
    load(versions.body, () => Promise.all([req.versions(), settle(req.stats())]),
      ([v, s]) => renderVersions(versions.body, v, s), { what: "The versions", endpoint: `GET /api/features/${name}/versions` }),
    req.stats().then((d) => renderRouting(routing, d), () => {}),
    loadRollout(rollout.body, req.rollout, name),
    load(slo.body, req.slo, (d) => renderSlos(slo.body, d, name), { what: "The SLOs", endpoint: `GET /api/slo/${name}` }),
    load(drift.body, req.drift, (d) => renderDrift(drift.body, d, name), { what: "Drift", endpoint: `GET /api/drift/${name}` }),
    load(feedback.body, req.feedback, (d) => renderFeedback(feedback.body, d, name),
      { what: "Feedback", endpoint: "GET /api/feedback/stats" }),
  ]);
}

/** {ok, value} or {ok: false, error}: for data that is a nicety next to other data. */
function settle(promise) {
  return promise.then((value) => ({ ok: true, value }), (error) => {
    if (isAbort(error)) throw error;
    return { ok: false, error };
  });
}

async function loadRollout(body, fetcher, name) {
  const result = await load(body, () => fetcher().catch((err) => {
    if (err instanceof ApiError && err.code === "rollout_not_found") return { none: err };
    throw err;
  }), (data) => (data.none ? noRollout(body, name, data.none) : renderRollout(body, data)),
  { what: "The rollout", endpoint: `GET /api/features/${name}/rollout` });
  return result;
}

function renderVersions(body, data, statsResult) {
  const records = data?.versions || [];
  const aliases = data?.aliases || {};
  const stats = new Map();
  if (statsResult.ok) for (const v of statsResult.value?.versions || []) stats.set(v.version ?? "(none)", v);
  const names = [...new Set([...records.map((r) => r.name), ...stats.keys()])];
  if (!names.length) {
    empty(body, "No versions registered", "Versions in keel.yaml are registered when the server starts.");
    return;
  }
  const byName = new Map(records.map((r) => [r.name, r]));
  const rows = names.map((n) => ({ name: n, rec: byName.get(n) || {}, st: stats.get(n) || null }))
    .sort((a, b) => (b.rec.number ?? 0) - (a.rec.number ?? 0));
  const aliasList = el("ul", { class: "chips", "aria-label": "Aliases" }, Object.entries(aliases).map(([a, v]) =>
    el("li", { class: `chip chip-alias${a === "champion" ? " chip-champion" : ""}`, "data-alias": a },
      el("span", { class: "chip-key", text: a }), "→ ", el("code", { text: v }))));
  const st = (r, k, fmt) => (r.st && isNum(r.st[k]) ? fmt(r.st[k]) : "—");
  const parts = [Object.keys(aliases).length ? aliasList : el("p", { class: "muted", text: "No aliases point anywhere yet." }),
    table([
      { label: "Version", value: (r) => el("span", { class: "version-cell" }, el("code", { text: r.name }),
        ...(r.rec.aliases || []).map((a) => el("span", { class: `tag${a === "champion" ? " tag-champion" : ""}`, text: a }))) },
      { label: "Model", value: (r) => (r.rec.provider ? `${r.rec.provider} · ${r.rec.model}` : "—") },
      { label: "Registered", value: (r) => (r.rec.registered_at
        ? el("time", { datetime: new Date(r.rec.registered_at * 1000).toISOString(), title: `${stamp(r.rec.registered_at)} by ${r.rec.registered_by}` }, ago(r.rec.registered_at))
        : "—") },
      { label: "Spec", value: (r) => (r.rec.spec_hash ? el("code", { title: r.rec.spec_hash, text: shortId(r.rec.spec_hash.replace(/^sha256:/, ""), 8) }) : "—") },
      { label: "Calls", num: true, value: (r) => st(r, "calls", int) },
      { label: "p95", num: true, value: (r) => st(r, "p95", ms) },
      { label: "Errors", num: true, value: (r) => st(r, "error_rate", pct) },
      { label: "Invalid", num: true, value: (r) => st(r, "validation_failure_rate", pct) },
      { label: "Review", num: true, value: (r) => st(r, "review_rate", pct) },
      { label: "Cost / call", num: true, value: (r) => st(r, "cost_per_call", usd) },
    ], rows, { caption: "Versions: registry and live numbers", cls: "table-versions", rowAttrs: (r) => ({ "data-version": r.name }) })];
  if (!statsResult.ok) {
    const err = statsResult.error;
    parts.push(el("p", { class: "note" }, err instanceof ApiError && err.missingRoute
      ? "Per-version numbers are not available: this Keel does not serve GET /api/stats/features yet."
      : `Per-version numbers could not be loaded: ${err.message}`));
  }
  body.replaceChildren(...parts);
}

/** What the routing policy chose and saved (stats.routing); hidden without a policy. */
function renderRouting(p, data) {
  const r = data?.routing;
  if (!r || !r.calls) return;
  p.root.hidden = false;
  fill(p.body,
    el("p", { class: "muted small", "data-routing": "saved",
      text: `${int(r.calls)} calls routed by the policy; saved ${usd(r.saved_usd)} against each call's baseline target (negative: escalations cost more).` }),
    table([
      { label: "Choice", value: (x) => el("code", { text: x.policy }) },
      { label: "Served by", value: (x) => (x.version ? el("code", { text: x.version }) : "—") },
      { label: "Calls", num: true, value: (x) => int(x.calls) },
      { label: "Cost", num: true, value: (x) => usd(x.cost_usd) },
      { label: "Saved", num: true, value: (x) => usd(x.saved_usd) },
    ], r.rows || [], { caption: "Routing policy: choices and savings", rowAttrs: (x) => ({ "data-policy": x.policy }) }));
}

function renderReviewLoad(body, data, name) {
  const rows = Array.isArray(data?.features) ? data.features : [];
  const s = rows.find((r) => r.feature === name) || rows[0];
  if (!s || !(s.pending || s.in_progress || s.done)) {
    empty(body, "Nothing reviewed yet", "Calls whose decision is review wait in the queue for a person.");
    return;
  }
  const verdicts = (s.approved ?? 0) + (s.edited ?? 0) + (s.rejected ?? 0);
  const host = el("div", { class: "chart-host" });
  const agree = s.agreement || {};
  fill(body,
    el("div", { class: "mini-kpis" },
      el("div", {}, el("span", { class: "mini-value", "data-review": "waiting", text: int((s.pending ?? 0) + (s.in_progress ?? 0)) }), el("span", { class: "mini-label", text: "waiting" })),
      el("div", {}, el("span", { class: "mini-value", "data-review": "in_progress", text: int(s.in_progress ?? 0) }), el("span", { class: "mini-label", text: "being reviewed" })),
      el("div", {}, el("span", { class: "mini-value", "data-review": "done", text: int(s.done ?? 0) }), el("span", { class: "mini-label", text: "done" }))),
    verdicts ? host : el("p", { class: "muted small", text: "No verdicts yet: they show up here as people review." }),
    verdicts ? el("p", { class: "muted small" },
      `Rejected: ${pct(s.rejected_share)} of verdicts. `,
      agree.items ? `Agreement on ${int(agree.items)} multi-reviewed items: ${pct(agree.unanimous)} unanimous.` : "") : null);
  if (!verdicts) return;
  barChart(host, {
    title: `Verdicts on ${name}`, valueLabel: "verdicts", format: int, integer: true,
    rows: [{ label: "approved", value: s.approved ?? 0, cls: "s-accepted" },
      { label: "edited", value: s.edited ?? 0, cls: "s-repaired" },
      { label: "rejected", value: s.rejected ?? 0, cls: "s-error" }],
  });
}
