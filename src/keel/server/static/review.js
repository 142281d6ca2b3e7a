// Keel's review queue page: one item at a time, driven from the keyboard.
// Plain ES module, no framework, no build step. It talks to /api/reviews and /v1/features.

const STORE = { reviewer: "keel.review.reviewer", feature: "keel.review.feature" };
const KEY_STORE = "keel.review.apiKey"; // per tab only (sessionStorage)
const EMPTY_POLL_MS = 15000;
// verdict errors after which the item is out of this reviewer's hands
const CLOSED_CODES = new Set(["review_closed", "review_duplicate", "review_not_found"]);

const $ = (id) => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`review.html lacks #${id}`);
  return el;
};

const state = {
  reviewer: localStorage.getItem(STORE.reviewer) || "",
  feature: localStorage.getItem(STORE.feature) || "",
  apiKey: sessionStorage.getItem(KEY_STORE) || "",
  features: new Map(), // name -> {output_kind, labels}
  item: null, // the item on screen
  view: "start", // start | loading | item | empty
  editor: null, // null | "label" | "json" | "reject"
  busy: false,
  skipped: new Set(), // trace ids passed over in this session
  canSkip: true, // false once the server said it takes no "skip" list
  labelMatches: [],
  labelActive: 0,
  emptyTimer: 0,
  toastTimer: 0,
};

// --- the API -------------------------------------------------------------------------

class ApiError extends Error {
  constructor(code, message, status, param = null) {
    super(message);
    this.code = code;
    this.status = status;
    this.param = param;
  }
}

async function api(method, path, body) {
  const headers = { accept: "application/json" };
  if (body !== undefined) headers["content-type"] = "application/json";
  if (state.apiKey) headers.authorization = `Bearer ${state.apiKey}`;
  let response;
  try {
    response = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError("network_error", `Keel could not be reached (${err.message}). Is the server running?`, 0);
  }
  if (response.status === 204) return null;
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      throw new ApiError(response.ok ? "bad_response" : `http_${response.status}`,
        `HTTP ${response.status} from ${method} ${path}: ${text.slice(0, 200)}`, response.status);
    }
  }
  if (!response.ok) {
    const err = (data && typeof data === "object" && data.error) || {};
    throw new ApiError(err.code || `http_${response.status}`,
      err.message || `HTTP ${response.status} from ${method} ${path}`, response.status, err.param);
  }
  return data;
}

// --- small helpers -------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function pretty(value) {
  return JSON.stringify(value, null, 2);
}

function isTyping(target) {
  if (!(target instanceof HTMLElement)) return false;
  return target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName);
}

function toDate(value) {
  if (value === null || value === undefined) return null;
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  return Number.isNaN(date.getTime()) ? null : date;
}

function ago(date) {
  const s = Math.max(0, Math.round((Date.now() - date.getTime()) / 1000));
  if (s < 45) return "just now";
  if (s < 90) return "a minute ago";
  const m = Math.round(s / 60);
  if (m < 60) return `${m} minutes ago`;
  const h = Math.round(m / 60);
  if (h < 36) return h === 1 ? "an hour ago" : `${h} hours ago`;
  return date.toLocaleDateString();
}

function announce(text) {
  const status = $("status");
  status.textContent = "";
  // a fresh text node so screen readers read it even when it repeats
  requestAnimationFrame(() => { status.textContent = text; });
}

function toast(text, kind = "ok") {
  const box = $("toast");
  box.textContent = text;
  box.className = `toast toast-${kind} toast-show`;
  box.hidden = false;
  clearTimeout(state.toastTimer);
  state.toastTimer = setTimeout(() => { box.className = "toast"; box.hidden = true; }, 2200);
}

// --- errors --------------------------------------------------------------------------

