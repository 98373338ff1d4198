// Charts: lines by version drawn by uPlot (the one vendored library: static/vendor/uplot), and the accuracy matrix
// as a heatmap table (colour classes from the stylesheet: no inline style).
//
// Each chart keeps the exact data it was given on its container (`data-chart`, JSON: {x, series: {label: values}}),
// so a test, or an operator in the browser's inspector, can compare what is drawn with the API's figures.

import uPlot from "./vendor/uplot/uPlot.esm.js";
import { DASH, fill, h, ratio } from "./dom.js";

const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79"];
export const ALERT = "#d62728";
const HEIGHT = 260;

/** A distinct colour per series (red is kept for what must stand out). */
export function color(index) {
  return index < COLORS.length ? COLORS[index] : `hsl(${Math.round((index * 137.508) % 360)}, 55%, 42%)`;
}

const versionTicks = (u, splits) => splits.map((v) => (Number.isInteger(v) ? `v${v}` : ""));

/**
 * Lines of values by version.  `series`: [{label, values, color, alert: [indices]}]; a series with alert indices is
 * drawn thick with large red points there (a class that dropped when a version went live).  Returns an object with
 * destroy(); the container is emptied first.
 */
export function versionChart(container, { x, series, yLabel, range = null }) {
  container.dataset.chart = JSON.stringify({ x, series: Object.fromEntries(series.map((s) => [s.label, s.values])) });
  if (!x.length) {
    fill(container, h("p", { class: "muted" }, "No version has figures yet."));
    return { destroy() {} };
  }
  fill(container);
  const width = () => Math.max(320, Math.floor(container.clientWidth || 640));
  const options = {
    width: width(),
    height: HEIGHT,
    scales: {
      x: { time: false, range: (u, min, max) => [min - 0.5, max + 0.5] },
      y: range ? { range: () => range } : { auto: true },
    },
    axes: [
      { label: "version", values: versionTicks, incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 10000] },
      { label: yLabel, values: (u, splits) => splits.map((v) => v.toFixed(2)), size: 56 },
    ],
    series: [
      { label: "version", value: (u, v) => (v === null || v === undefined ? DASH : `v${v}`) },
      ...series.map((s) => {
        const alert = Array.isArray(s.alert) ? s.alert : [];
        return {
          label: s.label,
          stroke: s.color,
          width: alert.length ? 3.5 : 1.5,
          spanGaps: true,
          value: (u, v) => ratio(v),
          points: alert.length
            ? { show: true, size: 11, width: 2, stroke: ALERT, fill: ALERT, filter: () => alert }
            : { show: true, size: 5 },
        };
      }),
    ],
    cursor: { drag: { x: false, y: false } },
    legend: { live: true },
  };
  const plot = new uPlot(options, [x, ...series.map((s) => s.values)], container);
  const observer = new ResizeObserver(() => {
    if (plot.width !== width()) plot.setSize({ width: width(), height: HEIGHT });
  });
  observer.observe(container);
  return {
    destroy() {
      observer.disconnect();
      plot.destroy();
    },
  };
}

function heatClass(value) {
  return `heat-${Math.max(0, Math.min(10, Math.round(value * 10)))}`;
}

/** The accuracy matrix (rows: versions along the live lineage; columns: the data each update brought) as a table. */
export function heatmap(matrix) {
  const rows = Array.isArray(matrix && matrix.rows) ? matrix.rows : [];
  const columns = Array.isArray(matrix && matrix.columns) ? matrix.columns : [];
  const values = Array.isArray(matrix && matrix.values) ? matrix.values : [];
  if (!rows.length || !columns.length) return h("p", { class: "muted" }, "No accuracy matrix yet: no update has held-out data.");
  const name = (v) => (v === null || v === undefined ? "candidate" : `v${v}`);
  return h(
    "table",
    { class: "heatmap", dataset: { matrix: JSON.stringify({ rows, columns, values }) } },
    h(
      "thead",
      {},
      h("tr", {}, h("th", { scope: "col" }, "version ╲ data of"), columns.map((c) => h("th", { scope: "col" }, name(c)))),
    ),
    h(
      "tbody",
      {},
      rows.map((r, i) =>
        h(
          "tr",
          {},
          h("th", { scope: "row" }, name(r)),
          columns.map((c, j) => {
            const value = Array.isArray(values[i]) ? values[i][j] : undefined;
            if (typeof value !== "number") return h("td", { class: "heat-empty" }, "");
            return h("td", { class: ["heat", heatClass(value)], dataset: { value }, title: `${name(r)} on the data of ${name(c)}` }, ratio(value));
          }),
        ),
      ),
    ),
  );
}
