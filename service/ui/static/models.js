// The models: name, live version, classes, state (serving, or updating with the running update's progress),
// pending and quarantined samples.  Refreshed by the page's poll; faster while a model is updating.

import { firstPage, get, modelPath } from "./api.js";
import { DASH, cut, fill, h, percent, plural } from "./dom.js";

const SHOWN_CLASSES = 20;

export function classList(classes) {
  const [shown, left] = cut(Array.isArray(classes) ? classes : [], SHOWN_CLASSES);
  return h("span", { class: "classes" }, shown.join(", ") || DASH, left ? h("span", { class: "muted" }, ` … ${left} more`) : null);
}

/** The running update's progress bar (value 0-1) with its percentage. */
export function progressBar(update) {
  const value = typeof update.progress === "number" ? Math.max(0, Math.min(1, update.progress)) : 0;
  return h(
    "span",
    { class: "progress", dataset: { updateId: update.update_id, status: update.status } },
    h("progress", { max: 1, value, title: `update ${update.update_id}` }),
    " ",
    update.status === "queued" ? "queued" : percent(value),
  );
}

function pendingCell(model) {
  const pending = model.pending || {};
  const parts = [];
  if (pending.labeled) parts.push(`${pending.labeled.toLocaleString()} labeled`);
  if (pending.unlabeled) parts.push(`${pending.unlabeled.toLocaleString()} unlabeled`);
  if (pending.held_out) parts.push(`${pending.held_out.toLocaleString()} held out`);
  const waiting = Array.isArray(model.waiting_classes) ? model.waiting_classes : [];
  return h(
    "div",
    {},
    parts.join(" · ") || h("span", { class: "muted" }, "none"),
    waiting.length
      ? h("div", { class: "muted" }, `waiting: ${waiting.map((w) => `${w.label} (${w.samples}/${w.needed})`).join(", ")}`)
      : null,
  );
}

function stateCell(model, running) {
  const state = typeof model.state === "string" ? model.state : "unknown";
  const badge = h("span", { class: ["badge", state === "serving" ? "good" : state === "updating" ? "busy" : "muted"] }, state);
  return h("div", { class: "state" }, badge, running.length ? running.map((u) => h("div", {}, progressBar(u))) : null);
}

export function modelsView(root) {
  const body = h("tbody");
  const empty = h("p", { class: "muted", hidden: true }, "No models yet. ", h("code", {}, "clserve --demo"), " creates one; ", h("code", {}, "POST /v1/models"), " creates yours.");
  fill(
    root,
    h("h1", {}, "Models"),
    h(
      "table",
      { class: "models", id: "models" },
      h(
        "thead",
        {},
        h("tr", {}, ["model", "live version", "versions", "classes", "state", "pending samples", "quarantined"].map((t) => h("th", { scope: "col" }, t))),
      ),
      body,
    ),
    empty,
  );
  let shown = "";

  async function refresh() {
    const answer = await get("v1/models");
    const models = answer && Array.isArray(answer.models) ? answer.models : [];
    const running = {};
    await Promise.all(
      models
        .filter((m) => m.state === "updating")
        .map(async (m) => {
          const updates = await firstPage(modelPath(m.name, "updates"), "updates", 20);
          running[m.name] = updates.filter((u) => u.status === "running");
        }),
    );
    const signature = JSON.stringify([models, running]);
    if (signature !== shown) {
      shown = signature;
      empty.hidden = models.length > 0;
      fill(
        body,
        models.map((m) =>
          h(
            "tr",
            { dataset: { model: m.name } },
            h("td", {}, h("a", { href: `#/models/${encodeURIComponent(m.name)}` }, m.name)),
            h("td", { class: "num live-version" }, m.live_version ?? DASH),
            h("td", { class: "num" }, typeof m.versions === "number" ? m.versions : DASH),
            h("td", {}, classList(m.classes)),
            h("td", {}, stateCell(m, running[m.name] || [])),
            h("td", {}, pendingCell(m)),
            h("td", { class: "num" }, m.quarantined ? h("a", { href: `#/models/${encodeURIComponent(m.name)}/quarantine` }, plural(m.quarantined, "sample")) : "0"),
          ),
        ),
      );
    }
    return models.some((m) => m.state === "updating");
  }

  return { refresh, destroy() {}, title: "Models" };
}
