"""`clbench tune`: choose each method's hyper-parameters (λ and its kin) per scenario on the validation split.

The protocol forbids tuning on test data, so every candidate trains on the 90 % part of the train split
(``validation_split(train)[0]``) and is scored by its final ACC on the held-out 10 % built into the same scenario;
the test split is never passed in.  Seed 0.  The grid, every candidate's score and the choice go into a JSON record
that ships with the package, one per protocol version (``clbench/tuned.json`` for version 2, ``tuned_v1.json`` for
version 1), so that ``clbench run`` reproduces the published table without re-tuning and anyone can see how each
value was picked.  A method's grid is its own ``tuning_grid`` when it declares one (LwF, SI, DER++), else below.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cl_core.data import PROTOCOL_VERSION, Split, build_scenario, validation_split
from cl_core.methods import METHODS
from cl_core.metrics import summarize
from cl_core.naming import parse_method_name
from cl_core.protocol import run_scenario
from cl_core.trainer import Progress, TrainConfig
from clbench.progress import NestedBars

TUNED_PATH = Path(__file__).with_name("tuned.json")
TUNED_PATHS = {2: TUNED_PATH, 1: Path(__file__).with_name("tuned_v1.json")}

Grid = dict[str, list[float]]

# Log-spaced grids, per base method, of the constructor arguments that set the penalty's strength.  The penalty is
# λ/2 · Ω (θ − θ*)²; after 10 epochs the exact Fisher of this MLP is tiny (mean ≈ 5e-8 per weight, the network is
# confident), so EWC needs large λ, while MAS's importance is O(0.1–10).
_EWC_LAMBDAS = [10.0**k for k in range(0, 11)]
_MAS_LAMBDAS = [10.0**k for k in range(-3, 5)]
GRIDS: dict[str, Grid] = {
    "ewc": {"lam": _EWC_LAMBDAS},
    "online-ewc": {"lam": _EWC_LAMBDAS, "gamma": [1.0, 0.9, 0.7]},
    "mas": {"lam": _MAS_LAMBDAS},
    "rewc": {"lam": _EWC_LAMBDAS},  # EWC in a rotated parameter space: Fisher-scale importance
    # SLNID: MAS's λ and the strength λ_SSL of the sparsity (local inhibition) loss
    "slnid": {"lam": _MAS_LAMBDAS, "ssl_lam": [1e-6, 1e-5, 1e-4, 1e-3, 1e-2]},
}
DEFAULT_GRID: Grid = {"lam": [10.0**k for k in range(-2, 8)]}  # a method added later, before it has its own grid


def has_lambda(method: str) -> bool:
    """Whether a method name has a strength to tune (fine-tune, joint and plain replay have none)."""
    base = parse_method_name(method).base
    return base != "joint" and METHODS[base].strength is not None


def strength_argument(method: str) -> str:
    """The constructor argument that ``--lambda`` sets (λ for most; SI's c, DER++'s α)."""
    strength = METHODS[parse_method_name(method).base].strength
    if strength is None:
        raise ValueError(f"{method!r} has no strength to set")
    return strength


def grid_for(method: str) -> Grid:
    base = parse_method_name(method).base
    own = METHODS[base].tuning_grid
    return dict(own) if own is not None else GRIDS.get(base, DEFAULT_GRID)


def candidates(grid: Grid) -> list[dict[str, float]]:
    """Every combination of the grid's values, in grid order (the first-listed parameter varies slowest)."""
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]


@dataclass
class Candidate:
    hparams: dict[str, float]
    val_acc: float


@dataclass
class TuneEntry:
    """One (scenario, method) choice with everything needed to audit it."""

    grid: Grid
    candidates: list[Candidate]
    chosen: dict[str, float]
    val_acc: float
    epochs: int
    tasks: int
    seed: int
    fit_samples: int
    val_samples: int
    date: str
    wall_s: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def choose(scored: Sequence[Candidate]) -> Candidate:
    """The best validation ACC; ties go to the first candidate in grid order (the weakest penalty listed first)."""
    if not scored:
        raise ValueError("no candidates to choose from")
    best = scored[0]
    for candidate in scored[1:]:
        if candidate.val_acc > best.val_acc:
            best = candidate
    return best