function showError(err, title = "The server refused that") {
  const code = err instanceof ApiError ? err.code : "page_error";
  const status = err instanceof ApiError && err.status ? ` · HTTP ${err.status}` : "";
  const unauthorised = err instanceof ApiError && err.status === 401;
  $("alert").querySelector(".alert-title").textContent =
    unauthorised ? "This server needs an API key: enter it in Settings" : title;
  $("alert-message").textContent = err.message || String(err);
  $("alert-code").textContent = `${code}${status}`;
  $("alert-hint").textContent = "";
  $("alert").hidden = false;
  if (unauthorised) openSetup(err.message, "setup-key");
}

function clearError() {
  $("alert").hidden = true;
}

// --- views ---------------------------------------------------------------------------

function setView(view) {
  state.view = view;
  $("loading").hidden = view !== "loading";
  $("empty").hidden = view !== "empty";
  $("item").hidden = view !== "item";
  clearInterval(state.emptyTimer);
  if (view === "empty") {
    state.emptyTimer = setInterval(() => {
      if (!anyDialogOpen() && !state.busy) loadNext({ quiet: true });
    }, EMPTY_POLL_MS);
  }
}

function setBusy(busy) {
  state.busy = busy;
  document.body.classList.toggle("is-busy", busy);
  document.body.setAttribute("aria-busy", busy ? "true" : "false");
  for (const id of ["approve-btn", "edit-btn", "reject-btn", "skip-btn", "refresh-btn",
    "json-send", "reject-send"]) {
    $(id).disabled = busy;
  }
}

function renderWho() {
  const who = $("who");
  who.hidden = !state.reviewer;
  who.replaceChildren(
    el("span", { class: "who-name", text: state.reviewer }),
    el("span", { class: "who-filter", text: state.feature ? ` · ${state.feature}` : " · all features" }),
  );
}

function renderInput(input) {
  const box = $("item-input");
  box.replaceChildren();
  if (input && typeof input === "object" && !Array.isArray(input)) {
    const rest = Object.entries(input).filter(([key, value]) => !(key === "text" && typeof value === "string"));
    if (typeof input.text === "string") box.append(el("blockquote", { class: "input-text", text: input.text }));
    if (rest.length) {
      const list = el("dl", { class: "kv" });
      for (const [key, value] of rest) {
        list.append(el("dt", { text: key }),
          el("dd", {}, typeof value === "string" ? value : el("pre", { class: "code", text: pretty(value) })));
      }
      box.append(list);
    }
    if (!box.childNodes.length) box.append(el("p", { class: "muted", text: "(empty input)" }));
    return;
  }
  box.append(el("pre", { class: "code", text: pretty(input) }));
}

function renderOutput(item) {
  const box = $("item-output");
  const output = item.output;
  box.replaceChildren();
  if (output && typeof output === "object" && typeof output.label === "string" && Object.keys(output).length === 1) {
    box.append(el("span", { class: "label-pill", id: "output-label", text: output.label }));
  } else if (output && typeof output === "object" && typeof output.text === "string" && Object.keys(output).length === 1) {
    box.append(el("blockquote", { class: "output-text", text: output.text }));
  } else {
    box.append(el("pre", { class: "code", text: pretty(output) }));
  }
}

function renderConfidence(confidence) {
  const meter = $("confidence-meter");
  const fill = $("confidence-fill");
  const value = $("confidence-value");
  meter.classList.remove("meter-low", "meter-mid", "meter-high", "meter-unknown");
  if (typeof confidence !== "number") {
    meter.classList.add("meter-unknown");
    fill.style.width = "0%";
    meter.removeAttribute("aria-valuenow");
    meter.setAttribute("aria-valuetext", "unknown");
    value.textContent = "unknown";
    return;
  }
  const level = confidence < 0.5 ? "meter-low" : confidence < 0.8 ? "meter-mid" : "meter-high";
  meter.classList.add(level);
  fill.style.width = `${Math.max(0, Math.min(1, confidence)) * 100}%`;
  meter.setAttribute("aria-valuenow", String(confidence));
  meter.setAttribute("aria-valuetext", `${confidence.toFixed(2)} (${Math.round(confidence * 100)} percent)`);
  value.textContent = confidence.toFixed(2);
}

