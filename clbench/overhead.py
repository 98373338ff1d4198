"""The training-step cost of each method against fine-tuning, measured inside the real trainer on MNIST batches.

Each method is built as the benchmark builds it (its strength does not change the cost) and learns one experience
first, so that its penalty, memory and hooks are active.  Then every method in turn trains one epoch at a time on
the same 1,024 images, round after round, so that a noisy shared machine slows them alike; a step's time is the
gap between two consecutive progress reports of the trainer, so it includes everything the trainer does per step
(the penalty's gradient, replayed exemplars, weight clipping for ``+wa``).  The median is reported.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from cl_core.data import Split
from cl_core.experience import Experience
from cl_core.learner import Learner
from cl_core.naming import parse_method_name
from cl_core.protocol import protocol_model
from cl_core.trainer import Progress, TrainConfig


@dataclass
class StepCost:
    method: str
    median_ms: float
    ratio_to_finetune: float
    steps: int


def measure_step_costs(
    methods: Sequence[str],
    train: Split,
    *,
    rounds: int = 25,
    samples: int = 1024,
    on_round: Callable[[int, int], None] = lambda i, n: None,
) -> list[StepCost]:
    """Median training-step time per method; ``joint`` steps exactly like fine-tuning and is left out."""
    names = [
        "finetune",
        *(m for m in dict.fromkeys(methods) if m != "finetune" and parse_method_name(m).base != "joint"),
    ]
    x, y = train.inputs, train.labels
    first = Experience(x[:512], y[:512], None, tuple(range(10)))
    later = Experience(x[512 : 512 + samples], y[512 : 512 + samples])
    setups: list[tuple[str, torch.nn.Module, Learner]] = []
    for name in names:
        torch.manual_seed(0)
        net = protocol_model(10, seed=0)
        built = Learner.build(name)
        built.learn(net, first, TrainConfig(epochs=1))  # consolidated once: the penalty is active from now on
        setups.append((name, net, built))
    gaps: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        on_round(r, rounds)
        for name, model, learner in setups:
            stamps: list[float] = []

            def stamp(_: Progress, stamps: list[float] = stamps) -> None:
                stamps.append(time.perf_counter())

            learner.learn(model, later, TrainConfig(epochs=1, seed=r), progress=stamp)
            gaps[name].extend(b - a for a, b in itertools.pairwise(stamps))
    base = statistics.median(gaps["finetune"])
    return [
        StepCost(name, 1e3 * statistics.median(gaps[name]), statistics.median(gaps[name]) / base, len(gaps[name]))
        for name in names
    ]


STEP_COLUMNS = ["method", "ms per training step (median)", "× fine-tune step", "steps timed"]


def step_rows(costs: Sequence[StepCost]) -> list[list[str]]:
    return [[c.method, f"{c.median_ms:.2f}", f"{c.ratio_to_finetune:.2f}", str(c.steps)] for c in costs]
