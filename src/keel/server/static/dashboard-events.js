// The events explorer (#/events): filters, keyset pages ("older" follows the API's
// cursor), and a drawer with one event in full (#/events/{trace_id}).

import { ApiError, get, isAbort } from "./api.js";
import { waterfall } from "./charts.js";
import { DECISIONS, decisionBadge, el, empty, failed, fill, jsonBlock, loading, panel, table, unavailable } from "./dom.js";
import { conf, int, isNum, ms, shortId, stamp, toDate, usd } from "./format.js";

const PAGE = 50;
const FIELDS = ["feature", "version", "decision", "user", "key", "time", "since", "until", "trace"];
const TIMES = { "": "any time", "1h": "last hour", "24h": "last 24 hours", "7d": "last 7 days", "30d": "last 30 days", custom: "between…" };
const TIME_SECONDS = { "1h": 3600, "24h": 86400, "7d": 604800, "30d": 2592000 };
// the order of a call's stages (pipeline.py); others follow in the order they came
const STAGES = ["checks", "guards", "limits", "route", "invoke", "validate", "decide", "hold"];

export async function render(ctx) {
  const { main, parts, query, signal } = ctx;
  const filters = Object.fromEntries(FIELDS.map((f) => [f, query.get(f) || ""]));
  // the page size: ?limit= in the address (1..500), else 50
  const limit = Math.min(500, Math.max(1, Number.parseInt(query.get("limit"), 10) || PAGE));
  filters.limit = limit === PAGE ? "" : String(limit);
  const form = filterForm(filters);
  const results = panel("Events", { wide: true, actions: el("span", { class: "muted small", id: "events-count" }) });
  main.replaceChildren(
    el("div", { class: "page-head" },
      el("h1", { class: "page-title", tabindex: "-1", text: "Events" }),
      el("p", { class: "page-sub muted", text: "Every recorded call, newest first. Filter, then open one to see its stages." })),
    form, el("div", { class: "grid" }, results.root));

  get("/v1/features", {}, { signal }).then((d) => {
    const select = form.querySelector("#f-feature");
    for (const f of d?.features || []) select.append(el("option", { value: f.name, text: f.name }));
    select.value = filters.feature;
  }).catch(() => {});

  // one query's pages; a new query starts a new state, and a stale answer is dropped
  let state = { cursor: null, rows: [], busy: false, filters: { ...filters } };
  const apply = () => {
    const data = new FormData(form);
    const next = Object.fromEntries(FIELDS.map((f) => [f, String(data.get(f) ?? "").trim()]));
    if (next.time !== "custom") { next.since = ""; next.until = ""; }
    next.limit = filters.limit;
    ctx.setQuery(next);
    Object.assign(filters, next);
    state.stale = true;
    state = { cursor: null, rows: [], busy: false, filters: { ...filters } };
    fetchPage(results.body, state, signal);
  };
  form.addEventListener("submit", (event) => { event.preventDefault(); apply(); });
  form.addEventListener("change", (event) => {
    if (event.target.id === "f-time") form.querySelector(".custom-time").hidden = event.target.value !== "custom";
    if (event.target.tagName === "SELECT") apply();
  });
  form.querySelector("#f-reset").addEventListener("click", () => {
    form.reset();
    for (const input of form.querySelectorAll("input")) input.value = "";
    for (const select of form.querySelectorAll("select")) select.value = "";
    form.querySelector(".custom-time").hidden = true;
    apply();
  });

  await fetchPage(results.body, state, signal);
  if (parts[1]) openEvent(parts[1], ctx);
}