function renderValidators(validations) {
  const body = $("validators");
  body.replaceChildren();
  const list = Array.isArray(validations) ? validations : [];
  $("no-validators").hidden = list.length > 0;
  body.closest("table").hidden = list.length === 0;
  for (const v of list) {
    const passed = v.passed === true;
    body.append(el("tr", { class: passed ? "v-pass" : "v-fail" },
      el("td", {}, el("code", { text: v.validator ?? "?" })),
      el("td", {}, el("span", { class: `result ${passed ? "result-pass" : "result-fail"}` },
        el("span", { "aria-hidden": "true", text: passed ? "✓ " : "✗ " }), passed ? "passed" : "failed")),
      el("td", {}, el("span", { class: "action", text: v.on_fail ?? "—" })),
      el("td", { class: "v-message", text: v.message || "—" }),
    ));
  }
}

function renderItem(item) {
  state.item = item;
  $("item-feature").textContent = item.feature;
  $("item-version").textContent = item.version ?? "unknown";
  const mode = $("item-mode");
  if (item.mode === "held") {
    mode.className = "badge badge-held";
    mode.replaceChildren(el("span", { class: "pulse", "aria-hidden": "true" }), "Held · a caller is waiting");
  } else {
    mode.className = "badge badge-deferred";
    mode.textContent = "Deferred · the caller already has this answer";
  }
  $("item").classList.toggle("is-held", item.mode === "held");
  $("held-note").hidden = item.mode !== "held";
  $("item-trace").textContent = item.trace_id;
  const created = toDate(item.created_at);
  const time = $("item-created");
  time.textContent = created ? ago(created) : "—";
  time.dateTime = created ? created.toISOString() : "";
  time.title = created ? created.toLocaleString() : "";
  const votes = Array.isArray(item.votes) ? item.votes : [];
  const overlap = typeof item.overlap === "number" ? item.overlap : 1;
  $("item-votes-row").hidden = overlap <= 1 && votes.length === 0;
  $("item-votes").textContent = `${votes.length} of ${overlap}` +
    (votes.length ? ` (${votes.map((v) => `${v.reviewer}: ${v.verdict}`).join(", ")})` : "");
  $("item-reason").textContent = item.reason || "No reason was recorded.";
  renderInput(item.input);
  renderOutput(item);
  renderConfidence(item.confidence);
  renderValidators(item.validations);
  $("item").dataset.traceId = item.trace_id;
}

async function renderCounts() {
  let data;
  try {
    data = await api("GET", "/api/reviews/stats");
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) showError(err);
    return; // the counts are a nicety; the item view reports the real errors
  }
  const rows = Array.isArray(data) ? data
    : Array.isArray(data?.features) ? data.features
      : Array.isArray(data?.stats) ? data.stats
        : Object.entries(data?.features ?? data ?? {}).map(([feature, s]) => ({ feature, ...s }));
  const list = $("counts");
  list.replaceChildren();
  let total = 0;
  for (const row of rows) {
    const pending = (row.pending ?? 0) + (row.in_progress ?? 0);
    total += pending;
    const mine = state.feature && row.feature === state.feature;
    list.append(el("li", { class: `count${mine ? " count-current" : ""}`, "data-feature": row.feature },
      el("span", { class: "count-feature", text: row.feature }),
      el("span", { class: "count-waiting" },
        el("span", { class: "count-num", text: String(pending) }), " waiting"),
      el("span", { class: "count-done", text: `· ${row.done ?? 0} done` })));
  }
  if (!rows.length) list.append(el("li", { class: "count count-none", text: "no reviews yet" }));
  list.dataset.total = String(total);
}

// --- loading items -------------------------------------------------------------------

