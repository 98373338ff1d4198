"""Training budget by validation: train until a validation curve stops improving, then keep the best weights.

A fixed number of epochs suits one data scale: a small post gets a few dozen optimiser steps, a large one more than
it needs.  Early stopping (Prechelt 1998, "Early stopping — but when?") measures instead: every ``eval_every``
steps from ``min_steps`` on, the accuracy on a validation slice (never trained on while the budget runs); training
ends after ``patience`` evaluations without an improvement larger than ``min_delta``, or at ``max_steps``, and the
weights of the best evaluation are restored.

`EarlyStopping` is the decision alone (numbers in, decisions out), testable on synthetic curves.
`ValidationBudget` applies it to a model that `cl_core.learner.Learner.learn` trains: it is told after every
optimisation step, evaluates when due, keeps a copy of the best weights, and says when the budget is spent.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

StopReason = Literal["plateau", "max_steps", "deadline"]


@dataclass
class EarlyStopping:
    """Patience on a validation curve (``mode="min"``: a loss; ``"max"``: an accuracy).

    Evaluations are due at ``min_steps``, every ``eval_every`` steps after it, and at ``max_steps``; only those
    count (a curve is noisy before ``min_steps``, and the weights kept have had at least that many steps)."""

    patience: int = 5
    min_steps: int = 100
    max_steps: int = 2000
    eval_every: int = 20
    min_delta: float = 0.0
    mode: Literal["min", "max"] = "min"
    best: float | None = None
    best_step: int | None = None
    waited: int = 0  # evaluations since the last improvement
    evaluations: list[tuple[int, float]] = field(default_factory=list)
    stopped_by: StopReason | None = None

    def __post_init__(self) -> None:
        if self.patience < 1 or self.eval_every < 1:
            raise ValueError(f"patience and eval_every must be at least 1, got {self.patience}, {self.eval_every}")
        if not self.max_steps >= 1 or not 0 <= self.min_steps <= self.max_steps:
            raise ValueError(
                f"need 0 <= min_steps <= max_steps and max_steps >= 1, got {self.min_steps}, {self.max_steps}"
            )
        if not (math.isfinite(self.min_delta) and self.min_delta >= 0):
            raise ValueError(f"min_delta must be a finite non-negative number, got {self.min_delta}")
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {self.mode!r}")

    def due(self, step: int) -> bool:
        """Whether the curve is evaluated after ``step`` optimisation steps."""
        if step >= self.max_steps:
            return True
        return step >= self.min_steps and (step - self.min_steps) % self.eval_every == 0

    def improves(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def observe(self, step: int, value: float) -> bool:
        """Record the curve's value after ``step`` steps; True when training should stop now."""
        self.evaluations.append((step, value))
        if self.improves(value):
            self.best, self.best_step, self.waited = value, step, 0
        else:
            self.waited += 1
        if step >= self.max_steps:
            self.stopped_by = "max_steps"
        elif self.waited >= self.patience and step >= self.min_steps:
            self.stopped_by = "plateau"
        return self.stopped_by is not None


class TrainingBudget(Protocol):
    """What `Learner.learn` asks of a budget: told after every step, asked before every batch whether it is spent,
    and told once when training ended by itself (the epochs ran out) so that it can restore its best weights."""

    @property
    def spent(self) -> bool: ...

    def after_step(self) -> None: ...

    def finish(self) -> None: ...


@dataclass
class ValidationCurve:
    """Loss and accuracy of a model on a validation set (eval mode, batched, every output competing)."""

    inputs: Tensor
    targets: Tensor
    batch_size: int = 1024

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.targets) or len(self.targets) == 0:
            raise ValueError(
                f"a validation set needs as many targets as inputs, and some: got {len(self.inputs)} "
                f"inputs, {len(self.targets)} targets"
            )

    def measure(self, model: nn.Module) -> tuple[float, float]:
        """(mean cross-entropy, accuracy)."""
        was_training = model.training
        model.eval()
        param = next(model.parameters())
        total, correct = 0.0, 0
        try:
            with torch.no_grad():
                for start in range(0, len(self.targets), self.batch_size):
                    x = self.inputs[start : start + self.batch_size].to(param.device, param.dtype)
                    y = self.targets[start : start + self.batch_size].to(param.device)
                    logits = model(x)
                    total += float(F.cross_entropy(logits, y, reduction="sum"))
                    correct += int((logits.argmax(1) == y).sum())
        finally:
            model.train(was_training)
        return total / len(self.targets), correct / len(self.targets)


