// One model: what it learned and forgot version by version, what the gate found, the updates, the quarantine, and
// the two decisions an operator takes here: promote (or roll back to) a version, and cancel an update.
//
// Everything comes from the public API: GET /v1/models/{name}, …/versions (every page), …/metrics (the forgetting
// report of the live lineage), …/updates (the newest page) and …/quarantine.  Each section is rebuilt only when its
// data changed, so a poll keeps the operator's selection and the chart's cursor.

import { ApiError, collect, del, firstPage, get, modelPath, post } from "./api.js";
import { color, heatmap, versionChart } from "./charts.js";
import { DASH, cut, fill, h, naturalCompare, plural, ratio, signed, when } from "./dom.js";
import { gateCell, gateLines, gateOf } from "./gate.js";
import { classList, progressBar } from "./models.js";

/** A class whose held-out accuracy fell by more than the gate's per-class limit (the version's recorded
 * `max_class_drop`, CL_MAX_CLASS_DROP; this when none was recorded) when a version went live stands out. */
export const DEFAULT_CLASS_DROP = 0.1;
const RECENT_UPDATES = 20;
const SHOWN_QUARANTINE = 200;
const SHOWN_DRIFT_WINDOWS = 10;
const ACTIVE = new Set(["queued", "running"]);

function perClass(version) {
  const figures = version && version.metrics ? version.metrics.per_class_accuracy : null;
  return figures && typeof figures === "object" ? figures : {};
}

/** Every (version, class) where a class's accuracy fell by more than the per-class limit when the version went live,
 * compared with the version it replaced (each recorded promotion names the previous live version). */
export function dropsAtPromotions(versions) {
  const byNumber = new Map(versions.map((v) => [v.version, v]));
  const drops = [];
  for (const version of versions) {
    const after = perClass(version);
    const gate = gateOf(version);
    const limit = gate && typeof gate.max_class_drop === "number" ? gate.max_class_drop : DEFAULT_CLASS_DROP;
    for (const promotion of Array.isArray(version.promotions) ? version.promotions : []) {
      const previous = promotion ? byNumber.get(promotion.previous) : undefined;
      if (!previous) continue;
      const before = perClass(previous);
      for (const [label, value] of Object.entries(after)) {
        if (typeof value === "number" && typeof before[label] === "number" && before[label] - value > limit) {
          drops.push({ version: version.version, previous: previous.version, label, before: before[label], after: value, limit, by: promotion.by });
        }
      }
    }
  }
  return drops;
}

function flatten(value, prefix = "") {
  if (value && typeof value === "object" && !Array.isArray(value)) {
    return Object.entries(value).flatMap(([k, v]) => flatten(v, prefix ? `${prefix}.${k}` : k));
  }
  return [`${prefix} = ${JSON.stringify(value)}`];
}

function methodCell(version) {
  const hp = version.hyperparameters && typeof version.hyperparameters === "object" ? version.hyperparameters : {};
  const train = version.train_config && typeof version.train_config === "object" ? version.train_config : {};
  const method = hp.method && typeof hp.method === "object" ? hp.method : {};
  const memory = hp.memory && typeof hp.memory === "object" ? hp.memory : null;
  const learner = typeof hp.name === "string" ? hp.name : version.method;
  const chosen = [];
  if (typeof method.lam === "number") chosen.push(`λ ${method.lam}`);
  if (typeof method.gamma === "number") chosen.push(`γ ${method.gamma}`);
  if (memory && typeof memory.per_class === "number") chosen.push(`memory ${memory.per_class}/class${memory.selection ? ` (${memory.selection})` : ""}`);
  if (typeof train.epochs === "number") chosen.push(`${train.epochs} epochs`);
  if (typeof train.lr === "number") chosen.push(`lr ${train.lr}`);
  const all = [...flatten(hp, "learner"), ...flatten(train, "training")].filter((line) => !line.endsWith(" = undefined"));
  return h(
    "div",
    { class: "method" },
    h("strong", {}, learner || DASH),
    version.method && version.method !== learner ? h("span", { class: "muted" }, ` (${version.method})`) : null,
    chosen.length ? h("div", { class: "muted" }, chosen.join(" · ")) : null,
    all.length ? h("details", {}, h("summary", {}, "all hyper-parameters"), h("pre", {}, all.join("\n"))) : null,
  );
}

