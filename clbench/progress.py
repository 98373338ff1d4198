"""Three nested progress bars (runs, tasks of the current run, epochs of the current task) for long benchmarks.

`run_scenario` reports each task's start (``on_task``) and each training step (``progress``); this adapter turns
those callbacks into bars, so a person watching a two-hour benchmark sees where it is and how fast it goes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import Progress as RichProgress
from rich.progress import TaskID

from cl_core.trainer import Progress
from clbench import report


class NestedBars:
    """Runs → tasks → epochs (the epoch bar counts training steps and names the current epoch)."""

    def __init__(self, bar: RichProgress, outer_label: str, total: int) -> None:
        self.bar = bar
        self.outer_label = outer_label
        self.runs = bar.add_task(outer_label, total=total)
        self.tasks: TaskID = bar.add_task("tasks", total=1)
        self.epochs: TaskID = bar.add_task("epochs", total=1)

    def start_run(self, description: str) -> None:
        self.bar.update(self.runs, description=f"{self.outer_label}: {description}")

    def finish_run(self) -> None:
        self.bar.advance(self.runs)

    def on_task(self, t: int, tasks: int) -> None:
        self.bar.update(self.tasks, total=tasks, completed=t, description=f"task {t + 1}/{tasks}")
        self.bar.update(self.epochs, completed=0)

    def on_progress(self, p: Progress) -> None:
        self.bar.update(self.epochs, total=p.total_steps, completed=p.step, description=f"epoch {p.epoch}/{p.epochs}")
        if p.step == p.total_steps:
            self.bar.advance(self.tasks)


@contextmanager
def nested_bars(outer_label: str, total: int) -> Iterator[NestedBars]:
    with report.progress_bar() as bar:
        yield NestedBars(bar, outer_label, total)