function filterForm(f) {
  const text = (name, label, placeholder = "") => el("div", { class: "field" },
    el("label", { for: `f-${name}`, class: "field-label", text: label }),
    el("input", { id: `f-${name}`, name, class: "input", type: "text", value: f[name], placeholder, autocomplete: "off", spellcheck: "false" }));
  const select = (name, label, options) => {
    const node = el("select", { id: `f-${name}`, name, class: "input" },
      Object.entries(options).map(([value, text]) => el("option", { value, text })));
    node.value = f[name];
    if (node.value !== f[name]) node.append(el("option", { value: f[name], text: f[name], selected: true }));
    return el("div", { class: "field" }, el("label", { for: `f-${name}`, class: "field-label", text: label }), node);
  };
  const local = (value) => {
    const d = toDate(value);
    return d ? new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16) : "";
  };
  return el("form", { class: "filters panel", role: "search", "aria-label": "Filter the events", id: "filters" },
    select("feature", "Feature", { "": "all features" }),
    text("version", "Version", "any"),
    select("decision", "Decision", { "": "any decision", ...Object.fromEntries(DECISIONS.map((d) => [d, d])) }),
    text("user", "User", "any"),
    text("key", "Key id", "any"),
    select("time", "Time", TIMES),
    el("div", { class: "field custom-time", hidden: f.time !== "custom" },
      el("label", { for: "f-since", class: "field-label", text: "From" }),
      el("input", { id: "f-since", name: "since", class: "input", type: "datetime-local", value: local(f.since) }),
      el("label", { for: "f-until", class: "field-label", text: "To" }),
      el("input", { id: "f-until", name: "until", class: "input", type: "datetime-local", value: local(f.until) })),
    text("trace", "Trace id starts with", "e.g. 3f2a"),
    el("div", { class: "field field-actions" },
      el("button", { type: "submit", class: "btn btn-primary", id: "f-apply", text: "Apply" }),
      el("button", { type: "button", class: "btn btn-quiet", id: "f-reset", text: "Reset" })));
}

/** The API's query for the filters: since/until as unix seconds. */
function params(f, cursor) {
  const out = { feature: f.feature, version: f.version, decision: f.decision, user: f.user, key: f.key,
    trace: f.trace, limit: f.limit || PAGE, cursor };
  // "any time" is said out loud: without since the API reads the last 7 days only
  out.since = TIME_SECONDS[f.time] ? Math.floor(Date.now() / 1000) - TIME_SECONDS[f.time] : f.trace ? null : 0;
  if (f.time === "custom") {
    const s = toDate(f.since);
    const u = toDate(f.until);
    if (s) out.since = Math.floor(s.getTime() / 1000);
    if (u) out.until = Math.floor(u.getTime() / 1000);
  }
  return out;
}

async function fetchPage(body, state, signal) {
  if (state.busy || state.stale) return;
  state.busy = true;
  const { filters } = state;
  const more = body.querySelector("#events-older");
  if (more) { more.disabled = true; more.textContent = "Loading…"; } else loading(body, "Loading the events…");
  let data;
  try {
    data = await get("/api/events", params(filters, state.cursor), { signal });
  } catch (err) {
    state.busy = false;
    if (isAbort(err) || state.stale) return;
    if (err instanceof ApiError && err.missingRoute) unavailable(body, "The events explorer", "GET /api/events");
    else if (more) {
      more.disabled = false;
      more.textContent = "Older events";
      body.append(el("div", { class: "panel-body" }));
      failed(body.lastChild, err, { what: "Older events could not be loaded" });
    } else failed(body, err, { what: "The events could not be loaded", retry: () => fetchPage(body, state, signal) });
    return;
  }
  state.busy = false;
  if (state.stale) return; // the filters changed while this page was on its way
  body.removeAttribute("aria-busy");
  const rows = Array.isArray(data?.events) ? data.events : [];
  state.rows.push(...rows);
  state.cursor = data?.next ?? null;
  const count = document.getElementById("events-count");
  if (count) count.textContent = `${int(state.rows.length)} shown${state.cursor ? ", more older" : ""}`;
  if (!state.rows.length) {
    const filtered = FIELDS.some((k) => filters[k]);
    empty(body, filtered ? "No events match these filters" : "No calls recorded yet",
      filtered ? "Widen the time range or clear a filter." : "Each call to a feature is recorded here, for example:",
      filtered ? "" : "keel call FEATURE '{\"text\": \"hello\"}'");
    return;
  }
  body.replaceChildren(eventTable(state.rows));
  if (state.cursor) {
    body.append(el("div", { class: "more" }, el("button", {
      type: "button", class: "btn", id: "events-older", text: "Older events",
      onclick: () => fetchPage(body, state, signal),
    })));
  } else {
    body.append(el("p", { class: "muted small more", text: "That is the oldest matching event." }));
  }
}