function samplesCell(version) {
  const s = version.samples && typeof version.samples === "object" ? version.samples : {};
  const counts = [];
  for (const [key, label] of [["labeled", "labeled"], ["unlabeled", "unlabeled"], ["held_out", "held out"], ["quarantined", "quarantined"]]) {
    if (typeof s[key] === "number" && (s[key] > 0 || key === "labeled")) counts.push(`${s[key].toLocaleString()} ${label}`);
  }
  const fresh = Array.isArray(s.new_classes) && s.new_classes.length ? s.new_classes : null;
  return h(
    "div",
    {},
    counts.join(" · ") || DASH,
    fresh ? h("div", { class: "muted" }, `new classes: ${fresh.join(", ")}`) : null,
    typeof s.note === "string" && s.note ? h("div", { class: "note" }, s.note) : null,
  );
}

function accuracyCell(version, drops) {
  const figures = perClass(version);
  const labels = Object.keys(figures).sort(naturalCompare);
  const dropped = new Set(drops.filter((d) => d.version === version.version).map((d) => d.label));
  const overall = version.metrics ? version.metrics.accuracy : null;
  return h(
    "div",
    {},
    h("strong", {}, ratio(overall)),
    h(
      "div",
      { class: "chips" },
      labels.map((label) =>
        h("span", { class: ["chip", dropped.has(label) ? "dropped" : null], dataset: { class: label, value: figures[label] } }, `${label} ${ratio(figures[label], 2)}`),
      ),
    ),
  );
}

function promotedCell(version) {
  const promotions = Array.isArray(version.promotions) ? version.promotions : [];
  if (!promotions.length) return h("span", { class: "muted" }, "never live");
  const last = promotions[promotions.length - 1] || {};
  const history = promotions.map((p) => `${when(p.at)} by ${p.by ?? "unknown"} (replacing ${p.previous === null || p.previous === undefined ? "none" : `v${p.previous}`})`);
  return h(
    "div",
    { title: history.join("\n") },
    last.by ?? "unknown",
    h("div", { class: "muted" }, when(last.at), promotions.length > 1 ? ` · ${promotions.length} times` : ""),
  );
}

function versionBadges(version, live) {
  const badges = [];
  if (version.version === live || version.live === true) badges.push(h("span", { class: "badge good" }, "live"));
  else if (version.status === "rejected") badges.push(h("span", { class: "badge bad" }, "rejected"));
  else if (Array.isArray(version.promotions) && version.promotions.length) badges.push(h("span", { class: "badge muted" }, "was live"));
  else if (typeof version.status === "string") badges.push(h("span", { class: "badge muted" }, version.status));
  if (version.pinned === true) badges.push(h("span", { class: "badge pin" }, "pinned"));
  return badges;
}

function updateRow(update, onCancel) {
  const active = ACTIVE.has(update.status);
  const error = typeof update.error === "string" && update.error ? update.error : null;
  return h(
    "tr",
    { dataset: { updateId: update.update_id, status: update.status } },
    h("td", { title: update.update_id }, h("code", {}, String(update.update_id).slice(0, 8))),
    h(
      "td",
      {},
      h("span", { class: ["badge", update.status === "succeeded" ? "good" : active ? "busy" : update.status === "cancelled" || update.status === "skipped" ? "muted" : "bad"] }, update.status),
      active ? h("div", {}, progressBar(update)) : null,
    ),
    h("td", {}, update.method ?? DASH),
    h("td", {}, update.reason ?? DASH, h("div", { class: "muted" }, update.triggered_by ?? "")),
    h("td", { class: "num" }, update.version === null || update.version === undefined ? DASH : `v${update.version}`),
    h("td", {}, when(update.started_at ?? update.created_at), update.finished_at ? h("div", { class: "muted" }, `→ ${when(update.finished_at)}`) : null),
    h("td", { class: "error" }, error ? (error.length > 160 ? h("details", {}, h("summary", {}, `${error.slice(0, 140)}…`), error) : error) : ""),
    h("td", {}, active ? h("button", { type: "button", class: "danger", dataset: { action: "cancel" }, on: { click: () => onCancel(update) } }, "Cancel") : null),
  );
}

