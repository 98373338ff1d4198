"""`clbench profile`: the wall time of one full production update per method, to predict the service's latency.

One update is what the service does when new data arrives: train 10 epochs on 1,000 samples (with the penalty
of everything learned before), then consolidate (importance estimation, anchors, exemplar memory).  Each method
first learns one 1,000-sample experience untimed, so that the timed updates carry a real penalty and a filled
memory; the timed updates then use further disjoint 1,000-sample chunks of the MNIST-5k train split, and methods
take turns, so that a noisy shared machine slows them alike.  Medians are reported, split into training,
importance estimation and the rest (memory update, weight aligning), with per-sample rates to scale to other sizes:
update ≈ training rate × samples × epochs + importance rate × samples + rest.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from cl_core.data import Split
from cl_core.experience import Experience
from cl_core.learner import Learner
from cl_core.protocol import protocol_model
from cl_core.trainer import TrainConfig


@dataclass
class UpdateCost:
    method: str
    total_s: float
    train_s: float
    importance_s: float
    rest_s: float
    samples: int
    epochs: int
    repeats: int

    @property
    def train_ms_per_1k_sample_epochs(self) -> float:
        return 1e3 * self.train_s / (self.samples * self.epochs / 1000)

    @property
    def importance_ms_per_1k_samples(self) -> float:
        return 1e3 * self.importance_s / (self.samples / 1000)

    @property
    def importance_share(self) -> float:
        return self.importance_s / self.total_s if self.total_s > 0 else 0.0


def _chunk(train: Split, index: int, samples: int) -> Experience:
    """The ``index``-th disjoint chunk of ``samples`` train images (wrapping around the split if needed)."""
    n = len(train)
    idx = torch.arange(index * samples, (index + 1) * samples) % n
    return Experience(train.inputs[idx], train.labels[idx], None, tuple(range(10)) if index == 0 else ())


def profile_updates(
    methods: Sequence[str],
    train: Split,
    *,
    samples: int = 1000,
    epochs: int = 10,
    repeats: int = 3,
    on_update: Callable[[str, int], None] = lambda m, i: None,
) -> list[UpdateCost]:
    """Median cost of one full update (train ``epochs`` on ``samples`` + consolidate) per method."""
    learners: list[tuple[str, torch.nn.Module, Learner]] = []
    for name in methods:
        torch.manual_seed(0)
        net = protocol_model(10, seed=0)
        built = Learner.build(name)
        built.learn(net, _chunk(train, 0, samples), TrainConfig(epochs=epochs))  # untimed: penalty + memory
        learners.append((name, net, built))
    measured: dict[str, list[tuple[float, float, float]]] = {name: [] for name in methods}
    for i in range(1, repeats + 1):
        for name, model, learner in learners:
            on_update(name, i)
            experience = _chunk(train, i, samples)
            start = time.perf_counter()
            result = learner.learn(model, experience, TrainConfig(epochs=epochs, seed=i))
            total = time.perf_counter() - start
            measured[name].append((total, result.train.seconds, result.importance_seconds))
    costs = []
    for name in methods:
        total = statistics.median(t for t, _, _ in measured[name])
        train_s = statistics.median(t for _, t, _ in measured[name])
        importance = statistics.median(t for _, _, t in measured[name])
        rest = max(0.0, total - train_s - importance)
        costs.append(UpdateCost(name, total, train_s, importance, rest, samples, epochs, repeats))
    return costs


PROFILE_COLUMNS = [
    "method",
    "update s",
    "train s",
    "importance s",
    "rest s",
    "importance share",
    "× fine-tune",
    "train ms / 1k sample-epochs",
    "importance ms / 1k samples",
]


def profile_rows(costs: Sequence[UpdateCost]) -> list[list[str]]:
    base = next((c.total_s for c in costs if c.method == "finetune"), None)
    return [
        [
            c.method,
            f"{c.total_s:.2f}",
            f"{c.train_s:.2f}",
            f"{c.importance_s:.3f}",
            f"{c.rest_s:.3f}",
            f"{100 * c.importance_share:.1f} %",
            "—" if base is None else f"{c.total_s / base:.2f}",
            f"{c.train_ms_per_1k_sample_epochs:.0f}",
            f"{c.importance_ms_per_1k_samples:.0f}",
        ]
        for c in costs
    ]
