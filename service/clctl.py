"""``clctl``: the service from the command line (built on `service.client.Client`).

What goes wrong in normal use (the service is not reachable, it answers an error, a file is missing or unreadable)
ends the command with one line on stderr and exit status 1, never a traceback: `OneLineErrors` is the one place
that turns those exceptions into that line.
"""

from __future__ import annotations

import csv
import json
import os
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperGroup

from service.client import DEFAULT_URL, Client, ServiceError


class CommandError(Exception):
    """A failure of the command itself (a file it cannot read, an option it cannot parse), shown as one line."""


class OneLineErrors(TyperGroup):
    """Runs a command; an expected failure becomes ``error: …`` on stderr and exit status 1."""

    def invoke(self, ctx: Any) -> Any:  # a click Context (typer vendors click in newer versions, not in older ones)
        try:
            return super().invoke(ctx)
        except ServiceError as exc:
            message = f"the service answered {exc}"
        except httpx.TransportError as exc:  # refused, unresolvable, timed out, reset
            message = (
                f"cannot reach the service at {service_url()}: {exc or type(exc).__name__} "
                "(is clserve running there? CL_URL or --url sets the address)"
            )
        except (CommandError, TimeoutError, OSError) as exc:
            message = str(exc)
        typer.echo(f"error: {' '.join(message.split())}", err=True)
        raise typer.Exit(1)


