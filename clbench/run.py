"""`clbench run`: the benchmark protocol (../shared/benchmark-protocol.md) over scenarios × methods × seeds.

Each run trains on the whole train split of MNIST-5k (4,000 images) and tests on the test split; λ comes from the
tuning record (chosen on the validation split) unless ``--lambda`` overrides it.  Every run becomes one line of
``results.jsonl`` with exactly the keys the protocol lists, written as soon as the run ends, so that an interrupted
benchmark keeps what it finished and ``--resume`` can skip it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cl_core.data import PROTOCOL_VERSION, MNIST5k, build_scenario, load_mnist5k
from cl_core.metrics import summarize
from cl_core.protocol import run_scenario
from cl_core.trainer import TrainConfig
from clbench.progress import NestedBars
from clbench.tune import has_lambda, load_record, tuned_hparams

RESULT_KEYS = (
    "protocol",
    "scenario",
    "method",
    "seed",
    "hparams",
    "acc_matrix",
    "acc",
    "bwt",
    "forgetting",
    "wall_s",
    "importance_s",
)
RESULTS_FILE = "results.jsonl"


@dataclass(frozen=True)
class RunSettings:
    """Everything besides (scenario, method, seed) that decides a run."""

    epochs: int = 10
    tasks: int | None = None  # truncate every scenario (tests only; the protocol has 5 tasks)
    memory_per_class: int = 20
    lam: float | None = None  # --lambda: one λ for every method of the invocation
    tuned: dict[str, Any] = field(default_factory=load_record)


def resolve_hparams(scenario: str, method: str, settings: RunSettings) -> tuple[dict[str, float] | None, str]:
    """The method's strength and where it came from: ``--lambda``, the tuning record, or the method's default."""
    if not has_lambda(method):
        return None, "none"
    if settings.lam is not None:
        return {"lam": settings.lam}, "--lambda"
    chosen = tuned_hparams(settings.tuned, scenario, method)
    if chosen is not None:
        return chosen, "tuned"
    return None, "default, not tuned"


def run_one(
    data: MNIST5k,
    scenario: str,
    method: str,
    seed: int,
    settings: RunSettings,
    bars: NestedBars | None = None,
) -> dict[str, Any]:
    """One protocol run as its JSON record (exactly `RESULT_KEYS`)."""
    built = build_scenario(scenario, data.train, data.test, tasks=settings.tasks)
    method_hparams, source = resolve_hparams(scenario, method, settings)
    result = run_scenario(
        built,
        method,
        seed=seed,
        config=TrainConfig(epochs=settings.epochs),
        method_hparams=method_hparams,
        memory_hparams={"per_class": settings.memory_per_class},
        on_task=None if bars is None else bars.on_task,
        progress=None if bars is None else bars.on_progress,
    )
    summary = summarize(result.acc_matrix)
    hparams = {
        **result.hparams,
        "lambda_source": source,
        "tasks": len(built.tasks),
        "train_samples": len(data.train),
        "torch_threads": torch.get_num_threads(),
    }
    record = {
        "protocol": PROTOCOL_VERSION,
        "scenario": scenario,
        "method": method,
        "seed": seed,
        "hparams": hparams,
        "acc_matrix": result.acc_matrix,
        "acc": summary.acc,
        "bwt": summary.bwt,
        "forgetting": summary.forgetting,
        "wall_s": result.wall_s,
        "importance_s": result.importance_s,
    }
    assert tuple(record) == RESULT_KEYS
    return record


def read_results(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_benchmark(
    scenarios: Sequence[str],
    methods: Sequence[str],
    seeds: Sequence[int],
    out: Path,
    settings: RunSettings,
    *,
    data: MNIST5k | None = None,
    bars: NestedBars | None = None,
    resume: bool = False,
) -> list[dict[str, Any]]:
    """Run every (scenario, method, seed) in that order, appending each record to ``out/results.jsonl``.

    Without ``resume`` the file starts empty; with it, runs already in the file are kept and skipped."""
    data = data or load_mnist5k()
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_FILE
    records = read_results(path) if resume else []
    done = {(r["scenario"], r["method"], r["seed"]) for r in records}
    if not resume:
        path.write_text("")
    for scenario in scenarios:
        for method in methods:
            for seed in seeds:
                if (scenario, method, seed) in done:
                    if bars is not None:
                        bars.finish_run()
                    continue
                if bars is not None:
                    bars.start_run(f"{scenario} · {method} · seed {seed}")
                record = run_one(data, scenario, method, seed, settings, bars)
                with path.open("a") as handle:
                    handle.write(json.dumps(record) + "\n")
                records.append(record)
                if bars is not None:
                    bars.finish_run()
    wanted = {(s, m, seed) for s in scenarios for m in methods for seed in seeds}
    return [r for r in records if (r["scenario"], r["method"], r["seed"]) in wanted]