LOSS_TIE_BREAK = 1e-4
"""Equal validation accuracies are told apart by the loss: the curve is accuracy − 1e-4 × loss (below one sample's
share of accuracy for validation sets of up to a few thousand samples)."""


MIN_LOSS_GAIN = 0.01
"""At equal accuracy, the loss must fall by this much to count as an improvement (a loss that keeps creeping down on
data already classified right does not keep training going)."""


def accuracy_stopping(patience: int, min_steps: int, max_steps: int, eval_every: int) -> EarlyStopping:
    """The rule a `ValidationBudget` applies: validation accuracy, a loss fall of `MIN_LOSS_GAIN` as a tie-break."""
    return EarlyStopping(
        patience=patience,
        min_steps=min_steps,
        max_steps=max_steps,
        eval_every=eval_every,
        min_delta=LOSS_TIE_BREAK * MIN_LOSS_GAIN,
        mode="max",
    )


class ValidationBudget:
    """Early stopping on validation accuracy (ties broken by the loss), for one training run of ``model``.

    Accuracy, not the loss alone: a classifier's validation cross-entropy often rises (it grows confident) while
    its accuracy still improves, and the weights are kept for what they predict.

    ``deadline`` (a ``clock()`` value) ends the run at the next step once passed, keeping the best weights seen
    (evaluating once more if nothing was evaluated yet)."""

    def __init__(
        self,
        model: nn.Module,
        curve: ValidationCurve,
        stopping: EarlyStopping,
        *,
        deadline: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if stopping.mode != "max":
            raise ValueError("a validation budget maximises accuracy: its EarlyStopping needs mode='max'")
        self.model, self.curve, self.stopping = model, curve, stopping
        self.deadline, self.clock = deadline, clock
        self.steps = 0
        self.loss: dict[int, float] = {}  # step → validation loss, the tie-break of equal accuracies
        self._best_state: dict[str, Tensor] | None = None
        self._spent = False

    @property
    def spent(self) -> bool:
        return self._spent

    def after_step(self) -> None:
        self.steps += 1
        if self._spent:
            return
        if self.stopping.due(self.steps) and self._evaluate():
            self._spent = True
        elif self.deadline is not None and self.clock() >= self.deadline:
            self.stopping.stopped_by = "deadline"
            self._spent = True
        if self._spent:
            self._restore()

    def finish(self) -> None:
        """Training ended without the budget saying so: evaluate where it stands if that is new, keep the best."""
        if not self._spent:
            if not self.stopping.evaluations or self.stopping.evaluations[-1][0] != self.steps:
                self._evaluate()
            self._spent = True
        self._restore()

    @property
    def best_step(self) -> int:
        return self.stopping.best_step if self.stopping.best_step is not None else self.steps

    @property
    def best_accuracy(self) -> float | None:
        """Validation accuracy of the weights kept."""
        if self.stopping.best is None:
            return None
        return self.stopping.best + LOSS_TIE_BREAK * min(self.loss[self.best_step], 100.0)

    @property
    def best_loss(self) -> float | None:
        """Validation loss of the weights kept."""
        return self.loss.get(self.best_step) if self.stopping.best_step is not None else None

    def _evaluate(self) -> bool:
        loss, accuracy = self.curve.measure(self.model)
        self.loss[self.steps] = loss
        stop = self.stopping.observe(self.steps, accuracy - LOSS_TIE_BREAK * min(loss, 100.0))
        if self.stopping.best_step == self.steps:
            self._best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return stop

    def _restore(self) -> None:
        if self._best_state is not None:
            self.model.load_state_dict(self._best_state)
            self._best_state = None
        elif self.stopping.best_step is None:  # ended before any evaluation (a deadline): measure what it has
            self._evaluate()
            self._best_state = None
