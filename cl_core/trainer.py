"""Train one experience with a method's penalty: deterministic, observable, stoppable.

The same loop serves the benchmark, the service's workers and the tests.  A batch may mix samples whose
competing outputs differ (joint training over task-incremental tasks, replayed exemplars of earlier tasks): each
sample carries a row of the output mask, and the cross-entropy only lets its active outputs compete.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cl_core.experience import Experience
from cl_core.methods.base import ContinualMethod


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings for one experience (the protocol's defaults: Adam 1e-3, batch 128, 10 epochs)."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = 0.0
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(f"invalid training settings: {self}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; expected 'adam' or 'sgd'")


@dataclass(frozen=True)
class Batch:
    """One training batch as a method's `batch_loss` sees it: the current data first, then ``replayed`` exemplars
    appended by an exemplar memory; ``mask`` (B, K) marks each sample's competing outputs (None: all); ``ids`` are
    the store's sample ids of the current data (-1 where unknown), None when the data carries none."""

    inputs: Tensor
    targets: Tensor
    mask: Tensor | None = None
    replayed: int = 0
    ids: Tensor | None = None
    epoch: int = 1  # the epoch this batch belongs to, 1-based, of ``epochs``
    epochs: int = 1

    @property
    def current(self) -> int:
        """How many leading samples are the experience's own data (not replayed)."""
        return int(self.targets.shape[0]) - self.replayed


@dataclass(frozen=True)
class Progress:
    epoch: int
    epochs: int
    step: int
    total_steps: int
    loss: float

    @property
    def fraction(self) -> float:
        return self.step / self.total_steps if self.total_steps else 1.0


@dataclass(frozen=True)
class TrainResult:
    steps: int
    epochs: int
    loss: float  # mean training loss of the last epoch (current data, without the penalty)
    stopped: bool
    seconds: float


class ReplaySource(Protocol):
    """Exemplars mixed into every training batch (an exemplar memory)."""

    def replay_batch(
        self, size: int, num_outputs: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor | None] | None:
        """(inputs, targets, per-sample output mask or None) of exemplars to add to a batch of ``size`` current
        samples (the memory chooses how many: its replay ratio), or None when empty."""


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' → CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def output_mask(active: Sequence[Sequence[int] | None], num_outputs: int, device: torch.device) -> Tensor | None:
    """(G, K) boolean table of which outputs compete for each group; None when every group uses all outputs."""
    if all(a is None for a in active):
        return None
    table = torch.zeros(len(active), num_outputs, dtype=torch.bool, device=device)
    for g, outputs in enumerate(active):
        if outputs is None:
            table[g] = True
        else:
            index = torch.tensor(list(outputs), dtype=torch.long, device=device)
            if bool((index >= num_outputs).any()):
                raise ValueError(f"active outputs {list(outputs)} exceed the model's {num_outputs} outputs")
            table[g, index] = True
    return table


def masked_cross_entropy(logits: Tensor, targets: Tensor, mask: Tensor | None) -> Tensor:
    """Cross-entropy where each sample's inactive outputs (mask False) do not compete."""
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return F.cross_entropy(logits, targets)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def training_step(
    model: nn.Module,
    method: ContinualMethod,
    optimizer: torch.optim.Optimizer,
    inputs: Tensor,
    targets: Tensor,
    mask: Tensor | None = None,
    *,
    closed_form: bool = True,
    replayed: int = 0,
    ids: Tensor | None = None,
    epoch: tuple[int, int] = (1, 1),
) -> float:
    """One optimisation step on a batch; returns the data loss (the cross-entropy on the batch).

    Order: forward → the method's `extra_loss` (activations) and `batch_loss` (batch and outputs) → backward of the
    data side → `after_backward` (``.grad`` is the data loss's gradient) → the penalty's gradient, in closed form
    when the method supports it (no autograd graph for it), else by a backward of the penalty (gradients add up,
    so this equals one backward of the sum) → the optimiser's step."""
    optimizer.zero_grad(set_to_none=True)
    logits = model(inputs)
    loss = masked_cross_entropy(logits, targets, mask)
    total = loss
    extra = method.extra_loss()
    if extra is not None:
        total = total + extra
    added = method.batch_loss(model, Batch(inputs, targets, mask, replayed, ids, *epoch), logits)
    if added is not None:
        total = total + added
    total.backward()
    method.after_backward(model)
    if closed_form and method.closed_form_grad:
        method.add_penalty_grad(model)
    else:
        penalty = method.penalty(model)
        if penalty.requires_grad:
            penalty.backward()
    optimizer.step()
    return float(loss.detach())