export function modelView(root, name, context) {
  const sections = {
    summary: h("section", { id: "summary" }),
    updates: h("section", { id: "updates" }),
    learned: h("section", { id: "learned" }),
    versions: h("section", { id: "versions" }),
    quarantine: h("section", { id: "quarantine" }),
    drift: h("section", { id: "drift" }),
  };
  fill(root, Object.values(sections));
  const shown = {};
  const charts = [];
  const selected = new Set();
  let state = { model: null, versions: [], quarantine: [] };

  /** Rebuild a section when its data changed since it was last drawn. */
  function draw(section, data, render) {
    const signature = JSON.stringify(data);
    if (shown[section] === signature) return;
    shown[section] = signature;
    render();
  }

  async function promote(version) {
    const model = state.model;
    const live = model ? model.live_version : null;
    const rejected = version.status === "rejected";
    const liveRecord = state.versions.find((v) => v.version === live);
    const lost = liveRecord ? (liveRecord.classes || []).filter((c) => !(version.classes || []).includes(c)) : [];
    const lines = [
      `Version ${live ?? "none"} serves now. Version ${version.version} will answer every new request; requests in flight finish on the old one.`,
    ];
    if (lost.length) lines.push(`Version ${version.version} does not know ${plural(lost.length, "class", "classes")} the live version serves: ${lost.join(", ")}.`);
    const rollback = live !== null && version.version < live;
    const answer = await context.confirm({
      title: `${rollback ? "Roll back" : "Promote"} ${name} to version ${version.version}?`,
      lines,
      gate: rejected ? [`The forgetting gate rejected version ${version.version}:`, ...gateLines(gateOf(version))] : null,
      force: rejected,
      action: rejected ? "Promote by force" : rollback ? "Roll back" : "Promote",
    });
    if (!answer) return;
    const result = await post(modelPath(name, "versions", version.version, "promote"), rejected ? { force: true } : undefined);
    context.notice(`Version ${result.live_version} of ${name} serves now${result.forced ? " (promoted by force, audited)" : ""}.`);
    await context.refresh();
  }

  async function cancel(update) {
    const answer = await context.confirm({
      title: `Cancel update ${String(update.update_id).slice(0, 8)}?`,
      lines: [update.status === "running" ? "It stops at its next batch; nothing is committed." : "It is removed from the queue."],
      action: "Cancel the update",
    });
    if (!answer) return;
    await del(modelPath(name, "updates", update.update_id));
    context.notice(`Update ${String(update.update_id).slice(0, 8)}: cancellation requested.`);
    await context.refresh();
  }

  async function quarantineAction(kind) {
    const ids = [...selected];
    if (!ids.length) return;
    const release = kind === "release";
    const answer = await context.confirm({
      title: `${release ? "Release" : "Delete"} ${plural(ids.length, "quarantined sample")}?`,
      lines: [
        release
          ? "They return to the pending samples with the labels they were posted with, exempt from label screening; the update policy may start an update. The gate still judges it."
          : "They are deleted from the store, from future training and from every exemplar memory.",
      ],
      action: release ? "Release" : "Delete",
    });
    if (!answer) return;
    if (release) {
      const result = await post(modelPath(name, "quarantine", "release"), { ids });
      context.notice(`${plural(result.released.length, "sample")} released${result.update_id ? `; update ${String(result.update_id).slice(0, 8)} started` : ""}.`);
    } else {
      const result = await post(modelPath(name, "samples", "delete"), { ids });
      context.notice(`${plural(result.deleted, "sample")} deleted.`);
    }
    selected.clear();
    await context.refresh();
  }

  function renderSummary(model, metrics) {
    const waiting = Array.isArray(model.waiting_classes) ? model.waiting_classes : [];
    const pending = model.pending || {};
    fill(
      sections.summary,
      h("h1", {}, model.name),
      h(
        "dl",
        { class: "facts" },
        h("dt", {}, "live version"),
        h("dd", { id: "live-version" }, model.live_version ?? DASH),
        h("dt", {}, "state"),
        h("dd", {}, h("span", { class: ["badge", model.state === "serving" ? "good" : model.state === "updating" ? "busy" : "muted"] }, model.state ?? DASH)),
        h("dt", {}, "classes"),
        h("dd", {}, classList(model.classes)),
        h("dt", {}, "pending samples"),
        h("dd", {}, `${(pending.labeled ?? 0).toLocaleString()} labeled · ${(pending.unlabeled ?? 0).toLocaleString()} unlabeled · ${(pending.held_out ?? 0).toLocaleString()} held out`, waiting.length ? h("div", { class: "muted" }, `waiting: ${waiting.map((w) => `${w.label} (${w.samples}/${w.needed})`).join(", ")}`) : null),
        h("dt", {}, "method"),
        h("dd", {}, model.method ?? DASH, ` · ${model.architecture ?? ""} ${JSON.stringify(model.input_shape ?? [])}`),
        h("dt", {}, "live lineage"),
        h("dd", { id: "summary-figures" }, `held-out accuracy ${ratio(metrics.accuracy)} · ACC ${ratio(metrics.acc)} · BWT ${signed(metrics.bwt)} · forgetting ${ratio(metrics.forgetting)} · ${plural(metrics.held_out_samples ?? 0, "held-out sample")}`),
      ),
    );
  }

  function renderUpdates(updates) {
    fill(
      sections.updates,
      h("h2", {}, "Updates"),
      updates.length
        ? h(
            "table",
            { class: "updates" },
            h("thead", {}, h("tr", {}, ["update", "status", "method", "why", "version", "when", "result", ""].map((t) => h("th", { scope: "col" }, t)))),
            h("tbody", {}, updates.map((u) => updateRow(u, (x) => context.act(() => cancel(x))))),
          )
        : h("p", { class: "muted" }, "No updates yet."),
    );
  }

  function renderLearned(versions, metrics, drops) {
    for (const chart of charts.splice(0)) chart.destroy();
    const scored = versions.filter((v) => Object.keys(perClass(v)).length || typeof (v.metrics || {}).acc === "number");
    const x = scored.map((v) => v.version);
    const labels = [...new Set(scored.flatMap((v) => Object.keys(perClass(v))))].sort(naturalCompare);
    const classSeries = labels.map((label, i) => ({
      label,
      color: color(i),
      values: scored.map((v) => (typeof perClass(v)[label] === "number" ? perClass(v)[label] : null)),
      alert: drops.filter((d) => d.label === label).map((d) => x.indexOf(d.version)).filter((i) => i >= 0),
    }));
    const lineage = ["acc", "bwt", "forgetting"].map((key, i) => ({
      label: key === "acc" ? "ACC" : key === "bwt" ? "BWT" : "forgetting",
      color: color(i),
      values: scored.map((v) => (v.metrics && typeof v.metrics[key] === "number" ? v.metrics[key] : null)),
    }));
    const perClassChart = h("div", { class: "chart", id: "chart-per-class" });
    const lineageChart = h("div", { class: "chart", id: "chart-lineage" });
    fill(
      sections.learned,
      h("h2", {}, "What it learned and forgot"),
      h("h3", {}, "Held-out accuracy per class, version by version"),
      h("p", { class: "muted" }, "Every version's accuracy on the held-out samples it was scored on. A thick line with red points: a class whose accuracy fell by more than the gate's per-class limit (CL_MAX_CLASS_DROP) when that version went live."),
      perClassChart,
      drops.length
        ? h(
            "ul",
            { class: "drops", id: "drops" },
            drops.map((d) =>
              h("li", { dataset: { version: d.version, class: d.label } }, h("span", { class: "alert" }, "▼ "), `class ${d.label} fell ${ratio(d.before)} → ${ratio(d.after)} (${signed(d.after - d.before)}, limit ${ratio(d.limit, 2)}) when v${d.version} replaced v${d.previous}`, d.by ? ` (promoted by ${d.by})` : ""),
            ),
          )
        : h("p", { class: "muted", id: "drops" }, "No class fell when a version went live."),
      h("h3", {}, "ACC, BWT and forgetting over versions"),
      h("p", { class: "muted" }, "Each version's figures along its own lineage (the accuracy matrix below is the live one's)."),
      lineageChart,
      h("h3", {}, "Accuracy matrix of the live lineage"),
      h("p", { class: "muted" }, `Rows: versions; columns: the held-out data each update brought. ACC ${ratio(metrics.acc)} · BWT ${signed(metrics.bwt)} · forgetting ${ratio(metrics.forgetting)}`),
      heatmap(metrics.matrix),
    );
    charts.push(versionChart(perClassChart, { x, series: classSeries, yLabel: "accuracy", range: [0, 1] }));
    charts.push(versionChart(lineageChart, { x, series: lineage, yLabel: "ratio" }));
  }

  function renderVersions(versions, live, drops, complete) {
    const newest = [...versions].sort((a, b) => b.version - a.version);
    fill(
      sections.versions,
      h("h2", {}, "Versions"),
      complete ? null : h("p", { class: "muted" }, `Showing the newest pages of versions only.`),
      h(
        "table",
        { class: "versions" },
        h(
          "thead",
          {},
          h("tr", {}, ["version", "created", "method and hyper-parameters", "samples", "held-out accuracy", "gate", "promoted by", ""].map((t) => h("th", { scope: "col" }, t))),
        ),
        h(
          "tbody",
          {},
          newest.map((v) => {
            const isLive = v.version === live;
            const rollback = live !== null && live !== undefined && v.version < live;
            return h(
              "tr",
              { dataset: { version: v.version, status: isLive ? "live" : v.status }, class: isLive ? "live" : null },
              h("th", { scope: "row" }, `v${v.version}`, " ", versionBadges(v, live), h("div", { class: "muted" }, v.parent === null || v.parent === undefined ? "root" : `from v${v.parent}`)),
              h("td", {}, when(v.created_at), v.triggered_by ? h("div", { class: "muted" }, v.triggered_by) : null),
              h("td", {}, methodCell(v)),
              h("td", {}, samplesCell(v)),
              h("td", {}, accuracyCell(v, drops)),
              h("td", {}, gateCell(v)),
              h("td", {}, promotedCell(v)),
              h(
                "td",
                {},
                isLive
                  ? h("span", { class: "muted" }, "serving")
                  : h("button", { type: "button", class: v.status === "rejected" ? "danger" : null, dataset: { action: "promote", version: v.version }, on: { click: () => context.act(() => promote(v)) } }, rollback ? "Roll back" : "Promote"),
              ),
            );
          }),
        ),
      ),
    );
  }

  function renderQuarantine(count, listed) {
    const title = h("h2", {}, "Quarantined samples");
    if (listed instanceof ApiError) {
      fill(sections.quarantine, title, h("p", { class: "denied" }, `${plural(count, "sample")} in quarantine; this key may not list them (${listed.status}: ${listed.detail}).`));
      return;
    }
    if (!listed.length) {
      fill(sections.quarantine, title, h("p", { class: "muted", id: "quarantine-empty" }, "No quarantined samples."));
      return;
    }
    const known = new Set(listed.map((s) => s.id));
    for (const id of [...selected]) if (!known.has(id)) selected.delete(id);
    const pairs = new Map();
    for (const s of listed) {
      const key = `${s.label ?? "unlabeled"} → ${s.predicted}`;
      pairs.set(key, (pairs.get(key) || 0) + 1);
    }
    const [shownSamples, left] = cut(listed, SHOWN_QUARANTINE);
    const boxes = [];
    const counter = h("span", { class: "muted", id: "quarantine-selected" });
    const buttons = [
      h("button", { type: "button", dataset: { action: "release" }, on: { click: () => context.act(() => quarantineAction("release")) } }, "Release selected"),
      h("button", { type: "button", class: "danger", dataset: { action: "delete" }, on: { click: () => context.act(() => quarantineAction("delete")) } }, "Delete selected"),
    ];
    const update = () => {
      counter.textContent = `${plural(selected.size, "sample")} selected`;
      for (const button of buttons) button.disabled = selected.size === 0;
      all.checked = selected.size === listed.length;
      for (const box of boxes) box.checked = selected.has(box.value);
    };
    const all = h("input", {
      type: "checkbox",
      id: "quarantine-all",
      on: {
        change: () => {
          if (all.checked) for (const s of listed) selected.add(s.id);
          else selected.clear();
          update();
        },
      },
    });
    const rows = shownSamples.map((s) => {
      const box = h("input", {
        type: "checkbox",
        value: s.id,
        "aria-label": `sample ${s.id}`,
        on: {
          change: () => {
            if (box.checked) selected.add(s.id);
            else selected.delete(s.id);
            update();
          },
        },
      });
      boxes.push(box);
      return h(
        "tr",
        { dataset: { sample: s.id } },
        h("td", {}, box),
        h("td", {}, h("code", {}, s.id)),
        h("td", {}, s.label ?? "unlabeled"),
        h("td", {}, s.predicted ?? DASH),
        h("td", {}, s.held_out ? "yes" : "no"),
        h("td", { title: s.update_id ?? "" }, s.update_id ? String(s.update_id).slice(0, 8) : DASH),
        h("td", {}, s.reason ?? DASH),
        h("td", {}, when(s.at)),
      );
    });
    const table = h(
      "table",
      { class: "quarantine" },
      h("thead", {}, h("tr", {}, ["", "sample", "posted as", "looks like", "held out", "update", "reason", "when"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows),
    );
    fill(
      sections.quarantine,
      title,
      h("p", {}, `Label screening set ${plural(listed.length, "sample")} aside: posted with one label, they look like another class. `, "Release them (admin key) when the relabelling is meant, or delete them (train key)."),
      h("ul", { class: "pairs" }, [...pairs].map(([pair, n]) => h("li", {}, `posted as ${pair}: ${n}`))),
      h("div", { class: "toolbar" }, h("label", {}, all, ` select all ${listed.length.toLocaleString()}`), " ", buttons, " ", counter),
      h("div", { class: "scroll" }, table),
      left ? h("p", { class: "muted" }, `… and ${left.toLocaleString()} more (select all includes them).`) : null,
    );
    update();
  }

  /** Input drift of the captured traffic (GET …/drift): the monitor's state and the latest tested windows. */
  function renderDrift(report) {
    const title = h("h2", {}, "Input drift");
    const capture = report.capture ? `capture ${report.capture.rate} of predictions, at most ${report.capture.max_samples.toLocaleString()} kept` : "capture off";
    const windows = (report.windows || []).slice(0, SHOWN_DRIFT_WINDOWS);
    const rows = windows.map((w) =>
      h(
        "tr",
        { class: w.detected ? "detected" : null, dataset: { detected: w.detected } },
        h("td", {}, when(w.at)),
        h("td", { class: "num" }, `v${w.version}`),
        h("td", { class: "num" }, String(w.inputs)),
        h("td", { class: "num" }, ratio(w.score, 2)),
        h("td", { class: "num" }, ratio(w.mmd_p_value, 3)),
        h("td", { class: "num" }, ratio(w.class_p_value, 3)),
        h("td", {}, w.detected ? "drift" : "no drift"),
      ),
    );
    fill(
      sections.drift,
      title,
      h("p", { id: "drift-status", dataset: { status: report.status } }, `${report.status}: ${report.detail}`),
      h("p", { class: "muted" }, `${capture} · windows of ${report.window} inputs (${report.window_inputs} in the current one) · false-positive rate ${report.alpha} per window · reference: ${report.reference_samples.toLocaleString()} held-out inputs`),
      rows.length
        ? h("div", { class: "scroll" }, h("table", { class: "drift" }, h("thead", {}, h("tr", {}, ["tested", "version", "inputs", "score", "features p", "class mix p", "verdict"].map((t) => h("th", { scope: "col" }, t)))), h("tbody", {}, rows)))
        : null,
    );
  }

  async function refresh() {
    const [model, versionPages, metrics, updates, drift] = await Promise.all([
      get(modelPath(name)),
      collect(modelPath(name, "versions"), "versions"),
      get(modelPath(name, "metrics")),
      firstPage(modelPath(name, "updates"), "updates", RECENT_UPDATES),
      get(modelPath(name, "drift")),
    ]);
    let listed = [];
    if (model.quarantined > 0) {
      try {
        const answer = await get(modelPath(name, "quarantine"));
        listed = answer && Array.isArray(answer.samples) ? answer.samples : [];
      } catch (error) {
        if (!(error instanceof ApiError) || (error.status !== 403 && error.status !== 401)) throw error;
        listed = error;
      }
    }
    const versions = [...versionPages.items].sort((a, b) => a.version - b.version);
    const recent = [...updates].sort((a, b) => (b.created_at ?? 0) - (a.created_at ?? 0)).slice(0, RECENT_UPDATES);
    const drops = dropsAtPromotions(versions);
    state = { model, versions, quarantine: listed };
    draw("summary", [model, metrics.accuracy, metrics.acc, metrics.bwt, metrics.forgetting, metrics.held_out_samples], () => renderSummary(model, metrics));
    draw("updates", recent, () => renderUpdates(recent));
    draw("learned", [versions.map((v) => [v.version, v.metrics, v.promotions]), metrics], () => renderLearned(versions, metrics, drops));
    draw("versions", [versions, model.live_version, versionPages.complete], () => renderVersions(versions, model.live_version, drops, versionPages.complete));
    draw("quarantine", [model.quarantined, listed instanceof ApiError ? listed.message : listed], () => renderQuarantine(model.quarantined, listed));
    draw("drift", drift, () => renderDrift(drift));
    return model.state === "updating" || recent.some((u) => ACTIVE.has(u.status));
  }

  return {
    refresh,
    title: name,
    destroy() {
      for (const chart of charts.splice(0)) chart.destroy();
    },
  };
}
