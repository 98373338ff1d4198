"""Rotated linear and convolutional layers (R-EWC, Liu et al., ICPR 2018) and the statistics that choose them.

A layer y = W x + b is re-parametrised as

    x′ = U₁ᵀ x  (fixed),    y′ = W′ x′  (W′ = U₂ᵀ W U₁, trainable),    y = U₂ y′ + b  (fixed, bias unchanged)

with orthogonal U₁, U₂, so U₂ W′ U₁ᵀ = W and the network computes exactly what it did: only the coordinates of
parameter space turn.  The paper writes the Fisher block of W as F_W = E[(∂L/∂y ∂y/∂W)(∂L/∂y ∂y/∂W)ᵀ] and, taking x
and ∂L/∂y independent, factorises it into E[x xᵀ] and E[(∂L/∂y)(∂L/∂y)ᵀ]; with U₁, U₂ the eigenvectors (columns) of
these two matrices, the per-sample gradient of W′ is δ′ x′ᵀ with δ′ = U₂ᵀ δ, x′ = U₁ᵀ x, and both factors are
diagonal in the new coordinates, so EWC's diagonal Fisher loses as little as that factorisation allows.  (The seed
note writes x′ = U₁x with row eigenvectors; here eigenvectors are columns, as `torch.linalg.eigh` returns them.  The
official TensorFlow code applies U₂ from the other side, which does not diagonalise the output factor; we follow
the algebra above.)

Convolutions rotate their channel dimensions the same way (input channels over every position of the input map,
output-gradient channels over every output position), realised as fixed 1×1 convolutions around the trainable
one, as the paper does.  A rotated layer keeps the names ``weight`` (holding W′) and ``bias``, so importance and
anchors stay keyed like ``model.named_parameters()``, and supplies a `per_sample_rule` so that the exact diagonal
Fisher of a rotated model is as fast as that of a plain one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cl_core.importance import FisherMode
from cl_core.models import GrowableHead
from cl_core.persample import Conv2dRule, LinearRule, Reduction, capture_io, parameter_owners, plain_convolution


def change_basis(t: Tensor, left: Tensor, right: Tensor) -> Tensor:
    """leftᵀ · t · right over a weight's (output, input) dimensions; a convolution's kernel taps ride along.

    With (left, right) = (U₂, U₁) this is W′ = U₂ᵀ W U₁; with (U₂ᵀ, U₁ᵀ) it folds back, W = U₂ W′ U₁ᵀ."""
    if t.dim() == 2:
        return left.T @ t @ right
    return torch.einsum("oa,oc...,cb->ab...", left, t, right)


def extend_rotation(rotation: Tensor, size: int) -> Tensor:
    """A rotation of a layer that has since grown (a classifier head): the new units keep their own axes."""
    old = rotation.shape[0]
    if size == old:
        return rotation
    if size < old:
        raise ValueError(f"a rotated layer shrank from {old} to {size} units; only growth is supported")
    grown = torch.eye(size, dtype=rotation.dtype, device=rotation.device)
    grown[:old, :old] = rotation
    return grown


class RotatedLayer(nn.Module):
    """The fixed rotations (buffers ``rotation_in`` = U₁, ``rotation_out`` = U₂), W′ and the fold back.

    The plain layer it replaced is kept aside (not a submodule, so its weight is no parameter of the model) and is
    what `fold` returns, so the model's module types never change across a prepare/finish round trip."""

    original: nn.Linear | nn.Conv2d
    rotation_in: Tensor
    rotation_out: Tensor
    bias: Tensor | None

    def __init__(self, original: nn.Linear | nn.Conv2d, rotation_in: Tensor, rotation_out: Tensor) -> None:
        super().__init__()
        object.__setattr__(self, "original", original)
        weight = original.weight
        if rotation_in.shape[0] != weight.shape[1] or rotation_out.shape[0] != weight.shape[0]:
            raise ValueError(
                f"rotations of sizes {rotation_in.shape[0]} (input) and {rotation_out.shape[0]} (output) do not fit a "
                f"weight of shape {tuple(weight.shape)}"
            )
        self.register_buffer("rotation_in", rotation_in.detach().to(weight.device, weight.dtype).clone())
        self.register_buffer("rotation_out", rotation_out.detach().to(weight.device, weight.dtype).clone())
        with torch.no_grad():  # W′ = U₂ᵀ W U₁, in float64 so that the round trip loses nothing visible
            wide = weight.detach().double()
            rotated = change_basis(wide, rotation_out.to(wide), rotation_in.to(wide))
        self.weight = nn.Parameter(rotated.to(weight.dtype), requires_grad=weight.requires_grad)
        self.bias = original.bias  # the same parameter: y = U₂y′ + b leaves b as it was

    def fold(self) -> nn.Linear | nn.Conv2d:
        """The plain layer, now holding W = U₂ W′ U₁ᵀ and the trained bias."""
        original = self.original
        with torch.no_grad():
            weight = change_basis(
                self.weight.detach().double(), self.rotation_out.double().T, self.rotation_in.double().T
            ).to(self.weight.dtype)
            old = original.weight
            if old.shape == weight.shape and old.device == weight.device and old.dtype == weight.dtype:
                old.copy_(weight)
            else:
                original.weight = nn.Parameter(weight, requires_grad=self.weight.requires_grad)
        original.bias = self.bias
        return original