@dataclass
class _Pool:
    """Training data as one tensor set, with a group index per sample into the groups' active outputs."""

    inputs: Tensor
    targets: Tensor
    groups: Tensor
    active: list[tuple[int, ...] | None]
    ids: Tensor | None = None  # the store's sample ids (-1: unknown), None when no experience has any

    @classmethod
    def of(cls, experiences: Sequence[Experience]) -> _Pool:
        for i, e in enumerate(experiences):
            if e.targets is None:
                raise ValueError(f"experience {i} is unlabeled: training needs labels")
        ids = None
        if any(e.ids is not None for e in experiences):
            ids = torch.cat(
                [
                    e.ids.cpu().long() if e.ids is not None else torch.full((len(e),), -1, dtype=torch.long)
                    for e in experiences
                ]
            )
        return cls(
            torch.cat([e.inputs for e in experiences]),
            torch.cat([e.targets for e in experiences if e.targets is not None]),
            torch.cat([torch.full((len(e),), g, dtype=torch.long) for g, e in enumerate(experiences)]),
            [e.active_outputs for e in experiences],
            ids,
        )


def train(
    model: nn.Module,
    method: ContinualMethod,
    data: Experience | Sequence[Experience] | Iterable[tuple[Tensor, Tensor]],
    config: TrainConfig = TrainConfig(),
    *,
    replay: ReplaySource | None = None,
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    after_step: Callable[[], None] | None = None,
) -> TrainResult:
    """Train on one experience (or several trained together, or a DataLoader of (inputs, targets)) for
    ``config.epochs`` epochs with the method's penalty, checking ``should_stop`` between batches and calling
    ``after_step`` after every optimisation step (e.g. to project weights onto a constraint)."""
    device = resolve_device(config.device)
    model.to(device)
    generator = torch.Generator().manual_seed(config.seed)
    pool = None
    loader: Iterable[tuple[Tensor, Tensor]] | None = None
    if isinstance(data, Experience):
        pool = _Pool.of([data])
    elif isinstance(data, Sequence) and all(isinstance(e, Experience) for e in data):
        pool = _Pool.of(list(data))
    else:
        loader = data  # type: ignore[assignment]
    if pool is not None:
        steps_per_epoch = -(-len(pool.targets) // config.batch_size)
    else:
        steps_per_epoch = len(loader) if hasattr(loader, "__len__") else 0  # type: ignore[arg-type]
    total_steps = steps_per_epoch * config.epochs
    optimizer = make_optimizer(model, config)
    start = time.perf_counter()
    step, epoch_losses, stopped, epochs_done = 0, [0.0], False, 0
    model.train()
    fork_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices), method.training_hooks(model):
        torch.manual_seed(config.seed)
        for epoch in range(config.epochs):
            epoch_losses = []
            for x, y, mask, ids in _batches(pool, loader, config.batch_size, generator, model, device):
                if should_stop is not None and should_stop():
                    stopped = True
                    break
                replayed = 0
                if replay is not None:
                    current = len(y)
                    x, y, mask = _with_replay(x, y, mask, replay, _num_outputs(model, x), generator, device)
                    replayed = len(y) - current
                loss = training_step(
                    model, method, optimizer, x, y, mask, replayed=replayed, ids=ids, epoch=(epoch + 1, config.epochs)
                )
                if after_step is not None:
                    after_step()
                method.after_step(model)
                epoch_losses.append(loss)
                step += 1
                if progress is not None:
                    progress(Progress(epoch + 1, config.epochs, step, max(total_steps, step), loss))
            if stopped:
                break
            epochs_done += 1
    mean_loss = sum(epoch_losses) / len(epoch_losses) if epoch_losses else float("nan")
    return TrainResult(step, epochs_done, mean_loss, stopped, time.perf_counter() - start)


def _num_outputs(model: nn.Module, x: Tensor) -> int:
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear):
        return head.out_features
    with torch.no_grad():
        return int(model(x[:1]).shape[1])


def _batches(
    pool: _Pool | None,
    loader: Iterable[tuple[Tensor, Tensor]] | None,
    batch_size: int,
    generator: torch.Generator,
    model: nn.Module,
    device: torch.device,
) -> Iterable[tuple[Tensor, Tensor, Tensor | None, Tensor | None]]:
    if pool is None:
        assert loader is not None
        for x, y in loader:
            yield x.to(device), y.to(device), None, None
        return
    table = output_mask(pool.active, _num_outputs(model, pool.inputs[:1].to(device)), device)
    order = torch.randperm(len(pool.targets), generator=generator)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        mask = None if table is None else table[pool.groups[idx].to(device)]
        ids = None if pool.ids is None else pool.ids[idx]
        yield pool.inputs[idx].to(device), pool.targets[idx].to(device), mask, ids


def _with_replay(
    x: Tensor,
    y: Tensor,
    mask: Tensor | None,
    replay: ReplaySource,
    num_outputs: int,
    generator: torch.Generator,
    device: torch.device,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Concatenate a replayed batch to the current one (experience replay; the memory decides its size)."""
    batch = replay.replay_batch(len(y), num_outputs, generator)
    if batch is None:
        return x, y, mask
    rx, ry, rmask = batch
    rx, ry = rx.to(device), ry.to(device)
    if mask is None and rmask is None:
        return torch.cat([x, rx]), torch.cat([y, ry]), None
    every = torch.ones(1, num_outputs, dtype=torch.bool, device=device)
    mask = mask if mask is not None else every.expand(len(y), -1)
    rmask = rmask.to(device) if rmask is not None else every.expand(len(ry), -1)
    return torch.cat([x, rx]), torch.cat([y, ry]), torch.cat([mask, rmask])
