"""Plain per-sample loops: the definitions, written as directly as possible.

Slow on purpose (one backward pass per sample, and per class for the true Fisher): the tests check the fast
paths against these, and ``clbench speed`` measures how much faster the fast paths are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cl_core.persample import trainable_parameters


def _loop(
    model: nn.Module,
    inputs: Tensor,
    active_outputs: Sequence[int] | None,
    per_sample: object,
) -> dict[str, Tensor]:
    params = trainable_parameters(model)
    names = list(params)
    acc = {name: torch.zeros_like(p) for name, p in params.items()}
    active = None if active_outputs is None else torch.as_tensor(list(active_outputs))
    was_training = model.training
    model.eval()
    try:
        for n in range(inputs.shape[0]):
            z = model(inputs[n : n + 1])[0]
            if active is not None:
                z = z[active]
            for weight, scalar, reduce in per_sample(n, z):  # type: ignore[operator]
                grads = torch.autograd.grad(scalar, [params[k] for k in names], retain_graph=True, allow_unused=True)
                for name, g in zip(names, grads, strict=True):
                    if g is not None:
                        acc[name] += weight * (g.square() if reduce == "square" else g.abs())
    finally:
        model.train(was_training)
    return {name: value / inputs.shape[0] for name, value in acc.items()}


def fisher_diagonal_loop(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor | None = None,
    *,
    mode: str = "true",
    active_outputs: Sequence[int] | None = None,
) -> dict[str, Tensor]:
    """F = (1/N) Σ_n Σ_c p(c|x_n) (∂ log p(c|x_n)/∂θ)²  (true)  or  (1/N) Σ_n (∂ log p(y_n|x_n)/∂θ)²."""
    position = None if active_outputs is None else {int(o): i for i, o in enumerate(active_outputs)}

    def per_sample(n: int, z: Tensor) -> list[tuple[float, Tensor, str]]:
        logp = torch.log_softmax(z, dim=0)
        if mode == "empirical":
            assert targets is not None
            t = int(targets[n])
            return [(1.0, logp[t if position is None else position[t]], "square")]
        probs = logp.detach().exp()
        return [(float(probs[c]), logp[c], "square") for c in range(z.shape[0])]

    return _loop(model, inputs, active_outputs, per_sample)


def mas_importance_loop(
    model: nn.Module, inputs: Tensor, *, active_outputs: Sequence[int] | None = None
) -> dict[str, Tensor]:
    """Ω = (1/N) Σ_n |∂ ‖f(x_n)‖²₂ / ∂θ|."""

    def per_sample(n: int, z: Tensor) -> list[tuple[float, Tensor, str]]:
        return [(1.0, z.square().sum(), "abs")]

    return _loop(model, inputs, active_outputs, per_sample)


def batch_mean_squared_gradient(model: nn.Module, inputs: Tensor, targets: Tensor) -> dict[str, Tensor]:
    """(∂ mean_n log p(y_n|x_n) / ∂θ)²: the biased shortcut some libraries take, for contrast in tests."""
    params = trainable_parameters(model)
    logp = torch.log_softmax(model(inputs), dim=1).gather(1, targets[:, None]).mean()
    grads = torch.autograd.grad(logp, list(params.values()))
    return {name: g.square() for name, g in zip(params, grads, strict=True)}
