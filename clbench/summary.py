"""From run records to the tables a person reads: accuracy per scenario beside the published figures, and cost.

The same rows feed the console (rich tables) and ``summary.md`` (Markdown), so the numbers in the README, copied
from either, are the numbers the suite printed.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from clbench.published import SOURCES, figure, published_only_rows

Row = list[str]


@dataclass
class Aggregate:
    """All seeds of one (scenario, method)."""

    scenario: str
    method: str
    records: list[dict[str, Any]] = field(default_factory=list)

    def values(self, key: str) -> list[float]:
        return [float(r[key]) for r in self.records if r[key] is not None]

    def mean(self, key: str) -> float | None:
        values = self.values(key)
        return statistics.fmean(values) if values else None

    def std(self, key: str) -> float | None:
        values = self.values(key)
        return statistics.stdev(values) if len(values) > 1 else None

    @property
    def tasks(self) -> int:
        return len(self.records[0]["acc_matrix"][0])

    def mean_matrix(self) -> list[list[float]]:
        """The accuracy matrix averaged over seeds."""
        matrices = [r["acc_matrix"] for r in self.records]
        return [
            [statistics.fmean(m[t][j] for m in matrices) for j in range(len(matrices[0][t]))]
            for t in range(len(matrices[0]))
        ]


def aggregate(records: Iterable[dict[str, Any]]) -> dict[tuple[str, str], Aggregate]:
    """Group records by (scenario, method), in the order they first appear."""
    groups: dict[tuple[str, str], Aggregate] = {}
    for record in records:
        key = (record["scenario"], record["method"])
        groups.setdefault(key, Aggregate(*key)).records.append(record)
    return groups


def pct(mean: float | None, std: float | None = None, digits: int = 1) -> str:
    """Fractions as percent (or percentage points), with ± std when there is one."""
    if mean is None:
        return "—"
    text = f"{100 * mean:.{digits}f}"
    return text if std is None else f"{text} ± {100 * std:.{digits}f}"


# the tuned knobs (`clbench.tune.grid_for`)
STRENGTH_SYMBOLS = {
    "lam": "λ",
    "gamma": "γ",
    "ssl_lam": "λ_SSL",
    "temperature": "T",
    "c": "c",
    "xi": "ξ",
    "alpha": "α",
    "beta": "β",
}


def strength_text(record: dict[str, Any]) -> str:
    """The penalty's settings and where they came from, e.g. ``λ=1e+06, γ=0.9 (tuned)`` (γ shown when not 1)."""
    hparams = record["hparams"]
    source = hparams.get("lambda_source", "none")
    if source == "none":
        return "—"
    method = hparams.get("method") or {}
    parts = [
        f"{symbol}={method[key]:g}"
        for key, symbol in STRENGTH_SYMBOLS.items()
        if key in method and not (key == "gamma" and method[key] == 1.0)
    ]
    return f"{', '.join(parts)} ({source})"


def scenario_columns() -> list[str]:
    return [
        "method",
        "strength",
        "ACC % (ours, mean ± std)",
        "BWT pp",
        "forgetting pp",
        *(f"ACC % {s.column}" for s in SOURCES),
    ]


def scenario_rows(groups: dict[tuple[str, str], Aggregate], scenario: str) -> list[Row]:
    """Our methods on ``scenario``, then the rows only a published table has (our cells empty)."""
    ours = [agg for (s, _), agg in groups.items() if s == scenario]
    rows: list[Row] = []
    for agg in ours:
        published = [figure(source, scenario, agg.method) for source in SOURCES]
        rows.append(
            [
                f"{agg.method} ({len(agg.records)} seeds)",
                strength_text(agg.records[0]),
                pct(agg.mean("acc"), agg.std("acc")),
                pct(agg.mean("bwt"), agg.std("bwt")),
                pct(agg.mean("forgetting")),
                *("" if f is None else f.text() for f in published),
            ]
        )
    for row in published_only_rows(scenario, [agg.method for agg in ours]):
        published = [figure(source, scenario, row) for source in SOURCES]
        rows.append([f"{row} [published only]", "", "", "", "", *("" if f is None else f.text() for f in published)])
    return rows


COST_COLUMNS = [
    "method",
    "runs",
    "wall s per run",
    "importance s per update, split (≈800 samples)",
    "importance s per update, permuted (4,000 samples)",
    "importance share of the run",
]


def _per_update(aggs: Sequence[Aggregate]) -> float | None:
    values = [r["importance_s"] / len(r["acc_matrix"]) for agg in aggs for r in agg.records]
    return statistics.fmean(values) if values else None


def cost_rows(groups: dict[tuple[str, str], Aggregate]) -> list[Row]:
    """Per method, over every scenario and seed of the invocation: where the time goes."""
    methods: dict[str, list[Aggregate]] = {}
    for (_, method), agg in groups.items():
        methods.setdefault(method, []).append(agg)
    rows: list[Row] = []
    for method, aggs in methods.items():
        records = [r for agg in aggs for r in agg.records]
        wall = sum(r["wall_s"] for r in records)
        importance = sum(r["importance_s"] for r in records)
        split = _per_update([a for a in aggs if a.scenario.startswith("split")])
        permuted = _per_update([a for a in aggs if a.scenario == "permuted"])
        rows.append(
            [
                method,
                str(len(records)),
                f"{wall / len(records):.1f}",
                "—" if split is None else f"{split:.3f}",
                "—" if permuted is None else f"{permuted:.3f}",
                f"{100 * importance / wall:.1f} %" if wall > 0 else "—",
            ]
        )
    return rows


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(cell(c) for c in columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def summary_markdown(
    groups: dict[tuple[str, str], Aggregate],
    *,
    protocol: int,
    command: str,
    facts: Sequence[str],
    step_table: tuple[Sequence[str], Sequence[Sequence[str]]] | None,
    plots: Sequence[str],
) -> str:
    """``summary.md``: one accuracy table per scenario beside the published figures, then the cost tables."""
    lines = [f"# clbench run: benchmark protocol v{protocol} (MNIST-5k)", "", "```", command, "```", ""]
    lines += [f"- {fact}" for fact in facts]
    lines += [
        "- ACC: final average accuracy over all tasks; BWT: backward transfer; forgetting: mean drop from each "
        "earlier task's best accuracy (percentage points). Strength: the method's tuned settings (λ; online EWC's "
        "γ, SLNID's λ_SSL, LwF's T, SI's c and ξ, DER++'s α and β) and their origin.",
        "",
    ]
    for scenario in dict.fromkeys(s for s, _ in groups):
        lines += [f"## {scenario}", "", markdown_table(scenario_columns(), scenario_rows(groups, scenario)), ""]
    lines += ["## Published figures: sources and settings", ""]
    for source in SOURCES:
        lines += [f"- **{source.column}**: {source.citation}. Setting: {source.setting}."]
    lines += [
        "- Empty published cells: the source reports no such figure, or its text could not be retrieved.",
        "",
        "## Cost per method (this machine)",
        "",
        markdown_table(COST_COLUMNS, cost_rows(groups)),
        "",
    ]
    if step_table is not None:
        lines += ["### Training-step overhead vs fine-tune", "", markdown_table(*step_table), ""]
    if plots:
        lines += ["## Plots", "", *(f"- [{name}]({name})" for name in plots), ""]
    return "\n".join(lines)
