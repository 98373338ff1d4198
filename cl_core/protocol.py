"""Run one method through one scenario of the benchmark protocol and record the accuracy matrix.

Shared by the benchmark CLI and the tests, so that both measure the same thing.  The network is the protocol's
MLP 784-400-400-K; class-incremental runs grow the head with the classes, exactly as the service does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from cl_core.data import Scenario, joint_experiences
from cl_core.learner import Learner, evaluate_accuracy
from cl_core.models import Classifier, ModelSpec, build_model
from cl_core.trainer import Progress, TrainConfig

PROTOCOL_HIDDEN = (400, 400)


@dataclass
class RunResult:
    method: str
    seed: int
    acc_matrix: list[list[float]]
    wall_s: float
    importance_s: float
    hparams: dict[str, Any] = field(default_factory=dict)


def protocol_model(num_outputs: int, seed: int, hidden: Sequence[int] = PROTOCOL_HIDDEN) -> Classifier:
    spec = ModelSpec("mlp", (784,), [str(i) for i in range(num_outputs)], {"hidden": list(hidden)})
    return build_model(spec, seed=seed)


def _grow(model: Classifier, outputs: int, seed: int) -> None:
    if outputs > model.num_classes:
        model.head.grow(outputs - model.num_classes, generator=torch.Generator().manual_seed(seed + outputs))


def run_scenario(
    scenario: Scenario,
    method: str,
    *,
    seed: int = 0,
    config: TrainConfig = TrainConfig(),
    method_hparams: dict[str, Any] | None = None,
    memory_hparams: dict[str, Any] | None = None,
    hidden: Sequence[int] = PROTOCOL_HIDDEN,
    on_task: Callable[[int, int], None] | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> RunResult:
    """Train ``method`` task by task (or once on everything for ``joint``); a[t][j] is the accuracy on task j's
    test split after task t.  ``on_task(t, tasks)`` is called as each task starts."""
    torch.manual_seed(seed)
    learner = Learner.build(method, method_hparams=method_hparams, memory_hparams=memory_hparams)
    config = replace(config, seed=seed)
    tasks = scenario.tasks
    first_outputs = tasks[-1].num_outputs if learner.spec.base == "joint" else tasks[0].num_outputs
    model = protocol_model(first_outputs, seed, hidden)
    start = time.perf_counter()
    importance_s = 0.0
    matrix: list[list[float]] = []
    schedule = [joint_experiences(scenario)] if learner.spec.base == "joint" else [[t.train] for t in tasks]
    for t, experiences in enumerate(schedule):
        if on_task is not None:
            on_task(t, len(schedule))
        if learner.spec.base != "joint":
            _grow(model, tasks[t].num_outputs, seed)
        report = learner.learn(model, experiences, replace(config, seed=seed * 1000 + t), progress=progress)
        importance_s += report.importance_seconds
        matrix.append(
            [evaluate_accuracy(model, task.test_inputs, task.test_targets, task.test_active) for task in tasks]
        )
    hparams = {**learner.hparams(), "epochs": config.epochs, "batch_size": config.batch_size, "lr": config.lr}
    return RunResult(learner.name, seed, matrix, time.perf_counter() - start, importance_s, hparams)