// The next item for this reviewer. Items skipped in this session are sent as "skip" so
// they do not come straight back; a server without that field gets the plain request.
async function claimNext() {
  const body = { reviewer: state.reviewer };
  if (state.feature) body.feature = state.feature;
  if (state.skipped.size && state.canSkip) body.skip = [...state.skipped];
  try {
    return await api("POST", "/api/reviews/next", body);
  } catch (err) {
    if (!(body.skip && err instanceof ApiError && err.status === 400 && err.param === "skip")) throw err;
    state.canSkip = false;
    delete body.skip;
  }
  const item = await api("POST", "/api/reviews/next", body);
  if (item && state.skipped.has(item.trace_id)) {
    showError(new ApiError("skip_unsupported", "This server keeps the item you skipped assigned to "
      + "you until you give a verdict (its review API takes no \"skip\" list), so it came back.", 0),
      "Could not skip");
  }
  return item;
}

async function loadNext({ quiet = false } = {}) {
  if (!state.reviewer) { openSetup(); return; }
  const wasEmpty = state.view === "empty";
  closeEditors({ focus: false });
  if (!quiet) {
    state.item = null;
    setView("loading");
  }
  setBusy(true);
  let focus = null;
  try {
    const item = await claimNext();
    if (item) {
      setView("item");
      renderItem(item);
      focus = "item-title";
      const held = item.mode === "held" ? " A caller is waiting." : "";
      announce(`Next item: ${item.feature}, confidence ${typeof item.confidence === "number" ? item.confidence.toFixed(2) : "unknown"}.${held}`);
    } else {
      state.item = null;
      showEmpty("The queue is empty", state.feature
        ? `Nothing from ${state.feature} is waiting for a human right now.`
        : "Nothing is waiting for a human right now.");
      if (!(wasEmpty && quiet)) {
        focus = "refresh-btn";
        announce("The queue is empty.");
      }
    }
  } catch (err) {
    if (!quiet || !wasEmpty) {
      if (!state.item) showEmpty("The queue could not be loaded", "The error is shown above. Refresh to try again.");
      showError(err, "Could not load the next item");
      focus = state.item ? null : "refresh-btn";
    }
  } finally {
    setBusy(false); // before focusing: a disabled button takes no focus
  }
  if (focus) $(focus).focus();
  renderCounts();
}

function showEmpty(title, detail) {
  setView("empty");
  $("empty-title").textContent = title;
  $("empty-detail").textContent = detail;
}

async function sendVerdict(verdict, extra = {}) {
  const item = state.item;
  if (!item || state.busy) return;
  setBusy(true);
  clearError();
  let done = false;
  try {
    await api("POST", `/api/reviews/${encodeURIComponent(item.trace_id)}/verdict`,
      { reviewer: state.reviewer, verdict, ...extra });
    done = true;
  } catch (err) {
    const closed = err instanceof ApiError && CLOSED_CODES.has(err.code);
    if (closed) item.gone = true; // nothing to skip: it has left the queue (or this reviewer)
    showError(err, `Your ${verdict} was not recorded`);
    if (closed) $("alert-hint").textContent = "This item is no longer yours to decide: press S for the next one.";
    announce(`Error: ${err.message}`);
  } finally {
    setBusy(false);
  }
  if (!done) return;
  state.skipped.delete(item.trace_id);
  const word = { approve: "Approved", edit: "Corrected", reject: "Rejected" }[verdict];
  toast(`${word} · ${item.trace_id.slice(0, 8)}`, verdict);
  announce(`${word}.`);
  await loadNext();
}

function skip() {
  if (state.busy) return;
  clearError();
  if (state.item && !state.item.gone) state.skipped.add(state.item.trace_id);
  loadNext();
}

// --- editors -------------------------------------------------------------------------

function featureInfo(name) {
  return state.features.get(name) || null;
}

function openEditor() {
  const item = state.item;
  if (!item || state.busy) return;
  closeEditors({ focus: false });
  const info = featureInfo(item.feature);
  const labels = info && info.output_kind === "label" && Array.isArray(info.labels) ? info.labels : null;
  $("editor").hidden = false;
  $("edit-btn").setAttribute("aria-expanded", "true");
  if (labels && labels.length) {
    state.editor = "label";
    $("label-editor").hidden = false;
    $("editor-title").textContent = "Pick the right label";
    const search = $("label-search");
    search.value = "";
    filterLabels();
    search.focus();
  } else {
    state.editor = "json";
    $("json-editor").hidden = false;
    $("editor-title").textContent = "Correct the output";
    $("json-error").textContent = "";
    const text = $("json-text");
    text.value = pretty(item.output);
    text.removeAttribute("aria-invalid");
    text.focus();
    text.setSelectionRange(0, 0);
  }
  $("editor").scrollIntoView({ block: "nearest" });
}

