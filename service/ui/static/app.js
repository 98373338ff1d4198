// The console's entry point: the API key form, the views chosen by the URL's fragment (#/ and #/models/<name>),
// the poll that keeps the open view current, the messages and the confirmation dialog.
//
// The key typed here goes to this tab's session storage and into the Authorization header of each API call: never
// into a URL (the form is never submitted; the page's Content-Security-Policy forbids it anyway), never to a log.

import { ApiError, apiKey } from "./api.js";
import { fill, h } from "./dom.js";
import { modelView } from "./model.js";
import { modelsView } from "./models.js";

const MODEL_NAME = /^[a-z0-9][a-z0-9_-]{0,63}$/; // registry/names.py: what a model name may be
const BUSY_POLL_MS = 1000; // while an update is queued or running: its progress moves
const IDLE_POLL_MS = 3000;
const HIDDEN_POLL_MS = 15000; // the tab is in the background

const $ = (id) => document.getElementById(id);
const view = $("view");
const message = $("message");
const noticeBox = $("notice");
const crumbs = $("crumbs");

// -- messages -----------------------------------------------------------------------------------------------------
export function describe(error) {
  if (!(error instanceof ApiError)) return `The console failed: ${error && error.message ? error.message : error}`;
  switch (error.status) {
    case 0:
      return error.detail;
    case 401:
      return apiKey.get()
        ? `The service refused the API key typed above (401: ${error.detail}). Check it, or type another one.`
        : `This service needs an API key (401: ${error.detail}). Type a key in the field above: it stays in this browser tab only.`;
    case 403:
      return `This API key may not do that (403: ${error.detail}). Scopes: predict ⊂ train ⊂ admin; promoting and releasing need admin.`;
    case 429:
      return `Too many requests (429: ${error.detail}); trying again in ${error.retryAfter ?? "a few"} s.`;
    default:
      return `${error.status}: ${error.detail}`;
  }
}

/** Show what went wrong.  `source` "poll": the next good poll clears it; "action": it stays until the operator's next
 * action, key or view (a refused promotion must not vanish at the next refresh). */
function showError(error, source = "poll") {
  message.textContent = describe(error);
  message.dataset.status = error instanceof ApiError ? String(error.status) : "error";
  message.dataset.source = source;
  message.hidden = false;
}

function clearError(source = null) {
  if (source !== null && message.dataset.source !== source) return;
  message.hidden = true;
  message.textContent = "";
  delete message.dataset.status;
  delete message.dataset.source;
}

let noticeTimer = null;
function notice(text) {
  noticeBox.textContent = text;
  noticeBox.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => {
    noticeBox.hidden = true;
  }, 10000);
}

// -- confirmation -------------------------------------------------------------------------------------------------
/** Ask before an action.  With `force`, the gate's figures are shown and the action stays disabled until the
 * operator ticks that they read them.  Resolves true to go ahead. */
function confirm({ title, lines = [], gate = null, force = false, action = "Confirm" }) {
  const dialog = $("confirm");
  const ok = $("confirm-ok");
  const forced = $("confirm-force");
  fill($("confirm-title"), title);
  fill($("confirm-lines"), lines.map((line) => h("p", {}, line)));
  const figures = $("confirm-gate");
  figures.hidden = !gate;
  fill(figures, gate ? h("ul", {}, gate.map((line) => h("li", {}, line))) : null);
  $("confirm-force-label").hidden = !force;
  forced.checked = false;
  ok.textContent = action;
  ok.disabled = force;
  forced.onchange = () => {
    ok.disabled = force && !forced.checked;
  };
  return new Promise((resolve) => {
    const done = (answer) => {
      ok.onclick = null;
      $("confirm-cancel").onclick = null;
      dialog.onclose = null;
      if (dialog.open) dialog.close();
      resolve(answer);
    };
    ok.onclick = () => done(!force || forced.checked);
    $("confirm-cancel").onclick = () => done(false);
    dialog.onclose = () => done(false); // Escape
    dialog.showModal();
  });
}

// -- the API key --------------------------------------------------------------------------------------------------
function showKeyState() {
  const set = Boolean(apiKey.get());
  $("key-state").textContent = set ? "key set (this tab only)" : "no key";
  $("key-forget").disabled = !set;
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault(); // never submitted: the key must not reach a URL
  const input = $("key-input");
  const value = input.value.trim();
  input.value = "";
  if (value) apiKey.set(value);
  showKeyState();
  clearError();
  restart();
});

$("key-forget").addEventListener("click", () => {
  apiKey.clear();
  showKeyState();
  restart();
});

// -- views and the poll -------------------------------------------------------------------------------------------
let current = null;
let generation = 0;
let timer = null;
let scrollTo = null;

function route() {
  const parts = window.location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  if (current) current.destroy();
  clearError();
  if (parts[0] === "models" && parts[1]) {
    const name = parts[1];
    if (!MODEL_NAME.test(name)) {
      current = null;
      fill(crumbs, h("a", { href: "#/" }, "Models"));
      fill(view, h("p", {}, "Not a model name: lowercase letters, digits, - and _."));
      return;
    }
    fill(crumbs, h("a", { href: "#/" }, "Models"), " / ", name);
    current = modelView(view, name, { confirm, notice, act, refresh: async () => restart() });
    scrollTo = parts[2] || null;
  } else {
    fill(crumbs, h("a", { href: "#/" }, "Models"));
    current = modelsView(view);
    scrollTo = null;
  }
  document.title = `${current.title} · continual-serve`;
  restart();
}

/** Run an operator's action; its error (a 403 for a key without the scope, a 409 from the gate) is shown. */
async function act(action) {
  clearError();
  try {
    await action();
  } catch (error) {
    showError(error, "action");
  }
}

function restart() {
  generation += 1;
  clearTimeout(timer);
  if (current) poll(generation);
}

async function poll(mine) {
  let delay = IDLE_POLL_MS;
  try {
    const busy = await current.refresh();
    if (mine !== generation) return;
    clearError("poll");
    delay = busy ? BUSY_POLL_MS : IDLE_POLL_MS;
    if (scrollTo) {
      const target = document.getElementById(scrollTo);
      scrollTo = null;
      if (target) target.scrollIntoView();
    }
  } catch (error) {
    if (mine !== generation) return;
    showError(error);
    if (error instanceof ApiError && (error.status === 401 || error.status === 403)) return; // until a key is typed
    const retry = error instanceof ApiError ? Number(error.retryAfter) : NaN;
    delay = Number.isFinite(retry) && retry > 0 ? retry * 1000 : 5000;
  }
  if (document.hidden) delay = Math.max(delay, HIDDEN_POLL_MS);
  timer = setTimeout(() => poll(mine), delay);
}

document.addEventListener("visibilitychange", () => {
  if (!document.hidden) restart();
});
window.addEventListener("hashchange", route);
showKeyState();
route();