function eventTable(rows) {
  const open = (e) => el("button", {
    type: "button", class: "link-btn trace", "aria-haspopup": "dialog", "data-trace": e.trace_id,
    "aria-label": `Open event ${e.trace_id}`, onclick: () => openEvent(e.trace_id),
  }, shortId(e.trace_id, 12));
  const wrap = table([
    { label: "Trace", value: open },
    { label: "Time", value: (e) => el("time", { datetime: toDate(e.ts)?.toISOString() ?? "", text: stamp(e.ts) }) },
    { label: "Feature", value: (e) => e.feature },
    { label: "Version", value: (e) => el("code", { text: e.version ?? "—" }) },
    { label: "Decision", value: (e) => el("span", {}, decisionBadge(e.decision), e.error_code ? el("code", { class: "err-code", text: e.error_code }) : null) },
    { label: "Conf.", num: true, value: (e) => conf(e.confidence) },
    { label: "Latency", num: true, value: (e) => ms(e.latency_ms) },
    { label: "Cost", num: true, value: (e) => usd(e.cost_usd) },
    { label: "User", value: (e) => e.user ?? e.user_id ?? "—" },
    { label: "Key", value: (e) => e.key ?? e.key_id ?? "—" },
  ], rows, { caption: "Events, newest first", cls: "table-events", rowAttrs: (e) => ({ "data-trace": e.trace_id, "data-decision": e.decision }) });
  // a click anywhere on a row opens it too (the trace button is the keyboard's way in)
  wrap.addEventListener("click", (event) => {
    const row = event.target.closest("tr[data-trace]");
    if (row && !event.target.closest("button, a")) openEvent(row.dataset.trace);
  });
  return wrap;
}

// --- one event --------------------------------------------------------------------------

let opener = null;