class RotatedLinear(RotatedLayer):
    """y = U₂ (W′ (U₁ᵀ x)) + b."""

    original: nn.Linear

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(F.linear(F.linear(x, self.rotation_in.T), self.weight), self.rotation_out, self.bias)

    def per_sample_rule(self) -> RotatedLinearRule:
        return RotatedLinearRule()


class RotatedConv2d(RotatedLayer):
    """1×1 convolution by U₁ᵀ → the trainable convolution W′ (no bias) → 1×1 convolution by U₂, plus b."""

    original: nn.Conv2d

    def forward(self, x: Tensor) -> Tensor:
        conv = self.original
        y = F.conv2d(_rotate_channels(x, self.rotation_in), self.weight, None, conv.stride, conv.padding, conv.dilation)
        return F.conv2d(y, self.rotation_out[:, :, None, None], self.bias)

    def per_sample_rule(self) -> RotatedConv2dRule:
        return RotatedConv2dRule()


def _rotate_channels(x: Tensor, rotation_in: Tensor) -> Tensor:
    """x′ = U₁ᵀ x at every position: a 1×1 convolution whose kernel is U₁ᵀ."""
    return F.conv2d(x, rotation_in.T[:, :, None, None])


def _reduce_bias(acc: Tensor, delta: Tensor, weights: Tensor | None, reduction: Reduction) -> None:
    """acc += Σ_{r,n} w φ(δ summed over positions): the bias gradient is the unrotated output gradient."""
    grads = delta.flatten(3).sum(3) if delta.dim() > 3 else delta  # (R, B, out)
    values = grads.square() if reduction == "square" else grads.abs()
    if weights is not None:
        values = values * weights[:, :, None]
    acc += values.sum((0, 1))


class RotatedLinearRule:
    """Per-sample gradients of a `RotatedLinear`: δ′ x′ᵀ with x′ = U₁ᵀx, δ′ = U₂ᵀδ for W′, and δ for b."""

    def supports(self, module: nn.Module, inputs: Tensor, output: Tensor) -> bool:
        return inputs.dim() == 2 and output.dim() == 2

    def accumulate(
        self,
        module: nn.Module,
        inputs: Tensor,
        delta: Tensor,
        weights: Tensor | None,
        reduction: Reduction,
        acc: dict[str, Tensor],
    ) -> None:
        assert isinstance(module, RotatedLinear)
        if "weight" in acc:  # row vectors: x′ = x U₁, δ′ = δ U₂
            rotated = {"weight": acc["weight"]}
            LinearRule.accumulate_factors(
                inputs @ module.rotation_in, delta @ module.rotation_out, weights, reduction, rotated
            )
        if "bias" in acc:
            _reduce_bias(acc["bias"], delta, weights, reduction)


class RotatedConv2dRule:
    """Per-sample gradients of a `RotatedConv2d`: W′ from rotated patches and rotated output gradients."""

    def supports(self, module: nn.Module, inputs: Tensor, output: Tensor) -> bool:
        return inputs.dim() == 4

    def accumulate(
        self,
        module: nn.Module,
        inputs: Tensor,
        delta: Tensor,
        weights: Tensor | None,
        reduction: Reduction,
        acc: dict[str, Tensor],
    ) -> None:
        assert isinstance(module, RotatedConv2d)
        if "weight" in acc:
            patches = Conv2dRule.unfold(module.original, _rotate_channels(inputs, module.rotation_in))
            rotated_delta = torch.einsum("rbohw,op->rbphw", delta, module.rotation_out)  # δ′ = U₂ᵀ δ per position
            for r in range(delta.shape[0]):  # per-sample gradients differ per row: no sum over rows first
                w = None if weights is None else weights[r]
                Conv2dRule.accumulate_patches(
                    patches, rotated_delta[r].flatten(2), module.weight.shape, w, reduction, {"weight": acc["weight"]}
                )
        if "bias" in acc:
            _reduce_bias(acc["bias"], delta, weights, reduction)