function openRejecter() {
  if (!state.item || state.busy) return;
  closeEditors({ focus: false });
  state.editor = "reject";
  $("rejecter").hidden = false;
  $("reject-btn").setAttribute("aria-expanded", "true");
  $("reject-error").textContent = "";
  const input = $("reject-reason");
  input.value = "";
  input.removeAttribute("aria-invalid");
  input.focus();
  $("rejecter").scrollIntoView({ block: "nearest" });
}

function closeEditors({ focus = true } = {}) {
  const was = state.editor;
  state.editor = null;
  for (const id of ["editor", "label-editor", "json-editor", "rejecter"]) $(id).hidden = true;
  $("edit-btn").setAttribute("aria-expanded", "false");
  $("reject-btn").setAttribute("aria-expanded", "false");
  if (focus && was) $(was === "reject" ? "reject-btn" : "edit-btn").focus();
}

function normalise(text) {
  return text.toLowerCase().replace(/[\s_\-]+/g, " ").trim();
}

function labelScore(label, query) {
  if (!query) return 0;
  const name = normalise(label);
  if (name === query) return 0;
  if (name.startsWith(query)) return 1;
  if (name.split(" ").some((word) => word.startsWith(query))) return 2;
  if (name.includes(query)) return 3;
  // every typed word starts some word of the label ("card arr" -> card_arrival)
  const words = name.split(" ");
  if (query.split(" ").every((q) => words.some((w) => w.startsWith(q)))) return 4;
  return -1;
}

function filterLabels() {
  const info = featureInfo(state.item.feature);
  const labels = info.labels;
  const query = normalise($("label-search").value);
  const current = state.item.output && state.item.output.label;
  state.labelMatches = labels
    .map((label, index) => ({ label, index, score: labelScore(label, query) }))
    .filter((m) => m.score >= 0)
    .sort((a, b) => a.score - b.score || a.index - b.index)
    .map((m) => m.label);
  state.labelActive = 0;
  const list = $("label-list");
  list.replaceChildren();
  state.labelMatches.forEach((label, i) => {
    const option = el("li", {
      id: `label-opt-${i}`, role: "option", class: "label-option", "data-label": label,
      "aria-selected": "false",
    }, el("span", { class: "label-name", text: label }),
    label === current ? el("span", { class: "label-current", text: "model's answer" }) : null);
    option.addEventListener("mousedown", (ev) => ev.preventDefault()); // keep focus in the search
    option.addEventListener("click", () => pickLabel(label));
    list.append(option);
  });
  if (!state.labelMatches.length) {
    list.append(el("li", { class: "label-none", role: "presentation", text: "No label matches." }));
  }
  $("label-search").setAttribute("aria-expanded", state.labelMatches.length ? "true" : "false");
  highlightLabel();
}

function highlightLabel() {
  const search = $("label-search");
  const options = $("label-list").querySelectorAll("[role=option]");
  options.forEach((option, i) => {
    const active = i === state.labelActive;
    option.setAttribute("aria-selected", active ? "true" : "false");
    option.classList.toggle("is-active", active);
    if (active) option.scrollIntoView({ block: "nearest" });
  });
  if (options.length) search.setAttribute("aria-activedescendant", `label-opt-${state.labelActive}`);
  else search.removeAttribute("aria-activedescendant");
}

function moveLabel(delta) {
  const n = state.labelMatches.length;
  if (!n) return;
  state.labelActive = (state.labelActive + delta + n) % n;
  highlightLabel();
}

function pickLabel(label) {
  if (state.busy) return;
  sendVerdict("edit", { output: { label } });
}