export async function openEvent(traceId) {
  const host = document.getElementById("drawer-host");
  opener = document.activeElement;
  const titleId = "drawer-title";
  const body = el("div", { class: "drawer-body" });
  const close = el("button", { type: "button", class: "btn btn-quiet", id: "drawer-close", text: "Close", "aria-keyshortcuts": "Escape" });
  const dialog = el("dialog", { class: "drawer", id: "drawer", "aria-labelledby": titleId },
    el("header", { class: "drawer-head" },
      el("h2", { id: titleId, class: "drawer-title" }, "Event ", el("code", { text: shortId(traceId, 16) })), close),
    body);
  host.replaceChildren(dialog);
  close.addEventListener("click", () => dialog.close());
  dialog.addEventListener("click", (event) => { if (event.target === dialog) dialog.close(); }); // the backdrop
  dialog.addEventListener("close", () => {
    host.replaceChildren();
    const [path, query] = location.hash.split("?");
    if (/^#\/events\/.+/.test(path)) history.replaceState(null, "", `#/events${query ? `?${query}` : ""}`);
    if (opener && document.contains(opener)) opener.focus();
  });
  const [, query] = location.hash.split("?");
  history.replaceState(null, "", `#/events/${encodeURIComponent(traceId)}${query ? `?${query}` : ""}`);
  dialog.showModal();
  close.focus();
  loading(body, "Loading the event…");
  let event;
  try {
    event = await get(`/api/events/${encodeURIComponent(traceId)}`);
  } catch (err) {
    if (err instanceof ApiError && err.missingRoute) unavailable(body, "One event in full", "GET /api/events/{trace_id}");
    else failed(body, err, { what: "The event could not be loaded" });
    return;
  }
  body.removeAttribute("aria-busy");
  renderEvent(body, event);
}

function section(title, ...children) {
  return el("section", { class: "drawer-section" }, el("h3", { class: "sub-title", text: title }), ...children);
}

function renderEvent(body, e) {
  const timings = e.timings || e.timings_ms || {};
  const attempts = Array.isArray(e.attempts) ? e.attempts : [];
  const validations = Array.isArray(e.validations) ? e.validations : [];
  const checks = Array.isArray(e.checks) ? e.checks : [];
  const facts = [
    ["trace id", e.trace_id], ["time", stamp(e.ts)], ["feature", e.feature], ["version", e.version ?? "—"],
    ["routed", e.routed], ["confidence", conf(e.confidence)], ["latency", ms(e.latency_ms)],
    ["cost", usd(e.cost_usd)], ["tokens", `${int(e.input_tokens)} in · ${int(e.output_tokens)} out`],
    ["user", e.user ?? e.user_id], ["key id", e.key ?? e.key_id], ["reason", e.reason], ["error", e.error_code],
  ].filter(([, v]) => v !== null && v !== undefined && v !== "");
  const chart = el("div", { class: "chart-host", id: "waterfall" });
  fill(body,
    el("div", { class: "drawer-decision" }, decisionBadge(e.decision), e.error_code ? el("code", { class: "err-code", text: e.error_code }) : null),
    el("dl", { class: "facts" }, facts.map(([k, v]) => el("div", {}, el("dt", { text: k }), el("dd", { text: String(v) })))),
    section("Timings", chart),
    section("Attempts", attempts.length ? table([
      { label: "Version", value: (a) => el("code", { text: a.version ?? "—" }) },
      { label: "Provider", value: (a) => a.provider ?? "—" },
      { label: "Result", value: (a) => el("span", { class: a.ok ? "result-pass" : "result-fail", text: a.ok ? (a.rejected_by ? `rejected by ${a.rejected_by}` : "ok") : (a.error_code || "failed") }) },
      { label: "Retry", num: true, value: (a) => String(a.retry ?? 0) },
      { label: "Took", num: true, value: (a) => ms(a.latency_ms) },
      { label: "Error", value: (a) => a.error || "—" },
    ], attempts, { caption: "Attempts", cls: "table-compact" }) : el("p", { class: "muted", text: "No provider was called (answered before the model, or from the cache)." })),
    section("Validations", validations.length ? table([
      { label: "Validator", value: (v) => el("code", { text: v.validator ?? "?" }) },
      { label: "Result", value: (v) => el("span", { class: v.passed ? "result-pass" : "result-fail", text: v.passed ? "passed" : "failed" }) },
      { label: "On fail", value: (v) => v.on_fail ?? "—" },
      { label: "Message", value: (v) => v.message || "—" },
    ], validations, { caption: "Output validations", cls: "table-compact" }) : el("p", { class: "muted", text: "No output validators ran." })),
    checks.length ? section("Checks", jsonBlock(checks, "Input checks")) : null,
    section("Input", jsonBlock(e.input, "Input")),
    section("Output", jsonBlock(e.output, "Output")));
  const stages = stagesOf(timings, attempts);
  if (stages.length) {
    waterfall(chart, {
      title: `Where the ${ms(e.latency_ms ?? timings.total)} went`, stages, total: timings.total ?? e.latency_ms, format: ms,
      summary: stages.filter((s) => !s.name.startsWith("↳")).map((s) => `${s.name} ${ms(s.ms)}`).join(", "),
    });
  } else {
    empty(chart, "No timings were recorded for this call.");
  }
}

/** Stage durations laid end to end, with the provider attempts inside "invoke". */
export function stagesOf(timings, attempts = []) {
  const names = [...STAGES.filter((s) => s in timings),
    ...Object.keys(timings).filter((s) => !STAGES.includes(s) && s !== "total" && s !== "first_token")];
  const out = [];
  let at = 0;
  for (const name of names) {
    const took = Number(timings[name]);
    if (!isNum(took)) continue;
    out.push({ name, start: at, ms: took, cls: name });
    if (name === "invoke") {
      let inner = at;
      attempts.forEach((a, i) => {
        if (!isNum(a.latency_ms)) return;
        out.push({ name: `↳ try ${i + 1}${a.version ? ` ${a.version}` : ""}`, start: inner, ms: a.latency_ms, cls: a.ok ? "attempt" : "attempt-failed" });
        inner += a.latency_ms;
      });
      if (isNum(timings.first_token)) out.push({ name: "↳ first token", start: at, ms: timings.first_token, cls: "attempt" });
    }
    at += took;
  }
  return out;
}
