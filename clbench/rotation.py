"""`clbench rotation`: how far from diagonal the Fisher is, before and after R-EWC's rotation (Liu et al. 2018).

A small MLP is trained on MNIST-5k; for each layer R-EWC rotates, the full true Fisher of a block of the layer's
weight is formed exactly from per-sample gradients, F = (1/N) Σₙ Σ_c p(c|xₙ) gₙ,c gₙ,cᵀ, in plain coordinates
(g = vec(δ xᵀ)) and in rotated ones (g′ = vec(δ′ x′ᵀ), δ′ = U₂ᵀδ, x′ = U₁ᵀx, the rotations measured on the same
samples).  Its off-diagonal share is reported two ways, Σ_{i≠j} |F_ij| / Σ |F_ij| and Σ_{i≠j} F_ij² / Σ F_ij²: EWC
keeps only the diagonal, so the smaller the share, the less it throws away.  A full block of a 784-input layer has
(784·width)² entries, so a layer's block is its first output rows (as many as fit ``max_block`` weights) times all
of its inputs; in rotated coordinates those rows are the largest output-gradient eigen-directions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from cl_core.data import load_mnist5k
from cl_core.experience import Experience
from cl_core.importance import fisher_diagonal
from cl_core.learner import evaluate_accuracy
from cl_core.methods import FineTune
from cl_core.methods.rotation import eigenbasis, kronecker_factors, layer_gradients, rotatable_layers, rotated
from cl_core.protocol import protocol_model
from cl_core.trainer import TrainConfig, train


@dataclass(frozen=True)
class BlockShare:
    layer: str
    block: str
    weights: int
    abs_share_plain: float
    abs_share_rotated: float
    squared_share_plain: float
    squared_share_rotated: float
    max_abs_diff: float  # the rotated block's diagonal vs `fisher_diagonal` on the rotated model


@dataclass
class RotationReport:
    hidden: list[int]
    samples: int
    epochs: int
    test_accuracy: float
    blocks: list[BlockShare] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def off_diagonal_share(fisher: Tensor, power: int = 1) -> float:
    """Σ_{i≠j} |F_ij|^p / Σ |F_ij|^p."""
    mass = fisher.abs() ** power
    total = mass.sum()
    return float((total - mass.diagonal().sum()) / total)


def _block_fisher(delta: Tensor, x: Tensor, rows: int) -> Tensor:
    """Full Fisher of weight rows [0, rows) from √p-weighted output gradients (R, N, out) and inputs (N, in)."""
    grads = torch.einsum("rno,ni->rnoi", delta[:, :, :rows], x).reshape(-1, rows * x.shape[1])
    return grads.T @ grads / x.shape[0]


def measure_rotation(
    samples: int = 1000,
    hidden: Sequence[int] = (32, 32),
    epochs: int = 2,
    max_block: int = 2048,
    seed: int = 0,
    on_step: Callable[[str], None] | None = None,
) -> RotationReport:
    """Train the MLP, rotate its hidden layers as R-EWC does, and compare the Fisher blocks' off-diagonal shares."""
    step = on_step or (lambda _: None)
    data = load_mnist5k()
    model = protocol_model(10, seed, hidden)
    step("training")
    train(model, FineTune(), Experience(data.train.inputs, data.train.labels), TrainConfig(epochs=epochs, seed=seed))
    report = RotationReport(list(hidden), samples, epochs, evaluate_accuracy(model, data.test.inputs, data.test.labels))
    model = model.double()
    x = data.train.inputs[:samples].double()
    layers = rotatable_layers(model, x[:1])
    step("rotations")
    factors = kronecker_factors(model, layers, x)
    rotations = {name: (eigenbasis(f.inputs), eigenbasis(f.output_grads)) for name, f in factors.items()}
    with rotated(model, rotations):
        engine = fisher_diagonal(model, x)
    gradients = layer_gradients(model, layers, x)
    for name, g in gradients.items():
        step(f"Fisher blocks of {name}")
        inputs, deltas = g.inputs[..., 0], g.output_grads[..., 0]  # (N, in), (R, N, out): linear layers
        rotation_in, rotation_out = rotations[name]
        outputs, width = deltas.shape[2], inputs.shape[1]
        rows = max(1, min(outputs, max_block // width))
        plain = _block_fisher(deltas, inputs, rows)
        turned = _block_fisher(deltas @ rotation_out, inputs @ rotation_in, rows)
        diag = engine[f"{name}.weight"][:rows].reshape(-1)
        block = f"all {outputs}×{width}" if rows == outputs else f"rows 0–{rows - 1} of {outputs} × all {width} inputs"
        report.blocks.append(
            BlockShare(
                name,
                block,
                rows * width,
                off_diagonal_share(plain),
                off_diagonal_share(turned),
                off_diagonal_share(plain, 2),
                off_diagonal_share(turned, 2),
                float((turned.diagonal() - diag).abs().max()),
            )
        )
    return report