def tune_method(
    scenario: str,
    method: str,
    train: Split,
    *,
    grid: Grid | None = None,
    epochs: int = 10,
    seed: int = 0,
    tasks: int | None = None,
    memory_hparams: dict[str, Any] | None = None,
    fixed_hparams: dict[str, Any] | None = None,
    on_candidate: Callable[[int, int, dict[str, float]], None] | None = None,
    on_task: Callable[[int, int], None] | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> TuneEntry:
    """Score every grid candidate of ``method`` on ``scenario``'s validation split; only the train split comes in."""
    import time

    if not has_lambda(method):
        raise ValueError(f"{method!r} has no regularisation strength to tune")
    grid = grid or grid_for(method)
    fit, val = validation_split(train)
    built = build_scenario(scenario, fit, val, tasks=tasks)
    config = TrainConfig(epochs=epochs)
    start = time.perf_counter()
    scored: list[Candidate] = []
    options = candidates(grid)
    for i, hparams in enumerate(options):
        if on_candidate is not None:
            on_candidate(i, len(options), hparams)
        result = run_scenario(
            built,
            method,
            seed=seed,
            config=config,
            method_hparams={**hparams, **(fixed_hparams or {})},
            memory_hparams=memory_hparams,
            on_task=on_task,
            progress=progress,
        )
        scored.append(Candidate(hparams, summarize(result.acc_matrix).acc))
    best = choose(scored)
    return TuneEntry(
        grid=grid,
        candidates=scored,
        chosen=best.hparams,
        val_acc=best.val_acc,
        epochs=epochs,
        tasks=len(built.tasks),
        seed=seed,
        fit_samples=len(fit),
        val_samples=len(val),
        date=dt.date.today().isoformat(),
        wall_s=time.perf_counter() - start,
    )


def tune_all(
    scenarios: Sequence[str],
    methods: Sequence[str],
    train: Split,
    *,
    out: Path,
    epochs: int = 10,
    seed: int = 0,
    grid: Grid | None = None,
    memory_hparams: dict[str, Any] | None = None,
    fixed_hparams: Callable[[str, str], dict[str, Any]] | None = None,
    tasks: int | None = None,
    bars: NestedBars | None = None,
    protocol: int = PROTOCOL_VERSION,
) -> list[tuple[str, str, TuneEntry]]:
    """Tune every (scenario, method) pair and merge each choice into ``out`` as soon as it is made."""
    done: list[tuple[str, str, TuneEntry]] = []
    for scenario in scenarios:
        for method in methods:

            def on_candidate(i: int, n: int, hparams: dict[str, float], s: str = scenario, m: str = method) -> None:
                if bars is not None:
                    if i > 0:
                        bars.finish_run()
                    shown = ", ".join(f"{k}={v:g}" for k, v in hparams.items())
                    bars.start_run(f"{s} {m} {shown} ({i + 1}/{n})")

            entry = tune_method(
                scenario,
                method,
                train,
                grid=grid,
                epochs=epochs,
                seed=seed,
                tasks=tasks,
                memory_hparams=memory_hparams,
                fixed_hparams=None if fixed_hparams is None else fixed_hparams(scenario, method),
                on_candidate=on_candidate,
                on_task=None if bars is None else bars.on_task,
                progress=None if bars is None else bars.on_progress,
            )
            if bars is not None:
                bars.finish_run()
            save_entry(out, scenario, method, entry, protocol=protocol)
            done.append((scenario, method, entry))
    return done


# -- the record ----------------------------------------------------------------------------------------------------
def empty_record(protocol: int = PROTOCOL_VERSION) -> dict[str, Any]:
    return {
        "protocol": protocol,
        "selection": (
            "train on validation_split(train)[0] (90 % of the train split), score the final ACC on the 10 % "
            "validation split built into the same scenario, seed 0; choose the best ACC, ties to the first "
            "candidate in grid order; the test split is never used"
        ),
        "entries": {},
    }


def load_record(path: Path | None = None, *, protocol: int = PROTOCOL_VERSION) -> dict[str, Any]:
    """The tuning record (by default the packaged one of ``protocol``), or an empty one when there is none yet."""
    path = path or TUNED_PATHS[protocol]
    if not path.exists() or path.stat().st_size == 0:
        return empty_record(protocol)
    return json.loads(path.read_text())


def tuned_hparams(
    record: dict[str, Any], scenario: str, method: str, *, protocol: int = PROTOCOL_VERSION
) -> dict[str, float] | None:
    """The chosen hyper-parameters for (scenario, method), or None when not tuned (under this protocol)."""
    if record.get("protocol") != protocol:
        return None
    entry = record.get("entries", {}).get(scenario, {}).get(parse_method_name(method).name)
    return None if entry is None else dict(entry["chosen"])


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[Any]:
    """The record file opened for update under an exclusive lock, so that parallel tuning jobs can share it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - not POSIX: one job at a time
            pass
        yield handle


def save_entry(path: Path, scenario: str, method: str, entry: TuneEntry, *, protocol: int = PROTOCOL_VERSION) -> None:
    """Merge one entry into the record at ``path`` (read-modify-write under a lock; other entries are kept)."""
    with _locked(path) as handle:
        handle.seek(0)
        text = handle.read()
        record = json.loads(text) if text.strip() else empty_record(protocol)
        if record.get("protocol") != protocol:
            record = empty_record(protocol)
        record.setdefault("entries", {}).setdefault(scenario, {})[parse_method_name(method).name] = entry.to_json()
        record["entries"] = {s: dict(sorted(m.items())) for s, m in sorted(record["entries"].items())}
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(record, indent=1) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
