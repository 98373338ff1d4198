"""`clbench run`: the benchmark protocol (../shared/benchmark-protocol.md) over scenarios × methods × seeds.

Each run trains on the whole train split of MNIST-5k (4,000 images) and tests on the test split; λ comes from the
tuning record of the protocol version (chosen on the validation split) unless ``--lambda`` overrides it.  Every run
becomes one line of ``results.jsonl`` with exactly the keys the protocol lists, written as soon as the run ends, so
that an interrupted benchmark keeps what it finished and ``--resume`` can skip it.

Protocol 2 (the default) gives every replaying method one total memory (``--memory``, 200) balanced over classes
and tasks, replayed on the schedule ``--replay`` (default: `cl_core.memory.DEFAULT_REPLAY`); DER++'s own buffer gets
the same total.  ``--protocol 1`` reproduces version 1: 20 exemplars per class of the head, concatenated.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cl_core.data import PROTOCOL_VERSION, PROTOCOLS, MNIST5k, Scenario, build_scenario, load_mnist5k
from cl_core.memory import DEFAULT_REPLAY, DEFAULT_REPLAY_RATIO, DEFAULT_TOTAL
from cl_core.methods import METHODS
from cl_core.metrics import summarize
from cl_core.naming import parse_method_name
from cl_core.protocol import run_scenario
from cl_core.trainer import TrainConfig
from clbench.progress import NestedBars
from clbench.tune import has_lambda, load_record, strength_argument, tuned_hparams

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


V1_PER_CLASS = 20
REPLAY_SCHEDULES = ("concat", "batch")


@dataclass(frozen=True)
class RunSettings:
    """Everything besides (scenario, method, seed) that decides a run."""

    epochs: int = 10
    tasks: int | None = None  # truncate every scenario (tests only; the protocol has 5 tasks)
    protocol: int = PROTOCOL_VERSION
    memory: int | None = None  # protocol 2: the total (200); protocol 1: per class of the head (20)
    replay: str | None = None  # the replay schedule (protocol 2 default: DEFAULT_REPLAY; protocol 1: concat)
    replay_ratio: float | None = None  # replayed per current sample in each batch ('batch'; default 2)
    lam: float | None = None  # --lambda: one strength for every method of the invocation
    tuned: dict[str, Any] | None = None  # the tuning record (default: the packaged one of the protocol)

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; known: {', '.join(map(str, PROTOCOLS))}")
        if self.memory is not None and (isinstance(self.memory, bool) or self.memory < 1):
            raise ValueError(f"--memory must be a positive integer, got {self.memory!r}")
        if self.replay is not None and self.replay not in REPLAY_SCHEDULES:
            raise ValueError(f"unknown replay schedule {self.replay!r}; known: {', '.join(REPLAY_SCHEDULES)}")
        if self.protocol == 1 and (self.replay not in (None, "concat") or self.replay_ratio is not None):
            raise ValueError("protocol 1 replays by concatenation only")
        if self.replay_ratio is not None and not 0 < self.replay_ratio <= 16:
            raise ValueError(f"--replay-ratio must be in (0, 16], got {self.replay_ratio!r}")

    @property
    def memory_size(self) -> int:
        """The protocol's budget: the total (v2) or the exemplars per class of the head (v1)."""
        if self.memory is not None:
            return self.memory
        return DEFAULT_TOTAL if self.protocol == 2 else V1_PER_CLASS

    @property
    def schedule(self) -> str:
        return self.replay or (DEFAULT_REPLAY if self.protocol == 2 else "concat")

    @property
    def ratio(self) -> float:
        return self.replay_ratio if self.replay_ratio is not None else DEFAULT_REPLAY_RATIO

    def record(self) -> dict[str, Any]:
        return self.tuned if self.tuned is not None else load_record(protocol=self.protocol)

    def memory_hparams(self) -> dict[str, Any]:
        """The exemplar memory of ``+replay`` methods under this protocol."""
        if self.protocol == 1:
            return {"per_class": self.memory_size, "total": None, "balance": "class", "replay": "concat"}
        return {
            "total": self.memory_size,
            "per_class": None,
            "balance": "class-task",
            "replay": self.schedule,
            "replay_ratio": self.ratio,
        }

    def own_memory(self, scenario: Scenario) -> int:
        """The buffer of a method that keeps its own samples (DER++): the same total (v1: per class × outputs)."""
        return self.memory_size if self.protocol == 2 else self.memory_size * scenario.num_outputs


def resolve_hparams(scenario: str, method: str, settings: RunSettings) -> tuple[dict[str, float] | None, str]:
    """The method's strength and where it came from: ``--lambda``, the tuning record, or the method's default."""
    if not has_lambda(method):
        return None, "none"
    if settings.lam is not None:
        return {strength_argument(method): settings.lam}, "--lambda"
    chosen = tuned_hparams(settings.record(), scenario, method, protocol=settings.protocol)
    if chosen is not None:
        return chosen, "tuned"
    return None, "default, not tuned"


def method_hparams(built: Scenario, method: str, chosen: dict[str, float] | None, settings: RunSettings) -> dict:
    """The chosen strength plus, for a method with its own sample memory, the protocol's budget."""
    hparams: dict[str, Any] = dict(chosen or {})
    base = parse_method_name(method).base
    argument = METHODS[base].memory_argument if base in METHODS else None
    if argument is not None:
        hparams[argument] = settings.own_memory(built)
    return hparams


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
    chosen, source = resolve_hparams(scenario, method, settings)
    result = run_scenario(
        built,
        method,
        seed=seed,
        config=TrainConfig(epochs=settings.epochs),
        method_hparams=method_hparams(built, method, chosen, settings),
        memory_hparams=settings.memory_hparams(),
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
        "protocol": settings.protocol,
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
    done = {(r["scenario"], r["method"], r["seed"]) for r in records if r.get("protocol", 1) == settings.protocol}
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
