"""The training budget by validation: early stopping on synthetic curves, and on a model that really trains."""

import math

import pytest
import torch
from torch import nn

from cl_core.budget import EarlyStopping, ValidationBudget, ValidationCurve, accuracy_stopping
from cl_core.experience import Experience
from cl_core.learner import Learner
from cl_core.trainer import TrainConfig


def follow(stopping: EarlyStopping, curve: list[float]) -> int | None:
    """Feed ``curve[step]`` at every due step; the step at which the rule stops, or None."""
    for step in range(1, stopping.max_steps + 1):
        if stopping.due(step) and stopping.observe(step, curve[step]):
            return step
    return None


def test_it_stops_on_a_plateau_after_its_patience_and_keeps_the_best_step() -> None:
    # accuracy rises until step 100, then stays flat
    curve = [min(step, 100) / 100 for step in range(1001)]
    stopping = EarlyStopping(patience=3, min_steps=20, max_steps=1000, eval_every=10, mode="max")
    assert follow(stopping, curve) == 130  # 110, 120, 130 bring nothing new
    assert stopping.stopped_by == "plateau" and stopping.best_step == 100 and stopping.best == 1.0


def test_it_keeps_training_while_the_curve_rises_up_to_max_steps() -> None:
    curve = [1 - math.exp(-step / 300) for step in range(501)]  # slowly, but always, better
    stopping = EarlyStopping(patience=2, min_steps=10, max_steps=500, eval_every=10, mode="max")
    assert follow(stopping, curve) == 500
    assert stopping.stopped_by == "max_steps" and stopping.best_step == 500


def test_a_falling_loss_is_a_rising_curve_in_min_mode_and_noise_within_patience_is_tolerated() -> None:
    loss = [1 / (1 + step) + (0.01 if step % 40 == 0 else 0.0) for step in range(301)]  # a bump every 40 steps
    stopping = EarlyStopping(patience=2, min_steps=10, max_steps=300, eval_every=10, mode="min")
    assert follow(stopping, loss) == 300 and stopping.stopped_by == "max_steps"


def test_nothing_is_judged_before_min_steps_and_small_gains_below_min_delta_do_not_count() -> None:
    flat = [0.5] * 201
    stopping = EarlyStopping(patience=1, min_steps=100, max_steps=200, eval_every=10, mode="max")
    assert not any(stopping.due(step) for step in range(1, 100))
    assert follow(stopping, flat) == 110  # the first evaluation at 100, no gain at 110
    creeping = [0.5 + 1e-4 * step for step in range(201)]
    stopping = EarlyStopping(patience=2, min_steps=10, max_steps=200, eval_every=10, min_delta=0.01, mode="max")
    assert follow(stopping, creeping) == 30 and stopping.best_step == 10


def test_nan_never_counts_as_an_improvement() -> None:
    stopping = EarlyStopping(patience=2, min_steps=1, max_steps=100, eval_every=1, mode="min")
    assert not stopping.observe(1, 1.0)
    assert not stopping.observe(2, float("nan"))
    assert stopping.observe(3, float("nan")) and stopping.best == 1.0 and stopping.best_step == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"patience": 0},
        {"eval_every": 0},
        {"min_steps": 10, "max_steps": 5},
        {"max_steps": 0, "min_steps": 0},
        {"min_delta": -1.0},
        {"min_delta": float("nan")},
        {"mode": "sideways"},
    ],
)
def test_invalid_rules_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        EarlyStopping(**bad)  # type: ignore[arg-type]


def separable(n: int = 60) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    targets = torch.arange(n) % 3
    inputs = torch.eye(3)[targets] * 3 + 0.3 * torch.randn(n, 3, generator=generator)
    return inputs, targets


def test_the_budget_restores_the_weights_of_its_best_evaluation() -> None:
    inputs, targets = separable()
    model = nn.Linear(3, 3)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3))
        model.bias.zero_()
    good = {k: v.clone() for k, v in model.state_dict().items()}
    stopping = EarlyStopping(patience=2, min_steps=1, max_steps=50, eval_every=1, mode="max")
    budget = ValidationBudget(model, ValidationCurve(inputs, targets), stopping)
    budget.after_step()  # step 1: perfect
    assert budget.best_accuracy == 1.0 and not budget.spent
    with torch.no_grad():
        model.weight.copy_(-torch.eye(3))  # then the weights go bad
    budget.after_step()
    budget.after_step()
    assert budget.spent and stopping.stopped_by == "plateau" and budget.best_step == 1
    assert all(torch.equal(model.state_dict()[k], good[k]) for k in good)


def test_a_deadline_ends_the_run_with_what_it_has() -> None:
    inputs, targets = separable()
    now = [0.0]
    stopping = EarlyStopping(patience=5, min_steps=100, max_steps=1000, eval_every=10, mode="max")
    budget = ValidationBudget(
        nn.Linear(3, 3), ValidationCurve(inputs, targets), stopping, deadline=5.0, clock=lambda: now[0]
    )
    budget.after_step()
    assert not budget.spent
    now[0] = 6.0
    budget.after_step()
    assert budget.spent and stopping.stopped_by == "deadline" and budget.best_step == 2


def test_a_learner_trains_until_the_validation_accuracy_stops_improving() -> None:
    inputs, targets = separable(90)
    model = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 3))
    learner = Learner.build("finetune")
    stopping = accuracy_stopping(patience=3, min_steps=10, max_steps=2000, eval_every=5)
    budget = ValidationBudget(model, ValidationCurve(inputs[60:], targets[60:]), stopping)
    report = learner.learn(
        model, Experience(inputs[:60], targets[:60]), TrainConfig(epochs=2000, batch_size=16, lr=0.05), budget=budget
    )
    assert not report.train.stopped  # a spent budget is a normal end, not a cancellation
    assert stopping.stopped_by == "plateau" and report.train.steps == budget.steps < 100
    assert budget.best_accuracy == 1.0 and learner.experiences == 1
