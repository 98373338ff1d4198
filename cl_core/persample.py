"""Exact per-sample gradient statistics without one backward pass per sample.

Every importance measure in this package has the same shape: for each sample n and each of R scalar functions
s_{n,r} of the sample's (active) logits z_n, take the per-sample gradient g_{n,r} = ∂s_{n,r}/∂θ and accumulate
Σ_{n,r} w_{n,r} · φ(g_{n,r}) with φ = square (Fisher) or abs (MAS).  By the chain rule g_{n,r} = J_nᵀ v_{n,r}
with v_{n,r} = ∂s_{n,r}/∂z_n, so a caller only supplies the directions v and weights w (`Directions`).

Two paths compute φ(g) exactly:

* **Factorised** (fast): for a linear map y = W x the per-sample gradient is the outer product δ xᵀ of the output
  gradient and the input, so Σ_n w_n (δ_n xₙᵀ)² = (w·δ²)ᵀ (x²) and Σ_n |δ_n xₙᵀ| = |δ|ᵀ |x| are single matrix
  products.  A convolution's per-sample gradient sums over positions (δ_n U_nᵀ on unfolded patches U_n), so it is
  formed per sample with one batched matrix product and then reduced.  One forward pass and R backward passes
  (to the layer outputs only) serve a whole batch.
* **torch.func fallback** (general): `functional_call` + `vjp` + `vmap` gives per-sample gradients of any other
  parameter: a module this file has no rule for, a layer used twice in one forward, a linear layer applied to
  inputs with extra dimensions, or a parameter shared between modules.  It is chunked to bound memory.

A module may provide its own factorisation by defining ``per_sample_rule()`` returning a `PerSampleRule`
(the rotated layers of R-EWC do this).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap

Reduction = Literal["square", "abs"]
EnginePath = Literal["auto", "func"]

# Elements (not bytes) a materialised block of per-sample gradients may hold at once.
_BLOCK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class Directions:
    """For a batch: R logit-space directions per sample and their weights (None means all ones)."""

    vectors: Tensor  # (R, B, K): v_{n,r} = ∂s_{n,r}/∂z_n
    weights: Tensor | None  # (R, B)


DirectionsFn = Callable[[Tensor, Tensor | None], Directions]
"""Maps (detached active logits (B, K), the batch's targets or None) to the batch's directions."""


def _reduce_into(acc: Tensor, grads: Tensor, weights: Tensor | None, reduction: Reduction) -> None:
    """acc += Σ_n w_n φ(grads_n) for per-sample grads of shape (B, *acc.shape)."""
    values = grads.square() if reduction == "square" else grads.abs()
    if weights is not None:
        values = values * weights.reshape(-1, *([1] * (values.dim() - 1)))
    acc += values.sum(0)


class PerSampleRule(Protocol):
    """Accumulates φ of a module's per-sample parameter gradients from its input and output gradient."""

    def supports(self, module: nn.Module, inputs: Tensor, output: Tensor) -> bool: ...

    def accumulate(
        self,
        module: nn.Module,
        inputs: Tensor,
        delta: Tensor,
        weights: Tensor | None,
        reduction: Reduction,
        acc: dict[str, Tensor],
    ) -> None:
        """Add Σ_{r,n} w_{r,n} φ(g_{r,n}) for output gradients ``delta`` (R, B, *output) and weights (R, B).

        ``acc`` maps the module's local parameter names ("weight", "bias") to running sums."""


class LinearRule:
    """y = x Wᵀ + b on (B, in) inputs: per-sample gradients δ xᵀ and δ."""

    def supports(self, module: nn.Module, inputs: Tensor, output: Tensor) -> bool:
        return inputs.dim() == 2 and output.dim() == 2

    @staticmethod
    def accumulate_factors(
        x: Tensor, delta: Tensor, weights: Tensor | None, reduction: Reduction, acc: dict[str, Tensor]
    ) -> None:
        """Shared by every layer whose weight gradient is an outer product δ xᵀ (bias gradient δ).

        φ(δ xᵀ) = φ(δ) φ(x)ᵀ for φ = square or abs, and x does not depend on the row r, so the rows are summed
        first: Σ_{r,n} w φ(δ_{r,n}) φ(x_n)ᵀ = (Σ_r w_r φ(δ_r))ᵀ φ(x), one matrix product for all rows."""
        if reduction == "square":
            d, xx = delta.square(), x.square()
        else:
            d, xx = delta.abs(), x.abs()
        if weights is not None:
            d = d * weights[:, :, None]
        d = d.sum(0)  # (B, out)
        if "weight" in acc:
            acc["weight"] += d.T @ xx
        if "bias" in acc:
            acc["bias"] += d.sum(0)

    def accumulate(
        self,
        module: nn.Module,
        inputs: Tensor,
        delta: Tensor,
        weights: Tensor | None,
        reduction: Reduction,
        acc: dict[str, Tensor],
    ) -> None:
        self.accumulate_factors(inputs, delta, weights, reduction, acc)


def plain_convolution(module: nn.Module) -> bool:
    """An ungrouped, zero-padded `nn.Conv2d` with numeric padding: what unfolding into patches reproduces."""
    return (
        isinstance(module, nn.Conv2d)
        and module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


def parameter_owners(model: nn.Module) -> dict[int, int]:
    """How many modules hold each parameter (by id): a parameter shared between modules has no per-layer rule."""
    owners: dict[int, int] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    return owners


class Conv2dRule:
    """Conv2d (groups=1, zero padding): per-sample weight gradient δ_n U_nᵀ over unfolded patches U_n."""

    def supports(self, module: nn.Module, inputs: Tensor, output: Tensor) -> bool:
        return inputs.dim() == 4 and plain_convolution(module)

    @staticmethod
    def unfold(module: nn.Conv2d, inputs: Tensor) -> Tensor:
        """(B, C_in·kh·kw, L) patches, so that the convolution is weight.view(out, -1) @ patches."""
        return F.unfold(
            inputs,
            kernel_size=module.kernel_size,
            dilation=module.dilation,
            padding=module.padding,  # type: ignore[arg-type]
            stride=module.stride,
        )

    @staticmethod
    def accumulate_patches(
        patches: Tensor,
        delta: Tensor,
        weight_shape: torch.Size,
        weights: Tensor | None,
        reduction: Reduction,
        acc: dict[str, Tensor],
    ) -> None:
        """patches (B, P, L), delta (B, out, L): per-sample grads formed in blocks, then reduced."""
        batch = delta.shape[0]
        per_sample = delta.shape[1] * patches.shape[1]
        step = max(1, _BLOCK_ELEMENTS // max(per_sample, 1))
        for start in range(0, batch, step):
            sl = slice(start, start + step)
            w = None if weights is None else weights[sl]
            if "weight" in acc:
                grads = torch.bmm(delta[sl], patches[sl].transpose(1, 2))  # (b, out, P)
                _reduce_into(acc["weight"], grads.reshape(grads.shape[0], *weight_shape), w, reduction)
            if "bias" in acc:
                _reduce_into(acc["bias"], delta[sl].sum(2), w, reduction)

    def accumulate(
        self,
        module: nn.Module,
        inputs: Tensor,
        delta: Tensor,
        weights: Tensor | None,
        reduction: Reduction,
        acc: dict[str, Tensor],
    ) -> None:
        assert isinstance(module, nn.Conv2d)
        patches = self.unfold(module, inputs)
        for r in range(delta.shape[0]):  # per-sample gradients differ per row: no sum over rows first
            w = None if weights is None else weights[r]
            self.accumulate_patches(patches, delta[r].flatten(2), module.weight.shape, w, reduction, acc)


def rule_for(module: nn.Module) -> PerSampleRule | None:
    """The factorisation rule of a module, if it has one (its own ``per_sample_rule()`` first)."""
    own = getattr(module, "per_sample_rule", None)
    if callable(own):
        rule: PerSampleRule = own()
        return rule
    if type(module) is nn.Linear:
        return LinearRule()
    if type(module) is nn.Conv2d:
        return Conv2dRule()
    return None


@dataclass
class Captured:
    inputs: Tensor
    output: Tensor
    calls: int = 1


@contextmanager
def capture_io(modules: dict[str, nn.Module]) -> Iterator[dict[str, Captured]]:
    """Record each module's (first) input and output during a forward, and how often it ran."""
    store: dict[str, Captured] = {}
    handles = []

    def make_hook(name: str) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
        def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            if name in store:
                store[name].calls += 1
            else:
                store[name] = Captured(args[0] if args else torch.empty(0), output)

        return hook

    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(make_hook(name)))
        yield store
    finally:
        for h in handles:
            h.remove()


@dataclass
class _Plan:
    """Which parameters the factorised path covers (by module) and which fall back to torch.func."""

    factorised: dict[str, tuple[nn.Module, PerSampleRule, dict[str, str]]]  # module → (module, rule, local→full)
    fallback: list[str]


def trainable_parameters(model: nn.Module) -> dict[str, Tensor]:
    """Trainable parameters keyed like ``model.named_parameters()`` (shared ones once)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _plan(model: nn.Module, probe: Tensor, logits_fn: Callable[[Tensor], Tensor]) -> _Plan:
    """Decide per module whether its parameters can use a factorisation rule, by probing one forward."""
    params = trainable_parameters(model)
    owners = parameter_owners(model)
    candidates: dict[str, tuple[nn.Module, PerSampleRule, dict[str, str]]] = {}
    for mname, module in model.named_modules():
        rule = rule_for(module)
        if rule is None:
            continue
        local = {
            pname: f"{mname}.{pname}" if mname else pname
            for pname, p in module.named_parameters(recurse=False)
            if p.requires_grad
        }
        own_params = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if not local or any(owners[id(p)] > 1 for p in own_params):
            continue
        # A module with trainable children (a wrapper) is handled by its children or the fallback.
        if any(p.requires_grad for c in module.children() for p in c.parameters()):
            continue
        candidates[mname] = (module, rule, local)
    with torch.no_grad(), capture_io({k: v[0] for k, v in candidates.items()}) as seen:
        logits_fn(probe)
    factorised = {
        name: entry
        for name, entry in candidates.items()
        if name in seen and seen[name].calls == 1 and entry[1].supports(entry[0], seen[name].inputs, seen[name].output)
    }
    covered = {full for _, _, local in factorised.values() for full in local.values()}
    return _Plan(factorised, [n for n in params if n not in covered])


def _func_block(
    model: nn.Module,
    fallback: list[str],
    x: Tensor,
    directions: Directions,
    reduction: Reduction,
    active: Tensor | None,
    acc: dict[str, Tensor],
) -> None:
    """Per-sample gradients of the fallback parameters by functional_call + vjp + vmap, in bounded chunks."""
    params = dict(model.named_parameters())
    frozen = {k: v.detach() for k, v in params.items() if k not in fallback}
    primal = {k: params[k].detach() for k in fallback}
    buffers = dict(model.named_buffers())

    def logits_one(p: dict[str, Tensor], xi: Tensor) -> Tensor:
        out = functional_call(model, ({**frozen, **p}, buffers), (xi.unsqueeze(0),)).squeeze(0)
        return out if active is None else out.index_select(0, active)

    def rows_one(xi: Tensor, vi: Tensor) -> dict[str, Tensor]:
        _, vjp_fn = vjp(lambda p: logits_one(p, xi), primal)  # type: ignore[misc]
        grads: dict[str, Tensor] = vmap(vjp_fn)(vi)[0]
        return grads

    vectors = directions.vectors.transpose(0, 1)  # (B, R, K)
    weights = None if directions.weights is None else directions.weights.transpose(0, 1)  # (B, R)
    rows = vectors.shape[1]
    per_sample = rows * sum(primal[k].numel() for k in fallback)
    step = max(1, _BLOCK_ELEMENTS // max(per_sample, 1))
    per_sample_grads = vmap(rows_one)
    for start in range(0, x.shape[0], step):
        sl = slice(start, start + step)
        grads = per_sample_grads(x[sl], vectors[sl])
        w = None if weights is None else weights[sl].reshape(-1)
        for name, g in grads.items():
            _reduce_into(acc[name], g.reshape(-1, *g.shape[2:]), w, reduction)


def _output_gradients(z: Tensor, outputs: list[Tensor], vectors: Tensor) -> list[Tensor | None]:
    """∂(v_r · z)/∂output for every row r at once (one vmapped backward), (R, B, *output) each."""
    if vectors.shape[0] == 1:
        grads = torch.autograd.grad(z, outputs, grad_outputs=vectors[0], retain_graph=True, allow_unused=True)
        return [None if g is None else g.unsqueeze(0) for g in grads]
    try:
        return list(
            torch.autograd.grad(
                z, outputs, grad_outputs=vectors, retain_graph=True, allow_unused=True, is_grads_batched=True
            )
        )
    except RuntimeError:  # an op without a batching rule: one backward pass per row
        per_row = [torch.autograd.grad(z, outputs, v, retain_graph=True, allow_unused=True) for v in vectors]
        return [
            None if per_row[0][i] is None else torch.stack([row[i] for row in per_row]) for i in range(len(outputs))
        ]


def _factorised_block(
    plan: _Plan,
    seen: dict[str, Captured],
    z: Tensor,
    directions: Directions,
    reduction: Reduction,
    acc: dict[str, Tensor],
) -> None:
    """Backpropagate the rows' directions to the factorised layers' outputs and let each rule accumulate."""
    names = list(plan.factorised)
    outputs = [seen[name].output for name in names]
    per_row = z.shape[0] * sum(o[0].numel() for o in outputs)
    rows = directions.vectors.shape[0]
    step = max(1, _BLOCK_ELEMENTS // max(per_row, 1))
    for r0 in range(0, rows, step):
        vectors = directions.vectors[r0 : r0 + step]
        weights = None if directions.weights is None else directions.weights[r0 : r0 + step]
        for name, delta in zip(names, _output_gradients(z, outputs, vectors), strict=True):
            if delta is None:
                continue
            module, rule, local = plan.factorised[name]
            local_acc = {k: acc[full] for k, full in local.items()}
            rule.accumulate(module, seen[name].inputs.detach(), delta, weights, reduction, local_acc)


def per_sample_statistic(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor | None,
    directions_fn: DirectionsFn,
    reduction: Reduction,
    *,
    active_outputs: Tensor | None = None,
    batch_size: int = 256,
    path: EnginePath = "auto",
) -> dict[str, Tensor]:
    """Σ_{n,r} w_{n,r} φ(∂s_{n,r}/∂θ) over all samples, for every trainable parameter (not averaged).

    The model runs in eval mode (no dropout noise, BatchNorm statistics untouched) and gets no ``.grad``.
    ``path="func"`` sends every parameter through the torch.func fallback (for comparison and tests).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    params = trainable_parameters(model)
    acc = {name: torch.zeros_like(p, memory_format=torch.contiguous_format) for name, p in params.items()}
    if not params:
        return acc
    first = next(iter(params.values()))
    device, dtype = first.device, first.dtype
    active = None if active_outputs is None else active_outputs.to(device)

    def logits_fn(x: Tensor) -> Tensor:
        out = model(x)
        if out.dim() != 2:
            raise ValueError(f"the model must map a batch to logits of shape (batch, outputs), got {tuple(out.shape)}")
        return out if active is None else out.index_select(1, active)

    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            plan = _plan(model, _as_batch(inputs[:1], device, dtype), logits_fn)
            if path == "func":
                plan = _Plan({}, list(params))
            modules = {name: entry[0] for name, entry in plan.factorised.items()}
            for start in range(0, inputs.shape[0], batch_size):
                x = _as_batch(inputs[start : start + batch_size], device, dtype)
                t = None if targets is None else targets[start : start + batch_size].to(device)
                with capture_io(modules) as seen:
                    z = logits_fn(x)
                directions = directions_fn(z.detach(), t)
                if plan.factorised:
                    _factorised_block(plan, seen, z, directions, reduction, acc)
                del seen, z
                if plan.fallback:
                    _func_block(model, plan.fallback, x, directions, reduction, active, acc)
    finally:
        model.train(was_training)
    return acc


def _as_batch(x: Tensor, device: torch.device, dtype: torch.dtype) -> Tensor:
    x = x.to(device)
    return x.to(dtype) if x.is_floating_point() else x