def rotate_layer(module: nn.Module, rotation_in: Tensor, rotation_out: Tensor) -> RotatedLayer:
    """The rotated counterpart of a plain linear or convolutional layer (a grown layer's rotation is extended)."""
    if isinstance(module, nn.Linear):
        return RotatedLinear(module, rotation_in, extend_rotation(rotation_out, module.out_features))
    if isinstance(module, nn.Conv2d):
        return RotatedConv2d(module, rotation_in, extend_rotation(rotation_out, module.out_channels))
    raise TypeError(f"cannot rotate a {type(module).__name__}; only nn.Linear and nn.Conv2d")


@contextmanager
def rotated(model: nn.Module, rotations: dict[str, tuple[Tensor, Tensor]]) -> Iterator[None]:
    """The model with these layers rotated, for measuring; afterwards the plain layers return untouched."""
    swapped = {name: model.get_submodule(name) for name in rotations}
    try:
        for name, (rotation_in, rotation_out) in rotations.items():
            model.set_submodule(name, rotate_layer(swapped[name], rotation_in, rotation_out))
        yield
    finally:
        for name, module in swapped.items():
            model.set_submodule(name, module)


def _rotatable(module: nn.Module) -> bool:
    """Plain linear layers (and the growable head) and ungrouped, zero-padded convolutions."""
    if type(module) is nn.Linear or type(module) is GrowableHead:
        return True
    return type(module) is nn.Conv2d and plain_convolution(module)


def rotatable_layers(
    model: nn.Module, probe: Tensor, *, include_output: bool = False, names: Sequence[str] | None = None
) -> dict[str, nn.Module]:
    """The layers R-EWC rotates, found by one probing forward pass.

    A layer qualifies when it is a plain `nn.Linear` (or the growable head) applied once to (batch, features)
    inputs, or an ungrouped zero-padded `nn.Conv2d`, with its own trainable weight.  The output layer (the one
    whose output is the model's output) is left alone unless ``include_output``, as the official code does.
    ``names`` picks the layers explicitly (each must qualify)."""
    owners = parameter_owners(model)
    candidates = {
        name: module
        for name, module in model.named_modules()
        if name and _rotatable(module) and module.weight.requires_grad and owners[id(module.weight)] == 1
    }
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), capture_io(candidates) as seen:
            logits = model(probe[:1].to(param.device, param.dtype))
    finally:
        model.train(was_training)
    usable = {}
    for name, module in candidates.items():
        record = seen.get(name)
        wanted_dim = 2 if isinstance(module, nn.Linear) else 4
        if record is None or record.calls != 1 or record.inputs.dim() != wanted_dim:
            continue
        if record.output is logits and not include_output and names is None:
            continue
        usable[name] = module
    if names is None:
        return usable
    missing = [name for name in names if name not in usable]
    if missing:
        raise ValueError(
            f"cannot rotate {missing}: R-EWC rotates plain nn.Linear layers applied once to (batch, features) and "
            f"ungrouped zero-padded nn.Conv2d layers; rotatable here: {sorted(usable)}"
        )
    return {name: usable[name] for name in names}


@dataclass(frozen=True)
class LayerGradients:
    """One batch's statistics of a layer, positions last: its inputs and its per-sample output gradients."""

    inputs: Tensor  # (B, in, L): x at every position (L = 1 for a linear layer)
    output_grads: Tensor  # (R, B, out, L): √w_{r,b} · ∂s_{r,b}/∂y, s the log-likelihood of row r (a class)


@dataclass(frozen=True)
class KroneckerFactors:
    """The two factors of a layer's Fisher block: the input and output-gradient (channel) covariances."""

    inputs: Tensor  # E[x xᵀ]  (in × in; for a convolution, channels over every input position)
    output_grads: Tensor  # E_x Σ_c p(c|x) g_c g_cᵀ, g_c = ∂ log p(c|x)/∂y  (out × out; summed over output positions)


