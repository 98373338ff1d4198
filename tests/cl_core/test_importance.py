"""The fast importance paths equal their definitions (plain per-sample loops, closed forms, finite differences)."""

from typing import Literal

import pytest
import torch
from torch import nn

from cl_core.importance import fisher_diagonal, mas_importance
from cl_core.reference import batch_mean_squared_gradient, fisher_diagonal_loop, mas_importance_loop
from tests.cl_core.models_zoo import build, inputs_for

MODELS = ["mlp", "cnn", "unusual"]


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].shape == b[name].shape, name
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=name)


def targets(n: int, k: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("mode", ["true", "empirical"])
def test_fisher_matches_per_sample_loop(name: str, mode: Literal["true", "empirical"]) -> None:
    model, x, y = build(name), inputs_for(name, 11), targets(11)
    fast = fisher_diagonal(model, x, y, mode=mode, batch_size=4)
    slow = fisher_diagonal_loop(model, x, y, mode=mode)
    assert_close(fast, slow)
    assert all(v.abs().sum() > 0 for v in fast.values())


@pytest.mark.parametrize("name", MODELS)
def test_torch_func_path_matches_per_sample_loop(name: str) -> None:
    model, x, y = build(name), inputs_for(name, 6), targets(6)
    assert_close(fisher_diagonal(model, x, mode="true", path="func"), fisher_diagonal_loop(model, x, mode="true"))
    assert_close(
        fisher_diagonal(model, x, y, mode="empirical", path="func"),
        fisher_diagonal_loop(model, x, y, mode="empirical"),
    )
    assert_close(mas_importance(model, x, path="func"), mas_importance_loop(model, x))


@pytest.mark.parametrize("name", MODELS)
def test_mas_matches_per_sample_loop(name: str) -> None:
    model, x = build(name), inputs_for(name, 9)
    assert_close(mas_importance(model, x, batch_size=4), mas_importance_loop(model, x))


@pytest.mark.parametrize("name", MODELS)
def test_active_outputs_match_loop(name: str) -> None:
    model, x = build(name), inputs_for(name, 7)
    y = torch.tensor([1, 3, 3, 1, 1, 3, 1])
    assert_close(
        fisher_diagonal(model, x, y, mode="empirical", active_outputs=[1, 3]),
        fisher_diagonal_loop(model, x, y, mode="empirical", active_outputs=[1, 3]),
    )
    assert_close(
        fisher_diagonal(model, x, mode="true", active_outputs=[3, 1]),
        fisher_diagonal_loop(model, x, mode="true", active_outputs=[3, 1]),
    )
    assert_close(mas_importance(model, x, active_outputs=[0, 2]), mas_importance_loop(model, x, active_outputs=[0, 2]))


@pytest.mark.parametrize("name", MODELS)
def test_results_do_not_depend_on_batch_size(name: str) -> None:
    model, x, y = build(name), inputs_for(name, 10), targets(10)
    for fn in (
        lambda b: fisher_diagonal(model, x, mode="true", batch_size=b),
        lambda b: fisher_diagonal(model, x, y, mode="empirical", batch_size=b),
        lambda b: mas_importance(model, x, batch_size=b),
    ):
        assert_close(fn(1), fn(3), atol=1e-12)
        assert_close(fn(3), fn(64), atol=1e-12)


def test_differs_from_squared_batch_mean_gradient() -> None:
    model, x, y = build("mlp"), inputs_for("mlp", 32), targets(32)
    exact = fisher_diagonal(model, x, y, mode="empirical")
    biased = batch_mean_squared_gradient(model, x, y)
    # (mean g)² ≤ mean g² (Jensen), strictly so where per-sample gradients disagree
    for name in exact:
        assert torch.all(biased[name] <= exact[name] + 1e-12)
    assert sum(float((exact[n] - biased[n]).sum()) for n in exact) > 0.1 * sum(float(v.sum()) for v in exact.values())


def test_true_fisher_of_linear_softmax_matches_closed_form() -> None:
    torch.manual_seed(0)
    model = nn.Linear(5, 3).double()
    x = torch.randn(20, 5, dtype=torch.float64)
    y = targets(20, 3)
    with torch.no_grad():
        p = torch.softmax(model(x), dim=1)
    # Σ_c p_c (1[c=k] − p_k)² = p_k (1 − p_k): F_W[k, i] = mean_n p_nk (1 − p_nk) x_ni²
    v = p * (1 - p)
    true = fisher_diagonal(model, x, mode="true")
    torch.testing.assert_close(true["weight"], v.T @ x.square() / 20)
    torch.testing.assert_close(true["bias"], v.mean(0))
    # empirical: F_W[k, i] = mean_n (1[y_n = k] − p_nk)² x_ni²
    e = (nn.functional.one_hot(y, 3).double() - p).square()
    empirical = fisher_diagonal(model, x, y, mode="empirical")
    torch.testing.assert_close(empirical["weight"], e.T @ x.square() / 20)
    torch.testing.assert_close(empirical["bias"], e.mean(0))


def test_mas_matches_finite_differences() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    eps = 1e-6
    expected = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            omega = torch.zeros_like(p)
            for idx in range(p.numel()):
                flat = p.view(-1)
                old = float(flat[idx])
                flat[idx] = old + eps
                up = model(x).square().sum(1)
                flat[idx] = old - eps
                down = model(x).square().sum(1)
                flat[idx] = old
                omega.view(-1)[idx] = ((up - down) / (2 * eps)).abs().mean()
            expected[name] = omega
    assert_close(mas_importance(model, x), expected, atol=1e-7)


def test_eval_mode_and_no_side_effects() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3)).double()
    model.train()
    x = torch.randn(12, 4, dtype=torch.float64)
    model(x)  # give BatchNorm non-trivial running statistics
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    first = fisher_diagonal(model, x, mode="true")
    second = fisher_diagonal(model, x, mode="true")
    assert_close(first, second, atol=0)  # no dropout noise
    assert model.training  # restored
    for k, v in model.state_dict().items():
        assert torch.equal(v, stats[k]), k  # running statistics untouched
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    assert_close(first, fisher_diagonal_loop(model, x, mode="true"))


def test_frozen_parameters_are_left_out() -> None:
    model = build("mlp")
    model.get_parameter("0.weight").requires_grad_(False)
    result = mas_importance(model, inputs_for("mlp", 4))
    assert "0.weight" not in result and "0.bias" in result


def test_invalid_inputs_are_rejected() -> None:
    model = build("mlp")
    x = inputs_for("mlp", 4)
    x[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"inputs\[2\]"):
        mas_importance(model, x)
    with pytest.raises(ValueError, match="empty"):
        mas_importance(model, x[:0])
    with pytest.raises(ValueError, match="needs targets"):
        fisher_diagonal(model, inputs_for("mlp", 4), mode="empirical")
    with pytest.raises(ValueError, match=r"targets\[1\]"):
        fisher_diagonal(model, inputs_for("mlp", 3), torch.tensor([0, 2, 1]), mode="empirical", active_outputs=[0, 1])
