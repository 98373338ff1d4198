"""PNG plots a person reads at a glance (matplotlib, Agg backend: no display needed).

* ``heatmap_<scenario>.png``: the accuracy matrix a[t][j] per method (mean over seeds), one panel per method;
* ``tasks_<scenario>.png``: each task's accuracy over the sequence, one panel per method;
* ``acc.png``: final ACC per method with ± std error bars, one panel per scenario, published figures as markers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, never a window

import matplotlib.pyplot as plt
from matplotlib.artist import Artist
from matplotlib.figure import Figure

from clbench.published import SOURCES, figure
from clbench.summary import Aggregate

MARKERS = ("D", "X", "^", "s")


def _grid(count: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(count, max_cols)
    return math.ceil(count / cols), cols


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def heatmaps(aggs: Sequence[Aggregate], scenario: str, path: Path) -> Path:
    """One panel per method: rows = after training task t, columns = accuracy on task j (percent, annotated)."""
    rows, cols = _grid(len(aggs))
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.2 * cols + 1, 3.3 * rows + 0.4), squeeze=False, layout="constrained"
    )
    image = None
    for ax, agg in zip(axes.flat, aggs, strict=False):
        matrix = agg.mean_matrix()
        tasks = agg.tasks
        image = ax.imshow([[100 * v for v in row] for row in matrix], vmin=0, vmax=100, cmap="viridis")
        for t, row in enumerate(matrix):
            for j, value in enumerate(row):
                ax.text(
                    j,
                    t,
                    f"{100 * value:.0f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if value < 0.6 else "black",
                )
        ax.set_title(f"{agg.method}  (ACC {100 * (agg.mean('acc') or 0):.1f} %)", fontsize=9)
        ax.set_xticks(range(tasks), [str(j + 1) for j in range(tasks)])
        ax.set_xlabel("tested on task j", fontsize=8)
        if len(matrix) == 1:  # joint: one row, after training on everything at once
            ax.set_yticks([0], ["all"])
            ax.set_ylabel("trained on", fontsize=8)
        else:
            ax.set_yticks(range(len(matrix)), [str(t + 1) for t in range(len(matrix))])
            ax.set_ylabel("after training task t", fontsize=8)
    for ax in list(axes.flat)[len(aggs) :]:
        ax.axis("off")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.7, label="accuracy %")
    seeds = max(len(a.records) for a in aggs)
    fig.suptitle(f"{scenario}: accuracy matrix a[t][j] (mean of {seeds} seed{'s' * (seeds > 1)})", fontsize=11)
    return _save(fig, path)


def task_curves(aggs: Sequence[Aggregate], scenario: str, path: Path) -> Path:
    """One panel per method: each task's test accuracy after every later training task (mean over seeds)."""
    rows, cols = _grid(len(aggs))
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.8 * rows), squeeze=False, sharey=True)
    colours = plt.get_cmap("tab10")
    for ax, agg in zip(axes.flat, aggs, strict=False):
        matrix = agg.mean_matrix()
        tasks = agg.tasks
        if len(matrix) == 1:  # joint trains once: its per-task accuracy is a single point each
            for j, value in enumerate(matrix[0]):
                ax.plot([tasks], [100 * value], "o", color=colours(j), label=f"task {j + 1}")
        else:
            for j in range(tasks):
                xs = list(range(j + 1, len(matrix) + 1))
                ax.plot(
                    xs,
                    [100 * matrix[t][j] for t in range(j, len(matrix))],
                    "-o",
                    ms=3,
                    color=colours(j),
                    label=f"task {j + 1}",
                )
        ax.set_title(agg.method + (" (trained once on all tasks)" if len(matrix) == 1 else ""), fontsize=9)
        ax.set_xticks(range(1, tasks + 1))
        ax.set_xlim(0.7, tasks + 0.3)
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
        ax.set_xlabel("after training task", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("test accuracy %", fontsize=8)
    for ax in list(axes.flat)[len(aggs) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(f"{scenario}: each task's accuracy over the sequence", fontsize=11)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    return _save(fig, path)


def acc_bars(groups: dict[str, list[Aggregate]], path: Path) -> Path:
    """One panel per scenario: final ACC per method (± std over seeds), published figures as markers."""
    scenarios = list(groups)
    rows, cols = _grid(len(scenarios), max_cols=2)
    widest = max(len(v) for v in groups.values())
    fig, axes = plt.subplots(rows, cols, figsize=(max(5.5, 0.75 * widest + 1.5) * cols, 3.6 * rows), squeeze=False)
    for ax, scenario in zip(axes.flat, scenarios, strict=False):
        aggs = groups[scenario]
        xs = range(len(aggs))
        means = [100 * (a.mean("acc") or 0) for a in aggs]
        errors = [100 * (a.std("acc") or 0) for a in aggs]
        bars = ax.bar(xs, means, yerr=errors, capsize=3, color="#4C72B0", alpha=0.85, label="ours (MNIST-5k)")
        for rect, mean in zip(bars, means, strict=True):
            ax.text(
                rect.get_x() + rect.get_width() / 2,
                2,
                f"{mean:.1f}",
                ha="center",
                va="bottom",
                fontsize=7,
                color="white",
            )
        for k, source in enumerate(SOURCES):
            points = [(i, figure(source, scenario, a.method)) for i, a in enumerate(aggs)]
            offset = 0.18 * (k - (len(SOURCES) - 1) / 2)  # side by side when both sources report a figure
            shown = [(i + offset, f.value) for i, f in points if f is not None]
            if shown:
                ax.plot(
                    *zip(*shown, strict=True),
                    MARKERS[k],
                    color="black" if k == 0 else "#C44E52",
                    ms=6,
                    linestyle="none",
                    label=source.column,
                )
        ax.set_xticks(list(xs), [a.method for a in aggs], rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 105)
        ax.set_ylabel("final ACC %", fontsize=8)
        ax.set_title(scenario, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(scenarios) :]:
        ax.axis("off")
    handles: dict[str, Artist] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.legend(
        list(handles.values()),
        list(handles),
        loc="lower center",
        ncol=len(handles),
        fontsize=8,
        bbox_to_anchor=(0.5, -0.03),
    )
    fig.suptitle("Final average accuracy per method (error bars: std over seeds)", fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 0.96))
    return _save(fig, path)


def write_plots(groups: dict[tuple[str, str], Aggregate], out: Path) -> list[Path]:
    """Every plot for the runs in ``groups`` into ``out``; returns the files written."""
    by_scenario: dict[str, list[Aggregate]] = {}
    for (scenario, _), agg in groups.items():
        by_scenario.setdefault(scenario, []).append(agg)
    paths = []
    for scenario, aggs in by_scenario.items():
        paths.append(heatmaps(aggs, scenario, out / f"heatmap_{scenario}.png"))
        paths.append(task_curves(aggs, scenario, out / f"tasks_{scenario}.png"))
    paths.append(acc_bars(by_scenario, out / "acc.png"))
    return paths
