// The console's only way to the service: its public REST API, with the operator's key.
//
// The key lives in this tab's session storage (gone when the tab closes, never shared with other tabs) and travels
// in the Authorization header only: never in a URL, never logged.  Paginated lists are followed through
// `next_cursor` when the service gives one; fields the console does not know are ignored.

const KEY_ITEM = "continual-serve.api-key";

/** The service's root: this module is served at <root>/ui/static/api.js. */
export const ROOT = new URL("../../", import.meta.url);

/** An answer other than success, with the API's own message. */
export class ApiError extends Error {
  constructor(status, detail, { field = null, retryAfter = null } = {}) {
    super(detail);
    this.name = "ApiError";
    this.status = status;
    this.detail = detail;
    this.field = field;
    this.retryAfter = retryAfter;
  }
}

export const apiKey = {
  get() {
    try {
      return window.sessionStorage.getItem(KEY_ITEM) || "";
    } catch {
      return ""; // storage disabled: no key
    }
  },
  set(value) {
    window.sessionStorage.setItem(KEY_ITEM, value);
  },
  clear() {
    window.sessionStorage.removeItem(KEY_ITEM);
  },
};

/** One call: `path` relative to the service's root ("v1/models"), `body` sent as JSON. */
export async function request(method, path, body) {
  const headers = { Accept: "application/json" };
  const key = apiKey.get();
  if (key) headers.Authorization = `Bearer ${key}`;
  const init = { method, headers, cache: "no-store", credentials: "omit", redirect: "error", referrerPolicy: "no-referrer" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(new URL(path, ROOT), init);
  } catch (error) {
    throw new ApiError(0, `the service did not answer (${error.message}); is clserve running?`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null; // not JSON (a proxy's error page): the status says enough
  }
  if (!response.ok) {
    let detail = response.statusText || `HTTP ${response.status}`;
    if (data && typeof data.detail === "string") detail = data.detail;
    else if (data && data.detail !== undefined) detail = JSON.stringify(data.detail);
    throw new ApiError(response.status, detail, {
      field: data && typeof data.field === "string" ? data.field : null,
      retryAfter: response.headers.get("Retry-After"),
    });
  }
  return data;
}

export const get = (path) => request("GET", path);
export const post = (path, body) => request("POST", path, body);
export const del = (path) => request("DELETE", path);

/** "v1/models/<name>/<rest…>", every part escaped. */
export function modelPath(name, ...rest) {
  return ["v1", "models", name, ...rest].map((part) => encodeURIComponent(String(part))).join("/");
}

function withQuery(path, params) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) if (value !== null && value !== undefined) query.set(name, value);
  const text = query.toString();
  return text ? `${path}${path.includes("?") ? "&" : "?"}${text}` : path;
}

/** A list the API may paginate: the items of `field` over every page (at most `maxPages`), following `next_cursor`
 * while the service gives one.  `complete` is false when pages were left. */
export async function collect(path, field, { maxPages = 50 } = {}) {
  const items = [];
  let cursor = null;
  for (let page = 0; page < maxPages; page += 1) {
    const answer = await get(withQuery(path, { cursor }));
    if (answer && Array.isArray(answer[field])) items.push(...answer[field]);
    const next = answer ? answer.next_cursor : null;
    cursor = typeof next === "string" || typeof next === "number" ? String(next) : null;
    if (cursor === null || cursor === "") return { items, complete: true };
  }
  return { items, complete: false };
}

/** The first page of a list (the newest items where the API pages newest first), `limit` asked for. */
export async function firstPage(path, field, limit) {
  const answer = await get(withQuery(path, { limit }));
  return answer && Array.isArray(answer[field]) ? answer[field] : [];
}
