"""Parameter importance: the diagonal Fisher information (EWC) and MAS, exact per sample.

Both return ``dict[str, Tensor]`` keyed like ``model.named_parameters()`` (trainable parameters only), averaged
over samples.  The machinery is in `cl_core.persample`; this module only says which per-sample gradients to take:

* true Fisher   F = (1/N) Σ_n Σ_c p(c|x_n) (∂ log p(c|x_n)/∂θ)²      (Kirkpatrick et al. 2017, eq. 3 / suppl.)
* empirical     F = (1/N) Σ_n (∂ log p(y_n|x_n)/∂θ)²
* MAS           Ω = (1/N) Σ_n |∂ ‖f(x_n)‖²₂ / ∂θ|                      (Aljundi et al. 2018, eqs. 2–4)

Squaring the gradient of a mini-batch mean (as several libraries do) gives (1/B Σ g_n)², not (1/B) Σ g_n²; taking
|·| after summing a batch lets opposite signs cancel.  Neither is the quantity the papers define.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from cl_core.persample import Directions, EnginePath, per_sample_statistic
from cl_core.validation import check_inputs, check_targets

FisherMode = Literal["true", "empirical"]


def _active_index(active_outputs: Sequence[int] | Tensor | None) -> Tensor | None:
    if active_outputs is None:
        return None
    index = torch.as_tensor(active_outputs, dtype=torch.long).reshape(-1)
    if index.numel() == 0:
        raise ValueError("active_outputs is empty: at least one output must compete")
    if len(set(index.tolist())) != index.numel():
        raise ValueError(f"active_outputs has repeated indices: {index.tolist()}")
    return index


def _positions(targets: Tensor, active: Tensor | None) -> Tensor:
    """Targets as positions among the active outputs (targets are full output indices)."""
    if active is None:
        return targets
    lookup = {int(o): i for i, o in enumerate(active.tolist())}
    positions = []
    for i, t in enumerate(targets.tolist()):
        if t not in lookup:
            raise ValueError(f"targets[{i}] = {t} is not among the active outputs {active.tolist()}")
        positions.append(lookup[t])
    return torch.tensor(positions, dtype=torch.long, device=targets.device)


def fisher_diagonal(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor | None = None,
    *,
    mode: FisherMode = "true",
    active_outputs: Sequence[int] | Tensor | None = None,
    batch_size: int = 256,
    path: EnginePath = "auto",
) -> dict[str, Tensor]:
    """Diagonal of the Fisher information, averaged over samples.

    ``mode="true"`` takes the expectation over the model's own predictive distribution exactly (a sum over the
    active classes weighted by p(y|x)); ``mode="empirical"`` uses the given targets (full output indices).
    ``active_outputs`` lists the outputs that compete in the softmax (masked heads); the others are ignored.
    ``path="func"`` forces the general torch.func path for every parameter (the fast factorisation is the default).
    """
    check_inputs(inputs)
    active = _active_index(active_outputs)
    if mode == "empirical":
        if targets is None:
            raise ValueError("mode='empirical' needs targets")
        check_targets(targets, len(inputs))
        positions = _positions(targets, active)
    elif mode == "true":
        positions = None
    else:
        raise ValueError(f"unknown Fisher mode {mode!r}; expected 'true' or 'empirical'")

    def directions(z: Tensor, t: Tensor | None) -> Directions:
        p = torch.softmax(z, dim=1)  # (B, K)
        if mode == "empirical":
            assert t is not None
            onehot = torch.nn.functional.one_hot(t, z.shape[1]).to(z.dtype)
            return Directions((onehot - p).unsqueeze(0), None)
        eye = torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
        # ∂ log p_c / ∂z = e_c − p for every class c, weighted by p_c
        return Directions(eye[:, None, :] - p[None, :, :], p.T.contiguous())

    total = per_sample_statistic(
        model,
        inputs,
        positions,
        directions,
        "square",
        active_outputs=active,
        batch_size=batch_size,
        path=path,
    )
    return {name: value / len(inputs) for name, value in total.items()}


def mas_importance(
    model: nn.Module,
    inputs: Tensor,
    *,
    active_outputs: Sequence[int] | Tensor | None = None,
    batch_size: int = 256,
    path: EnginePath = "auto",
) -> dict[str, Tensor]:
    """MAS importance Ω = mean over samples of |∂‖f(x)‖²₂/∂θ|, from inputs alone (no labels).

    f(x) are the (active) logits; the absolute value is taken per sample before averaging.
    """
    check_inputs(inputs)
    active = _active_index(active_outputs)

    def directions(z: Tensor, _: Tensor | None) -> Directions:
        return Directions((2.0 * z).unsqueeze(0), None)  # ∂‖z‖²/∂z = 2z

    total = per_sample_statistic(
        model, inputs, None, directions, "abs", active_outputs=active, batch_size=batch_size, path=path
    )
    return {name: value / len(inputs) for name, value in total.items()}