function sendJson() {
  const text = $("json-text");
  let output;
  try {
    output = JSON.parse(text.value);
  } catch (err) {
    $("json-error").textContent = `Not valid JSON: ${err.message}`;
    text.setAttribute("aria-invalid", "true");
    text.focus();
    return;
  }
  const info = featureInfo(state.item.feature);
  if (info && info.output_kind === "text" && !(output && typeof output.text === "string")) {
    $("json-error").textContent = 'This feature answers text: send {"text": "..."}';
    text.setAttribute("aria-invalid", "true");
    text.focus();
    return;
  }
  text.removeAttribute("aria-invalid");
  $("json-error").textContent = "";
  sendVerdict("edit", { output });
}

function sendReject() {
  const input = $("reject-reason");
  const reason = input.value.trim();
  if (!reason) {
    $("reject-error").textContent = "A reason is required to reject.";
    input.setAttribute("aria-invalid", "true");
    input.focus();
    return;
  }
  input.removeAttribute("aria-invalid");
  $("reject-error").textContent = "";
  sendVerdict("reject", { reason });
}

// --- dialogs -------------------------------------------------------------------------

function anyDialogOpen() {
  return $("setup").open || $("help").open;
}

let returnFocus = null;

function openSetup(message = "", focusId = "setup-name") {
  const dialog = $("setup");
  $("setup-name").value = state.reviewer;
  $("setup-key").value = state.apiKey;
  $("setup-feature").value = state.feature;
  if ($("setup-feature").value !== state.feature) $("setup-feature").value = "";
  $("setup-error").textContent = message;
  $("setup-cancel").hidden = !state.reviewer;
  if (!dialog.open) {
    returnFocus = document.activeElement;
    dialog.showModal();
  }
  $(focusId).focus();
}

function submitSetup(ev) {
  ev.preventDefault();
  const name = $("setup-name").value.trim();
  if (!name) {
    $("setup-error").textContent = "Please enter your name: it goes with every verdict.";
    $("setup-name").focus();
    return;
  }
  const featureChanged = $("setup-feature").value !== state.feature;
  const keyChanged = $("setup-key").value.trim() !== state.apiKey;
  const nameChanged = name !== state.reviewer;
  state.reviewer = name;
  state.feature = $("setup-feature").value;
  state.apiKey = $("setup-key").value.trim();
  localStorage.setItem(STORE.reviewer, state.reviewer);
  localStorage.setItem(STORE.feature, state.feature);
  if (state.apiKey) sessionStorage.setItem(KEY_STORE, state.apiKey);
  else sessionStorage.removeItem(KEY_STORE);
  $("setup").close();
  renderWho();
  clearError();
  if (keyChanged) loadFeatures();
  if (featureChanged || nameChanged || keyChanged || state.view !== "item") {
    state.skipped.clear();
    loadNext();
  } else {
    $("item-title").focus();
  }
}

function openHelp() {
  returnFocus = document.activeElement;
  $("help").showModal();
  $("help-close").focus();
}

function restoreFocus() {
  const target = returnFocus;
  returnFocus = null;
  if (target instanceof HTMLElement && document.contains(target) && !target.closest("[hidden]")) {
    target.focus();
  } else if (state.view === "item") {
    $("item-title").focus();
  } else if (state.view === "empty") {
    $("refresh-btn").focus();
  }
}

// --- features ------------------------------------------------------------------------

async function loadFeatures() {
  try {
    const data = await api("GET", "/v1/features");
    state.features.clear();
    for (const f of data.features || []) state.features.set(f.name, f);
  } catch (err) {
    showError(err, "Could not load the feature list (label editing falls back to JSON)");
    return;
  }
  const select = $("setup-feature");
  select.replaceChildren(el("option", { value: "", text: "All features" }));
  for (const name of [...state.features.keys()].sort()) {
    select.append(el("option", { value: name, text: name }));
  }
  select.value = state.feature;
}

// --- keyboard ------------------------------------------------------------------------

