// Building the page: elements from data through textContent only (labels, ids and error messages come from the
// API and are never parsed as HTML), and the few number formats the console uses.

/** An element: h("td", {class: "num", dataset: {version: 2}, on: {click}}, "text", child, [more]). */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") el.className = Array.isArray(value) ? value.filter(Boolean).join(" ") : value;
    else if (name === "dataset") for (const [k, v] of Object.entries(value)) el.dataset[k] = String(v);
    else if (name === "on") for (const [event, handler] of Object.entries(value)) el.addEventListener(event, handler);
    else if (name === "text") el.textContent = String(value);
    else if (name in el && typeof value !== "string") el[name] = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export const DASH = "—";

/** A ratio with three decimals ("—" when unknown). */
export function ratio(value, digits = 3) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : DASH;
}

/** A signed ratio ("+0.012", "−0.300"). */
export function signed(value, digits = 3) {
  if (typeof value !== "number" || !Number.isFinite(value)) return DASH;
  const text = Math.abs(value).toFixed(digits);
  return value < 0 ? `−${text}` : `+${text}`;
}

export function percent(value) {
  return typeof value === "number" && Number.isFinite(value) ? `${Math.round(value * 100)} %` : DASH;
}

/** A Unix time in seconds as local date and time. */
export function when(seconds) {
  if (typeof seconds !== "number" || !Number.isFinite(seconds)) return DASH;
  return new Date(seconds * 1000).toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}

export function plural(count, one, many = `${one}s`) {
  return `${count.toLocaleString()} ${count === 1 ? one : many}`;
}

/** Natural order of class names (2 before 10), as the API lists them. */
export function naturalCompare(a, b) {
  return String(a).localeCompare(String(b), undefined, { numeric: true });
}

/** A list cut to `limit` items, with how many were left out. */
export function cut(items, limit) {
  return items.length <= limit ? [items, 0] : [items.slice(0, limit), items.length - limit];
}