def layer_gradients(
    model: nn.Module,
    layers: dict[str, nn.Module],
    inputs: Tensor,
    targets: Tensor | None = None,
    *,
    mode: FisherMode = "true",
    active_outputs: Sequence[int] | Tensor | None = None,
) -> dict[str, LayerGradients]:
    """Every layer's inputs and output gradients for one batch, from one forward and one vmapped backward pass.

    ``mode="true"`` has one row per active class c, ∂ log p(c|x)/∂y weighted by p(c|x) (the true Fisher's exact
    expectation over the model's own predictions); ``mode="empirical"`` one row, for the target (full output
    indices).  The per-sample gradient of a linear layer's weight for row r is output_grads[r] · inputsᵀ."""
    if mode not in ("true", "empirical"):
        raise ValueError(f"unknown Fisher mode {mode!r}; expected 'true' or 'empirical'")
    if mode == "empirical" and targets is None:
        raise ValueError("mode='empirical' needs targets")
    param = next(model.parameters())
    active = None if active_outputs is None else torch.as_tensor(active_outputs, dtype=torch.long).reshape(-1)
    names = list(layers)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), capture_io(layers) as seen:
            z = model(inputs.to(param.device, param.dtype))
            if active is not None:
                z = z.index_select(1, active.to(z.device))
            vectors, weights = _log_likelihood_directions(z.detach(), targets, active, mode)
            outputs = [seen[name].output for name in names]
            grads = torch.autograd.grad(z, outputs, grad_outputs=vectors, allow_unused=True, is_grads_batched=True)
    finally:
        model.train(was_training)
    result = {}
    root_w = weights.sqrt()
    for name, output, g in zip(names, outputs, grads, strict=True):
        if g is None:  # the layer does not reach the logits
            g = output.new_zeros(vectors.shape[0], *output.shape)
        g = g * root_w.reshape(*root_w.shape, *([1] * (g.dim() - 2)))
        x = seen[name].inputs.detach()
        result[name] = LayerGradients(x.reshape(*x.shape[:2], -1), g.reshape(*g.shape[:3], -1))
    return result


def kronecker_factors(
    model: nn.Module,
    layers: dict[str, nn.Module],
    inputs: Tensor,
    targets: Tensor | None = None,
    *,
    mode: FisherMode = "true",
    active_outputs: Sequence[int] | Tensor | None = None,
    batch_size: int = 256,
) -> dict[str, KroneckerFactors]:
    """Both factors for every layer, averaged over samples, in float64 (`layer_gradients` says which gradients).

    Memory per batch is classes × batch × each layer's output size: lower ``batch_size`` for large feature maps."""
    device = next(model.parameters()).device
    shapes = {name: _weight(module).shape for name, module in layers.items()}
    in_cov = {name: torch.zeros(s[1], s[1], dtype=torch.float64, device=device) for name, s in shapes.items()}
    out_cov = {name: torch.zeros(s[0], s[0], dtype=torch.float64, device=device) for name, s in shapes.items()}
    for start in range(0, inputs.shape[0], batch_size):
        batch = slice(start, start + batch_size)
        t = None if targets is None else targets[batch]
        stats = layer_gradients(model, layers, inputs[batch], t, mode=mode, active_outputs=active_outputs)
        for name, s in stats.items():  # Σ x xᵀ and Σ_{r,b,l} w δδᵀ, each one matrix product
            in_cov[name] += _gram(s.inputs.movedim(1, -1).reshape(-1, s.inputs.shape[1])).double()
            out_cov[name] += _gram(s.output_grads.movedim(2, -1).reshape(-1, s.output_grads.shape[2])).double()
    n = inputs.shape[0]
    return {name: KroneckerFactors((in_cov[name] / n).cpu(), (out_cov[name] / n).cpu()) for name in layers}


def _gram(rows: Tensor) -> Tensor:
    """Σ over rows of r rᵀ: (rows, d) → (d, d)."""
    return rows.T @ rows


def _weight(module: nn.Module) -> Tensor:
    weight = module.weight
    assert isinstance(weight, Tensor)
    return weight


def _log_likelihood_directions(
    z: Tensor, targets: Tensor | None, active: Tensor | None, mode: FisherMode
) -> tuple[Tensor, Tensor]:
    """(vectors (R, B, K), weights (R, B)): ∂ log p(c|x)/∂z = e_c − p for each class c weighted by p_c (true), or
    for the target alone (empirical)."""
    p = torch.softmax(z, dim=1)
    if mode == "true":
        eye = torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
        return eye[:, None, :] - p[None, :, :], p.T.contiguous()
    assert targets is not None
    t = targets.to(z.device)
    if active is not None:  # targets are full output indices; the logits are the active ones
        t = (t[:, None] == active.to(z.device)[None, :]).long().argmax(1)
    onehot = F.one_hot(t, z.shape[1]).to(z.dtype)
    return (onehot - p).unsqueeze(0), torch.ones(1, z.shape[0], dtype=z.dtype, device=z.device)


def eigenbasis(covariance: Tensor) -> Tensor:
    """Orthonormal eigenvectors (as columns) of a symmetric covariance, largest eigenvalue first, each column's
    largest entry positive (so the rotation is reproducible), in float64."""
    sym = covariance.double()
    sym = (sym + sym.T) / 2
    _, vectors = torch.linalg.eigh(sym)
    vectors = vectors.flip(-1)
    peak = vectors.abs().argmax(0)
    signs = vectors[peak, torch.arange(vectors.shape[1])].sign()
    return vectors * torch.where(signs == 0, torch.ones_like(signs), signs)
