// Talking to Keel's JSON API from the dashboard: GET with query parameters, Keel's error
// shape turned into ApiError, and the gateway key kept for this tab only.

// The same sessionStorage entry as the review page, so one key serves both in a tab.
const KEY_STORE = "keel.review.apiKey";

export class ApiError extends Error {
  constructor(code, message, status, param = null) {
    super(message);
    this.name = "ApiError";
    this.code = code;
    this.status = status;
    this.param = param;
  }

  /** The whole route is missing (this Keel does not serve it yet): not an error to shout about. */
  get missingRoute() {
    return this.status === 404 && this.code === "not_found";
  }

  get unauthorised() {
    return this.status === 401;
  }
}

const listeners = new Set();
let memoryKey = ""; // when sessionStorage is not available

/** Call ``fn(error)`` on every 401, e.g. to ask for the key. */
export function onUnauthorised(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

export function apiKey() {
  try {
    return sessionStorage.getItem(KEY_STORE) || "";
  } catch {
    return memoryKey;
  }
}

export function setApiKey(key) {
  try {
    if (key) sessionStorage.setItem(KEY_STORE, key);
    else sessionStorage.removeItem(KEY_STORE);
  } catch {
    memoryKey = key; // storage disabled: the key lasts until the page reloads
  }
}

/** "/api/x" plus the parameters that are set (null, undefined and "" are left out). */
export function url(path, params = {}) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value === null || value === undefined || value === "") continue;
    query.set(name, String(value));
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

/** GET a JSON document; throws ApiError with Keel's code and message. */
export async function get(path, params = {}, { signal } = {}) {
  return request("GET", url(path, params), undefined, signal);
}

export async function request(method, path, body, signal) {
  const headers = { accept: "application/json" };
  if (body !== undefined) headers["content-type"] = "application/json";
  const key = apiKey();
  if (key) headers.authorization = `Bearer ${key}`;
  let response;
  try {
    response = await fetch(path, {
      method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    if (err && err.name === "AbortError") throw err;
    throw new ApiError("network_error",
      `Keel could not be reached (${err.message}). Is the server running?`, 0);
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
    const error = new ApiError(err.code || `http_${response.status}`,
      err.message || `HTTP ${response.status} from ${method} ${path}`, response.status, err.param);
    if (error.unauthorised) for (const fn of listeners) fn(error);
    throw error;
  }
  return data;
}

/**
 * One request for several panels: ``shared(fn)()`` returns the same promise to every
 * caller until it fails; a call after a failure ("Try again") asks again.
 */
export function shared(fn) {
  let promise = null;
  return () => {
    if (!promise) {
      const mine = fn();
      promise = mine;
      mine.catch(() => { if (promise === mine) promise = null; });
    }
    return promise;
  };
}

export function isAbort(err) {
  return Boolean(err) && err.name === "AbortError";
}
