// What the forgetting gate found about a version, from the figures stored in its metrics (`metrics.gate`): the
// average rule (trusted held-out accuracy of the parent's classes, parent → candidate), the per-class rule (each
// failing class with its drop and the 95 % lower bound of that drop) and the classes too small to judge.

import { DASH, h, ratio } from "./dom.js";

/** The gate's record of a version, or null when none was stored. */
export function gateOf(version) {
  const gate = version && version.metrics ? version.metrics.gate : null;
  return gate && typeof gate === "object" ? gate : null;
}

/** "passed", "failed" or "none". */
export function verdict(gate) {
  if (!gate) return "none";
  return gate.passed === false ? "failed" : "passed";
}

/** The figures as lines of text (the confirmation of a forced promotion shows all of them). */
export function gateLines(gate) {
  if (!gate) return ["no gate figures were recorded for this version"];
  const lines = [];
  if (gate.drop === null || gate.drop === undefined) {
    lines.push("no trusted held-out samples of earlier classes to compare");
  } else {
    const rule = gate.drop > gate.max_forgetting ? "over" : "within";
    lines.push(
      `average: trusted held-out accuracy of the earlier classes ${ratio(gate.parent_accuracy)} (version ` +
        `${gate.parent_version ?? DASH}) → ${ratio(gate.candidate_accuracy)}, a drop of ${ratio(gate.drop)}, ` +
        `${rule} the allowed ${ratio(gate.max_forgetting)} (${gate.samples ?? DASH} samples)`,
    );
  }
  const classes = Array.isArray(gate.classes) ? gate.classes : [];
  for (const check of classes.filter((c) => c && c.verdict === "failed")) {
    lines.push(
      `class ${check.label}: ${ratio(check.parent_accuracy)} → ${ratio(check.candidate_accuracy)}, a drop of ` +
        `${ratio(check.drop)}, at least ${ratio(check.drop_lower_bound)} with 95 % confidence (allowed ` +
        `${ratio(gate.max_class_drop)}, ${check.samples} samples)`,
    );
  }
  const unjudged = Array.isArray(gate.unjudged_classes) ? gate.unjudged_classes : [];
  if (unjudged.length) {
    lines.push(`unjudged (fewer than ${gate.min_class_samples ?? DASH} trusted samples): ${unjudged.join(", ")}`);
  }
  const claim = gate.claim && gate.claim.new_classes;
  if (claim && typeof claim.accuracy === "number") {
    lines.push(`the update's new classes: ${ratio(claim.accuracy)} on its own ${claim.samples} held-out samples`);
  }
  return lines;
}

/** A compact cell for the versions table: verdict, the average figures, the failing classes. */
export function gateCell(version) {
  const gate = gateOf(version);
  const result = verdict(gate);
  if (result === "none") return h("span", { class: "muted" }, DASH);
  const failed = (Array.isArray(gate.classes) ? gate.classes : []).filter((c) => c && c.verdict === "failed");
  const average =
    gate.drop === null || gate.drop === undefined
      ? "nothing earlier to compare"
      : `${ratio(gate.parent_accuracy)} → ${ratio(gate.candidate_accuracy)} (drop ${ratio(gate.drop)} / ` +
        `${ratio(gate.max_forgetting)}, n=${gate.samples})`;
  return h(
    "div",
    { class: "gate", dataset: { verdict: result } },
    h("span", { class: ["badge", result === "failed" ? "bad" : "good"] }, result),
    " ",
    average,
    failed.length
      ? h(
          "ul",
          { class: "failed-classes" },
          failed.map((c) =>
            h("li", {}, `class ${c.label}: ${ratio(c.parent_accuracy)} → ${ratio(c.candidate_accuracy)} (≥ ${ratio(c.drop_lower_bound)})`),
          ),
        )
      : null,
  );
}