function onKey(ev) {
  if (ev.ctrlKey || ev.metaKey || ev.altKey || ev.isComposing) return;
  if (anyDialogOpen()) {
    if (ev.key === "?" && $("help").open) {
      ev.preventDefault();
      $("help").close();
    }
    return; // dialogs handle Esc themselves
  }
  if (ev.key === "Escape") {
    if (state.editor) { ev.preventDefault(); closeEditors(); return; }
    if (!$("alert").hidden) { ev.preventDefault(); clearError(); }
    return;
  }
  if (isTyping(ev.target)) return; // the editors' own handlers take these keys
  if (ev.key === "?") { ev.preventDefault(); openHelp(); return; }
  if (state.busy) return;
  const key = ev.key.toLowerCase();
  if (state.view === "item" && !state.editor) {
    const action = { a: () => sendVerdict("approve"), e: openEditor, r: openRejecter, s: skip }[key];
    if (action) { ev.preventDefault(); action(); }
  } else if (state.view === "empty" && (key === "s" || key === "n")) {
    ev.preventDefault();
    loadNext();
  }
}

function onLabelKey(ev) {
  if (ev.isComposing) return;
  if (ev.key === "ArrowDown") { ev.preventDefault(); moveLabel(1); }
  else if (ev.key === "ArrowUp") { ev.preventDefault(); moveLabel(-1); }
  else if (ev.key === "PageDown") { ev.preventDefault(); moveLabel(Math.min(8, state.labelMatches.length - 1 - state.labelActive) || 0); }
  else if (ev.key === "PageUp") { ev.preventDefault(); moveLabel(-Math.min(8, state.labelActive)); }
  else if (ev.key === "Enter") {
    ev.preventDefault();
    const label = state.labelMatches[state.labelActive];
    if (label) pickLabel(label);
  } else if (ev.key === "Escape") { ev.preventDefault(); ev.stopPropagation(); closeEditors(); }
}

// --- wiring --------------------------------------------------------------------------

function wire() {
  document.addEventListener("keydown", onKey);
  $("approve-btn").addEventListener("click", () => sendVerdict("approve"));
  $("edit-btn").addEventListener("click", openEditor);
  $("reject-btn").addEventListener("click", openRejecter);
  $("skip-btn").addEventListener("click", skip);
  $("refresh-btn").addEventListener("click", () => loadNext());
  $("help-btn").addEventListener("click", openHelp);
  $("help-close").addEventListener("click", () => $("help").close());
  $("settings-btn").addEventListener("click", () => openSetup());
  $("alert-close").addEventListener("click", clearError);

  $("label-search").addEventListener("input", filterLabels);
  $("label-search").addEventListener("keydown", onLabelKey);

  $("json-text").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); sendJson(); }
    else if (ev.key === "Escape") { ev.preventDefault(); ev.stopPropagation(); closeEditors(); }
  });
  $("json-send").addEventListener("click", sendJson);
  $("json-cancel").addEventListener("click", () => closeEditors());

  $("reject-reason").addEventListener("keydown", (ev) => {
    if (ev.isComposing) return;
    if (ev.key === "Enter") { ev.preventDefault(); sendReject(); }
    else if (ev.key === "Escape") { ev.preventDefault(); ev.stopPropagation(); closeEditors(); }
  });
  $("reject-send").addEventListener("click", sendReject);
  for (const [field, error] of [["reject-reason", "reject-error"], ["json-text", "json-error"]]) {
    $(field).addEventListener("input", () => {
      $(field).removeAttribute("aria-invalid");
      $(error).textContent = "";
    });
  }
  $("reject-cancel").addEventListener("click", () => closeEditors());

  $("setup-form").addEventListener("submit", submitSetup);
  $("setup-cancel").addEventListener("click", () => $("setup").close());
  $("setup").addEventListener("cancel", (ev) => {
    if (!state.reviewer) ev.preventDefault(); // a name is needed before anything else
  });
  $("setup").addEventListener("close", restoreFocus);
  $("help").addEventListener("close", restoreFocus);
}

async function start() {
  wire();
  renderWho();
  await loadFeatures();
  if (!state.reviewer) {
    if (!$("setup").open) openSetup();
  } else {
    loadNext();
  }
}

start();
