"""The soak's plot: each figure against versions made (or the backlog), one line per store."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, never a window

import matplotlib.pyplot as plt

from clbench.soak import READS, SoakReport

STYLES = {"local": ("#4C72B0", "-"), "redis": ("#C44E52", "--")}


def soak_plot(report: SoakReport, path: Path) -> Path:
    """Six panels: store size, update time, POST /updates, read latencies, response sizes, post cost."""
    fig, axes = plt.subplots(2, 3, figsize=(15, 8), layout="constrained")
    (size, update, create), (reads, sizes, posts) = axes
    for soak in report.stores:
        color, line = STYLES.get(soak.store, ("black", "-"))
        xs = [p.versions for p in soak.updates]
        size.plot(xs, [p.store_bytes / 1e6 for p in soak.updates], line, color=color, label=soak.store)
        update.plot(xs, [p.update_s for p in soak.updates], line, color=color, label=soak.store, lw=0.8)
        create.plot(xs, [p.create_ms for p in soak.updates], line, color=color, label=soak.store, lw=0.8)
        for k, endpoint in enumerate(READS):
            points = [p for p in soak.reads if p.endpoint == endpoint]
            marker = "os^D"[k]
            rx = [p.versions for p in points]
            reads.plot(
                rx, [p.p50_ms for p in points], line, marker=marker, ms=3, color=color, label=f"{soak.store} {endpoint}"
            )
            sizes.plot(
                rx,
                [p.response_bytes / 1e3 for p in points],
                line,
                marker=marker,
                ms=3,
                color=color,
                label=f"{soak.store} {endpoint}",
            )
        posts.plot(
            [p.backlog for p in soak.posts],
            [p.p50_ms for p in soak.posts],
            line,
            marker="o",
            ms=3,
            color=color,
            label=soak.store,
        )
    titles = [
        (size, "store size (MB; Redis: used memory)", "versions made"),
        (update, "update duration (s)", "versions made"),
        (create, "POST /updates (ms)", "versions made"),
        (reads, "read endpoints, p50 (ms)", "versions made"),
        (sizes, "read endpoints, response (KB)", "versions made"),
        (posts, "one-sample post, p50 (ms)", "batches waiting"),
    ]
    for ax, title, xlabel in titles:
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle("clbench soak: figures as history grows", fontsize=12)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
