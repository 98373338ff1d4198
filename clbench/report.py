"""Console output shared by the subcommands: tables and progress bars."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console(width=max(Console().width, 132))  # tables stay readable in logs and pipes


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    t = Table(title=title)
    for column in columns:
        t.add_column(column)
    for row in rows:
        t.add_row(*(str(cell) for cell in row))
    console.print(t)


@contextmanager
def progress_bar() -> Iterator[Progress]:
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        yield bar


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None or value != value:
        return "—"
    return f"{value:.{digits}f}"