app = typer.Typer(
    cls=OneLineErrors,
    help="Talk to a continual-serve service (CL_URL, CL_API_KEY).",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
state: dict[str, Any] = {}


@app.callback()
def main(
    url: str = typer.Option(None, envvar="CL_URL", help="service URL (default http://127.0.0.1:8000)"),
    key: str = typer.Option(None, envvar="CL_API_KEY", help="API key"),
) -> None:
    state["url"], state["key"] = url, key


def service_url() -> str:
    return str(state.get("url") or os.environ.get("CL_URL") or DEFAULT_URL)


def client() -> Client:
    return Client(service_url(), state.get("key"))


def load_file(path: Path) -> tuple[np.ndarray, list[Any] | None]:
    """Inputs and labels from .npz (arrays 'inputs' and optional 'labels') or .csv (optional 'label' column).
    A file that is missing or cannot be read so raises `CommandError`, naming the file and the reason."""
    if path.suffix not in (".npz", ".csv"):
        raise CommandError(f"{path}: expected a .npz or .csv file")
    if not path.is_file():
        raise CommandError(f"{path}: no such file")
    try:
        return _read_npz(path) if path.suffix == ".npz" else _read_csv(path)
    except (OSError, ValueError, KeyError, IndexError, EOFError, zipfile.BadZipFile) as exc:
        raise CommandError(f"{path}: cannot read it as {path.suffix[1:]}: {exc}") from exc


def _read_npz(path: Path) -> tuple[np.ndarray, list[Any] | None]:
    with np.load(path, allow_pickle=False) as data:  # never unpickle
        if "inputs" not in data.files:
            raise KeyError(f"no array 'inputs' (it has {', '.join(data.files) or 'none'})")
        labels = data["labels"].tolist() if "labels" in data.files else None
        return data["inputs"].astype(np.float32), labels


def _read_csv(path: Path) -> tuple[np.ndarray, list[Any] | None]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError("the file is empty")
    header, body = rows[0], rows[1:]
    if "label" in header:
        at = header.index("label")
        labels = [row[at] or None for row in body]
        values = [[float(v) for i, v in enumerate(row) if i != at] for row in body]
        return np.asarray(values, dtype=np.float32), labels
    return np.asarray([[float(v) for v in row] for row in body], dtype=np.float32), None


def parse_json(text: str, option: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CommandError(f"{option} is not valid JSON: {exc}") from exc


@app.command()
def models() -> None:
    """List the models."""
    rows = client().models()
    table = Table("name", "architecture", "live version", "classes", "pending labeled", "state")
    for m in rows:
        table.add_row(
            m["name"],
            m["architecture"],
            str(m["live_version"]),
            ", ".join(m["classes"]),
            str(m["pending"]["labeled"]),
            m["state"],
        )
    console.print(table)


@app.command()
def create(
    name: str,
    architecture: str = typer.Option("mlp"),
    input_shape: str = typer.Option(..., help="comma-separated, e.g. 784 or 1,28,28"),
    classes: str = typer.Option("", help="comma-separated initial classes"),
    options: str = typer.Option("{}", help="architecture options as JSON"),
    method: str = typer.Option("auto"),
) -> None:
    """Create a model."""
    try:
        shape = [int(d) for d in input_shape.split(",")]
    except ValueError as exc:
        raise CommandError(f"--input-shape must be comma-separated integers, got {input_shape!r}") from exc
    info = client().create_model(
        name,
        architecture,
        shape,
        classes=[c for c in classes.split(",") if c],
        options=parse_json(options, "--options"),
        method=method,
    )
    console.print(f"created {info['name']}")


@app.command()
def predict(
    name: str,
    file: Path = typer.Option(None, help=".npz or .csv of inputs"),
    input: str = typer.Option(None, "--input", help="one input as JSON"),
    limit: int = typer.Option(10, help="predict the first N inputs of the file"),
    top_k: int = typer.Option(None, help="also show the k most probable labels"),
    save: Path = typer.Option(None, help="write the predictions (capture ids, the file's labels) as JSON"),
) -> None:
    """Predict labels with the live version (a captured prediction shows its id: `clctl feedback` labels it)."""
    if (file is None) == (input is None):
        raise typer.BadParameter("give --file or --input")
    if file is not None:
        array, labels = load_file(file)
        inputs = array[:limit].tolist()
    else:
        inputs, labels = [parse_json(input, "--input")], None
    answer = client().predict(name, inputs, top_k)
    if save is not None:
        rows = [
            {**p, "true_label": None if labels is None or labels[i] is None else str(labels[i])}
            for i, p in enumerate(answer["predictions"])
        ]
        save.write_text(json.dumps(rows, indent=1))
        captured = sum("id" in p for p in answer["predictions"])
        console.print(f"wrote {len(rows)} predictions ({captured} captured, with ids) to {save}")
        return
    table = Table(title=f"{name} version {answer['version']}")
    table.add_column("#")
    if labels is not None:
        table.add_column("true label")
    table.add_column("predicted")
    table.add_column("probability")
    if top_k:
        table.add_column("top k")
    captured = any("id" in p for p in answer["predictions"])
    if captured:
        table.add_column("capture id")
    for i, p in enumerate(answer["predictions"]):
        row = [str(i)] + ([str(labels[i])] if labels is not None else []) + [p["label"], f"{p['probability']:.3f}"]
        if top_k:
            row.append(", ".join(f"{t['label']}:{t['probability']:.2f}" for t in p["top_k"]))
        if captured:
            row.append(p.get("id", ""))
        table.add_row(*row)
    console.print(table)


@app.command()
def capture(
    name: str,
    rate: float = typer.Option(None, help="share of predicted inputs to keep, 0 to 1"),
    max_samples: int = typer.Option(10_000, help="captured inputs kept at most (the reservoir)"),
    off: bool = typer.Option(False, "--off", help="stop capturing and empty the capture reservoir"),
) -> None:
    """Capture a share of the model's predicted inputs as unlabeled samples (admin): MAS importance from real
    traffic, feedback labels, drift monitoring."""
    if off == (rate is not None):
        raise typer.BadParameter("give --rate, or --off")
    info = client().set_capture(name, None if off else rate, max_samples)
    setting = info["capture"]
    if setting is None:
        console.print(f"{name}: capture is off")
    else:
        console.print(f"{name}: capturing {setting['rate']:.0%} of predicted inputs, at most {setting['max_samples']}")


@app.command()
def feedback(
    name: str,
    labels: list[str] = typer.Argument(None, help="ID=LABEL pairs: the id a captured prediction carried"),
    from_file: Path = typer.Option(None, "--from", help="predictions saved by `clctl predict --save` (true labels)"),
    limit: int = typer.Option(None, min=1, help="label at most this many of the file's captured predictions"),
) -> None:
    """Label captured predictions: each becomes a labeled sample (screened and gated like any)."""
    given: dict[str, str] = {}
    for pair in labels or []:
        sample_id, sep, label = pair.partition("=")
        if not sep or not sample_id or not label:
            raise CommandError(f"expected ID=LABEL, got {pair!r}")
        given[sample_id] = label
    if from_file is not None:
        try:
            rows = json.loads(from_file.read_text())
        except (OSError, ValueError) as exc:
            raise CommandError(f"cannot read {from_file}: {exc}") from exc
        labeled = [r for r in rows if r.get("id") and r.get("true_label") is not None]
        given.update({r["id"]: r["true_label"] for r in labeled[:limit]})
    if not given:
        raise CommandError("nothing to label: give ID=LABEL pairs or --from a file with captured predictions")
    answer = client().feedback(name, given)
    refused = [r for r in answer["results"] if r["status"] != "accepted"]
    new = ", ".join(answer["new_classes"]) or "none"
    console.print(f"accepted {answer['accepted']} of {len(given)} labels; new classes: {new}")
    for r in refused[:10]:
        console.print(f"  {r['id']}: {r['status']} ({r['detail']})")
    if answer.get("update_id"):
        console.print(f"the update policy started update {answer['update_id']}")


@app.command()
def drift(name: str) -> None:
    """Input drift of the live version's captured traffic (the latest windows, newest first)."""
    report = client().drift(name)
    console.print(f"{name} version {report['live_version']}: {report['status']} {report['detail']}".rstrip())
    if report["windows"]:
        table = Table("tested", "inputs", "score", "feature p", "class p", "drift")
        for w in report["windows"]:
            when = time.strftime("%H:%M:%S", time.localtime(w["at"]))
            verdict = "[red]yes[/red]" if w["detected"] else "no"
            row = [when, str(w["inputs"]), f"{w['score']:.2f}", f"{w['mmd_p_value']:.4f}", f"{w['class_p_value']:.4f}"]
            table.add_row(*row, verdict)
        console.print(table)


@app.command()
def samples(
    name: str,
    file: Path = typer.Option(..., help=".npz or .csv"),
    chunk: int = typer.Option(500, min=1, help="samples per request"),
    wait: bool = typer.Option(False, help="wait for the update the policy starts, with a live progress bar"),
) -> None:
    """Post samples from a file (labels optional), with a progress bar.  The file is posted in chunks; the update
    policy looks at it once it is all stored, so one file makes at most one update."""
    inputs, labels = load_file(file)
    c = client()
    update_id = None
    totals = {"accepted": 0, "held_out": 0}
    new: list[str] = []
    with _bar() as bar:
        task = bar.add_task("posting samples", total=len(inputs))
        answers = c.post_samples_chunked(name, inputs, labels, chunk=chunk, on_chunk=lambda n: bar.advance(task, n))
        for answer in answers:
            totals["accepted"] += answer["accepted"]
            totals["held_out"] += answer["held_out"]
            new += [label for label in answer["new_classes"] if label not in new]
            update_id = answer.get("update_id") or update_id
    classes = ", ".join(new) or "none"
    console.print(f"accepted {totals['accepted']} ({totals['held_out']} held out); new classes: {classes}")
    if update_id is None:
        console.print(f"no update started (the policy waits for more data): clctl update {name} --wait starts one")
        return
    console.print(f"the update policy started update {update_id}")
    if wait:
        _follow(c, name, update_id)
    else:
        console.print(f"follow it: clctl update {name} --follow {update_id} --wait")


def _bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )


@app.command()
def update(
    name: str,
    method: str = typer.Option(None, help="'auto' or e.g. 'mas+replay+wa' (default: the model's)"),
    wait: bool = typer.Option(False, help="wait with a live progress bar"),
    follow: str = typer.Option(None, help="follow an existing update instead of starting one"),
    hparam: list[str] = typer.Option(
        None, "--hparam", help="KEY=VALUE fixed instead of chosen: lam, gamma, replay_repeat (repeatable)"
    ),
) -> None:
    """Start an update (or follow one) and optionally wait for it."""
    c = client()
    update_id = follow or c.start_update(name, method, _hparams(hparam or []))["update_id"]
    if not (wait or follow):
        console.print(f"queued update {update_id}")
        return
    _follow(c, name, update_id)


def _hparams(pairs: list[str]) -> dict[str, float]:
    """``KEY=VALUE`` options as numbers (the service checks the keys and ranges)."""
    out: dict[str, float] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise CommandError(f"--hparam takes KEY=NUMBER, got {pair[:100]!r}")
    return out


def _follow(c: Client, name: str, update_id: str) -> None:
    """Wait for an update with a live progress bar; exit status 1 unless it succeeded."""
    with _bar() as bar:
        task = bar.add_task("queued", total=100)

        def show(status: dict[str, Any]) -> None:
            bar.update(task, completed=round(100 * status["progress"]), description=status["status"])

        status = c.wait_update(name, update_id, on_progress=show)
    console.print(
        f"{status['status']}: version {status['version']}" + (f" — {status['error']}" if status["error"] else "")
    )
    if status["status"] != "succeeded":
        raise typer.Exit(1)


@app.command()
def cancel(name: str, update_id: str) -> None:
    """Cancel a queued or running update."""
    console.print(client().cancel_update(name, update_id)["status"])


@app.command()
def versions(
    name: str,
    limit: int = typer.Option(None, min=1, max=500, help="versions per page, newest first (default: the service's)"),
    cursor: str = typer.Option(None, help="start after the page that printed this cursor"),
    all_pages: bool = typer.Option(False, "--all", help="every stored version (follows every page)"),
) -> None:
    """Versions with lineage and held-out accuracy, newest first, one page (older ones: --cursor, or --all)."""
    c = client()
    if all_pages:
        rows, next_cursor = c.versions(name)[::-1], None
    else:
        page = c.versions_page(name, limit=limit, cursor=cursor)
        rows, next_cursor = page["versions"], page["next_cursor"]
    table = Table(
        "version",
        "parent",
        "status",
        "method",
        "trained",
        "classes",
        "held-out acc",
        "BWT",
        "forgetting",
        "promoted by",
    )
    for v in rows:
        m = v["metrics"]
        table.add_row(
            str(v["version"]),
            str(v["parent"]),
            v["status"] + (", pinned" if v.get("pinned") else ""),
            v["method"],
            _trained(v["train_config"]),
            str(len(v["classes"])),
            _fmt(m.get("accuracy")),
            _fmt(m.get("bwt")),
            _fmt(m.get("forgetting")),
            ", ".join(str(p["by"]) for p in v["promotions"]),
        )
    console.print(table)
    _more(next_cursor, f"clctl versions {name}", "older versions")


@app.command()
def updates(
    name: str,
    limit: int = typer.Option(None, min=1, max=500, help="updates per page, newest first (default: the service's)"),
    cursor: str = typer.Option(None, help="start after the page that printed this cursor"),
    all_pages: bool = typer.Option(False, "--all", help="every stored update (follows every page)"),
) -> None:
    """Updates newest first, one page (older ones: --cursor, or --all)."""
    c = client()
    if all_pages:
        rows, next_cursor = c.updates(name)[::-1], None
    else:
        page = c.updates_page(name, limit=limit, cursor=cursor)
        rows, next_cursor = page["updates"], page["next_cursor"]
    table = Table("update", "status", "method", "version", "progress", "reason", "error")
    for u in rows:
        table.add_row(
            u["update_id"],
            u["status"],
            u["method"],
            str(u["version"]),
            f"{100 * u['progress']:.0f} %",
            str(u["reason"]),
            str(u["error"] or ""),
        )
    console.print(table)
    _more(next_cursor, f"clctl updates {name}", "older updates")


def _more(next_cursor: str | None, command: str, what: str) -> None:
    """The hint to the next page, when there is one."""
    if next_cursor is not None:
        console.print(f"{what}: {command} --cursor {next_cursor} (or --all)")


@app.command()
def pin(
    name: str,
    version: int,
    unpin: bool = typer.Option(False, "--unpin", help="remove the pin: retention may delete it again"),
) -> None:
    """Pin a version (admin): version retention keeps it whatever its age."""
    answer = client().pin(name, version, pinned=not unpin)
    console.print(f"{name}: version {answer['version']} is {'pinned' if answer['pinned'] else 'not pinned'}")


@app.command()
def promote(
    name: str,
    version: int,
    force: bool = typer.Option(False, "--force", help="promote a version the forgetting gate rejected"),
) -> None:
    """Serve a version (rollback = promote an older one).  A version the gate rejected needs --force."""
    try:
        answer = client().promote(name, version, force=force)
    except ServiceError as exc:
        if exc.status == 409 and "forgetting gate" in exc.detail:
            raise CommandError(
                f"not promoted: {exc.detail}; pass --force to promote it anyway (the promotion is audited)"
            ) from exc
        raise
    if answer.get("forced"):
        console.print(f"[yellow]version {version} had been rejected by the forgetting gate[/yellow]: {answer['gate']}")
    forced = " (forced past the gate)" if answer.get("forced") else ""
    console.print(f"{name}: version {answer['live_version']} is live (was {answer['previous']}){forced}")


@app.command()
def quarantine(
    name: str,
    release: list[str] = typer.Option(None, "--release", help="return these sample ids to the pending ones"),
) -> None:
    """Samples that label screening set aside (or, with --release ID …, return them to training: admin)."""
    if release:
        answer = client().release_quarantine(name, release)
        console.print(f"released {len(answer['released'])} of {len(release)} samples")
        return
    rows = client().quarantine(name)
    table = Table("id", "label", "looks like", "held out", "update")
    for r in rows:
        table.add_row(r["id"], str(r["label"]), r["predicted"], str(r["held_out"]), str(r["update_id"]))
    console.print(table)
    console.print(f"{len(rows)} samples in quarantine")


@app.command()
def metrics(name: str) -> None:
    """The forgetting report: held-out accuracy per class, ACC, BWT, forgetting."""
    report = client().metrics(name)
    console.print(
        f"{name} version {report['live_version']}: held-out accuracy {_fmt(report['accuracy'])} on "
        f"{report['held_out_samples']} samples; ACC {_fmt(report['acc'])}, BWT {_fmt(report['bwt'])}, "
        f"forgetting {_fmt(report['forgetting'])}"
    )
    table = Table("class", "held-out accuracy")
    for label, value in report["per_class_accuracy"].items():
        table.add_row(label, _fmt(value))
    console.print(table)
    matrix = report["matrix"]
    if matrix["columns"]:
        total = report.get("experiences", len(matrix["columns"]))
        title = (
            "accuracy matrix"
            if total <= len(matrix["columns"])
            else f"accuracy matrix: the last {len(matrix['columns'])} of {total} experiences"
        )
        grid = Table("version \\ experience", *[str(c) for c in matrix["columns"]], title=title)
        for row, values in zip(matrix["rows"], matrix["values"], strict=True):
            grid.add_row(str(row), *[_fmt(v) for v in values], *[""] * (len(matrix["columns"]) - len(values)))
        console.print(grid)


@app.command()
def delete(name: str, yes: bool = typer.Option(False, "--yes", help="do not ask")) -> None:
    """Delete a model and all its data."""
    if not yes:
        typer.confirm(f"delete {name} with all its versions and data?", abort=True)
    client().delete_model(name)
    console.print(f"deleted {name}")


@app.command("demo-data")
def demo_data(
    digits: str = typer.Option("5-9", help="e.g. 5-9 or 0,2,4"),
    out: Path = typer.Option(Path("digits.npz")),
    split: str = typer.Option("train", help="'train' (for posting) or 'test' (never trained on)"),
) -> None:
    """Write MNIST-5k digits (784 floats in [0, 1] and labels) to a .npz file."""
    from service.demo import demo_digits

    try:
        if "-" in digits:
            lo, hi = (int(d) for d in digits.split("-"))
            chosen = list(range(lo, hi + 1))
        else:
            chosen = [int(d) for d in digits.split(",")]
    except ValueError as exc:
        raise CommandError(f"--digits must be a range such as 5-9 or a list such as 0,2,4, got {digits!r}") from exc
    if not chosen or any(d < 0 or d > 9 for d in chosen):
        raise CommandError(f"--digits must name digits 0-9, got {digits!r}")
    if split not in ("train", "test"):
        raise CommandError(f"--split must be 'train' or 'test', got {split!r}")
    inputs, labels = demo_digits(chosen, split)
    np.savez(out, inputs=np.asarray(inputs, dtype=np.float32), labels=np.asarray(labels))
    console.print(f"wrote {len(labels)} samples of digits {chosen} ({split} split) to {out}")


def _trained(train_config: dict[str, Any]) -> str:
    """How a version trained: the chosen λ and replay share, its steps, and the candidates tried."""
    training = train_config.get("training")
    if not isinstance(training, dict):
        return f"{train_config.get('epochs', '?')} epochs" if train_config else ""
    lam = training.get("lam")
    text = "" if lam is None else f"λ={lam:g} "
    if training.get("replay_repeat", 1) != 1:
        text += f"replay×{training['replay_repeat']} "
    text += f"{training.get('steps')} steps"
    candidates = training.get("candidates") or []
    if len(candidates) > 1:
        text += f" (best of {len(candidates)}, {training.get('total_steps')} in all)"
    elif training.get("budget") == "epochs":
        text += f" ({training.get('epochs')} epochs)"
    return text


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    app()
