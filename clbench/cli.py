"""The ``clbench`` command: every benchmark as a subcommand."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import typer

from clbench import report

app = typer.Typer(help="Benchmarks of the continual-learning core and service.", no_args_is_help=True)


@app.callback()
def main() -> None:
    """Benchmarks report numbers measured in one run; compare ratios, not absolute times, across machines."""


@app.command()
def speed(
    samples: int = typer.Option(1000, help="samples for importance estimation"),
    repeats: int = typer.Option(5, help="repeats of the fast path (median reported)"),
    steps: int = typer.Option(300, help="timed training steps per variant"),
    libraries: bool = typer.Option(True, help="also measure Opacus and BackPACK when installed"),
    threads: int = typer.Option(0, help="torch threads (0: leave torch's default)"),
    out: Path | None = typer.Option(None, help="write speed.json into this folder"),
) -> None:
    """Importance estimation (exact per-sample paths vs a per-sample loop) and the EWC penalty's step cost."""
    from clbench.speed import SpeedReport, measure_importance, measure_steps

    if threads:
        torch.set_num_threads(threads)
    result = SpeedReport(samples=samples, threads=torch.get_num_threads())
    with report.progress_bar() as bar:
        task = bar.add_task("importance", total=None)
        result.importance = measure_importance(
            samples, repeats, libraries, on_step=lambda s: bar.update(task, description=s)
        )
        bar.update(task, description="training steps")
        result.steps = measure_steps(steps, on_step=lambda s: bar.update(task, description=s))
        bar.update(task, description="done", total=1, completed=1)
    report.table(
        f"Importance on the protocol MLP 784-400-400-10, {samples} samples ({result.threads} threads)",
        ["quantity", "path", "seconds", "× faster than loop", "max |Δ| vs loop", "note"],
        [
            (
                r.quantity,
                r.path,
                report.fmt(r.seconds, 4),
                report.fmt(r.speedup_vs_loop, 1),
                "—" if r.max_abs_diff is None else f"{r.max_abs_diff:.1e}",
                r.note,
            )
            for r in result.importance
        ],
    )
    report.table(
        "One Adam step, batch 128 (median)",
        ["variant", "ms", "× plain step"],
        [(r.variant, report.fmt(r.median_ms, 2), report.fmt(r.ratio_to_plain, 3)) for r in result.steps],
    )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "speed.json").write_text(json.dumps(result.to_json(), indent=2))
        report.console.print(f"wrote {out / 'speed.json'}")


if __name__ == "__main__":
    app()
