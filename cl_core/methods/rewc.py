"""Rotated EWC (Liu et al., "Rotate your Networks: Better Weight Consolidation and Less Catastrophic Forgetting",
ICPR 2018).

EWC's penalty Σᵢ λ/2 Fᵢ (θᵢ − θ*ᵢ)² (Kirkpatrick et al. 2017, eq. 3) keeps only the diagonal of a Fisher matrix that
is rarely diagonal.  R-EWC turns each linear or convolutional layer's parameter space so that the paper's
factorisation of the layer's Fisher block, F_W ≈ E[(∂L/∂y)(∂L/∂y)ᵀ] ⊗ E[x xᵀ] (x and ∂L/∂y taken independent), is
diagonal: with U₁, U₂ the eigenvectors of E[x xᵀ] and E[(∂L/∂y)(∂L/∂y)ᵀ], the layer computes y = U₂ W′ U₁ᵀ x + b
with W′ = U₂ᵀ W U₁ (`cl_core.methods.rotation`), and EWC runs on W′ with the exact diagonal Fisher measured in the
rotated coordinates.  The output layer is left unrotated by default, as in the official code.

Life of the rotations, so that fixed factors never pile up layer on layer:

* `consolidate` (on the plain model) measures both factors over the experience's data (output gradients from the
  model's own predictive distribution, Σ_c p(c|x) g_c g_cᵀ, exactly, ``active_outputs`` respected), takes their
  eigenvectors, and measures the diagonal Fisher Fₖ in the new coordinates;
* `prepare` swaps the plain layers for rotated ones holding W′ in the latest basis, so the optimizer trains W′;
* `finish` folds W = U₂ W′ U₁ᵀ back into the plain layers: stored snapshots are plain models and serving pays
  nothing.

Every past experience keeps its own penalty, exactly (the default, ``max_terms=None``).  Experience k's penalty is
diagonal in *its* basis (U₁ₖ, U₂ₖ), so a rotated weight's penalty is the sum over past experiences

    λ/2 Σₖ Σᵢⱼ Ωₖ,ᵢⱼ (U₂ₖᵀ W U₁ₖ − W̄ₖ)²ᵢⱼ,      Ωₖ = Fₖ, W̄ₖ = U₂ₖᵀ Wₖ U₁ₖ (Wₖ: the weight after experience k),

which is EWC's eq. 3 with each term in the coordinates where its Fisher is (nearly) diagonal.  While the next
experience trains on W′ = U₂ᵀ W U₁ (the latest basis), term k reads U₂ₖᵀ W U₁ₖ = (U₂ᵀU₂ₖ)ᵀ W′ (U₁ᵀU₁ₖ): the latest
term is diagonal in W′ (EWC's fused path) and each older one costs two matrix products per step (and two more
for its gradient).  The state keeps, per past experience and rotated layer, Ωₖ, W̄ₖ, U₁ₖ and U₂ₖ: memory grows
linearly with the experiences (2·out·in + in² + out² numbers per layer and experience; for the 784-400-400 MLP of
the benchmark about 2.0 M per experience, 13 MB with float64 bases and float32 importance).  Biases and unrotated
layers are plain EWC, whose K penalties fold exactly into one (`cl_core.methods.ewc`).

This departs from the paper in one respect: the official code does not accumulate at all (each task's penalty
uses only the previous task's Fisher); keeping every past term is this project's extension, chosen to be exact.

``max_terms=m`` bounds the state: once a layer holds more than m terms, the oldest is folded into the next one,
approximately: moved to that term's basis with P₂ = U₂,oldᵀ U₂,next and P₁ = U₁,oldᵀ U₁,next, a point transforms
exactly, W̄ₙ = P₂ᵀ W̄ₒ P₁, while the diagonal quadratic becomes a full one of which only the diagonal is kept,

    Ω_proj = (P₂∘P₂)ᵀ Ω_old (P₁∘P₁)      (for convolutions the same over the channel dimensions, per kernel tap),

then folded as EWC folds.  This is exact when the basis does not change (P = I); otherwise it loses most of the
old penalty (permuted MNIST-5k, two tasks: the old task's 10 most important directions kept 0–1 % of their penalty
in the first hidden layer and 11–51 % in the second; the README's R-EWC rows give the effect on accuracy).
``max_terms=1`` is that fold after every experience (this project's earlier R-EWC).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cl_core.experience import Experience
from cl_core.importance import FisherMode
from cl_core.methods.base import ConsolidationReport, JSONValue, _grow_to, budget_subset
from cl_core.methods.ewc import EWC, fold_quadratics
from cl_core.methods.rotation import (
    RotatedLayer,
    change_basis,
    eigenbasis,
    extend_rotation,
    kronecker_factors,
    rotatable_layers,
    rotate_layer,
    rotated,
)

_TERM_PARTS = ("importance", "anchor", "input", "output")


@dataclass
class Term:
    """One past experience's penalty on a rotated weight: Ω and W̄ in its own basis (U₁ = input, U₂ = output)."""

    importance: Tensor
    anchor: Tensor
    rotation_in: Tensor  # float64, CPU
    rotation_out: Tensor  # float64, CPU

    def grown(self, rows: int) -> Term:
        """The term of a layer that gained output units: the new units have no importance and keep their own axes."""
        if rows == self.importance.shape[0]:
            return self
        shape = torch.Size([rows, *self.importance.shape[1:]])
        zeros = torch.zeros(shape, dtype=self.importance.dtype, device=self.importance.device)
        return Term(
            _grow_to(self.importance, shape, zeros),
            _grow_to(self.anchor, shape, zeros.to(self.anchor.dtype)),
            self.rotation_in,
            extend_rotation(self.rotation_out, rows),
        )


def _identity(weight: Tensor) -> tuple[Tensor, Tensor]:
    return torch.eye(weight.shape[1], dtype=torch.float64), torch.eye(weight.shape[0], dtype=torch.float64)


def fold_into(old: Term, new: Term) -> Term:
    """The approximate fold (``max_terms``): ``old`` moved to ``new``'s basis keeping the diagonal of its quadratic,
    Ω_proj = (P₂∘P₂)ᵀ Ω (P₁∘P₁), W̄ₙ = P₂ᵀ W̄ₒ P₁, then folded with ``new`` as EWC folds (the module docstring)."""
    old = old.grown(new.importance.shape[0])
    p_in = old.rotation_in.T @ new.rotation_in
    p_out = old.rotation_out.T @ new.rotation_out
    omega = change_basis(old.importance.double(), p_out.square(), p_in.square()).to(new.importance)
    point = change_basis(old.anchor.double(), p_out, p_in).to(new.anchor)
    total, anchor = fold_quadratics(omega, point, new.importance, new.anchor)
    return Term(total, anchor, new.rotation_in, new.rotation_out)


class REWC(EWC):
    """EWC on rotated layers: the exact diagonal Fisher in the eigenbasis of each layer's Kronecker factors, each past
    experience's penalty kept in its own basis.

    λ = 100 by default, as for EWC (a rotation keeps the Fisher's trace, so importance keeps its scale)."""

    name = "rewc"
    grows_with_experiences = True  # one (Ω, W̄, U₁, U₂) per past experience and rotated layer, unless max_terms

    def __init__(
        self,
        lam: float = 100.0,
        fisher_mode: FisherMode = "true",
        max_samples: int | None = None,
        batch_size: int = 256,
        rotate_output: bool = False,
        layers: Sequence[str] | None = None,
        max_terms: int | None = None,
    ) -> None:
        super().__init__(lam, fisher_mode, max_samples, batch_size)
        if max_terms is not None and max_terms < 1:
            raise ValueError(f"max_terms must be at least 1 (or None: every past penalty exact), got {max_terms}")
        self.rotate_output = bool(rotate_output)
        self.layers = None if layers is None else list(layers)
        self.max_terms = max_terms
        self.rotations: dict[str, tuple[Tensor, Tensor]] = {}  # layer → latest (U₁, U₂), float64 on the CPU
        self.terms: dict[str, list[Term]] = {}  # layer → its weight's past penalties, oldest first
        self._cache: dict[tuple[object, ...], tuple[Tensor, Tensor, Tensor | None, Tensor | None]] = {}

    def hparams(self) -> dict[str, JSONValue]:
        return {
            **super().hparams(),
            "rotate_output": self.rotate_output,
            "layers": self.layers,
            "max_terms": self.max_terms,
        }

    # -- training: rotate, then fold back ------------------------------------------------------------------------
    def prepare(self, model: nn.Module) -> None:
        """Swap the rotated layers in (W′ = U₂ᵀ W U₁), so that the optimizer trains W′ and the penalty is diagonal."""
        for name, (rotation_in, rotation_out) in self.rotations.items():
            module = model.get_submodule(name)
            if isinstance(module, RotatedLayer):
                raise ValueError(f"{name!r} is already rotated: prepare() was called twice without finish()")
            model.set_submodule(name, rotate_layer(module, rotation_in, rotation_out))

    def finish(self, model: nn.Module) -> None:
        """Fold every rotated layer back into its plain layer, W = U₂ W′ U₁ᵀ."""
        for name, module in list(model.named_modules()):
            if isinstance(module, RotatedLayer):
                model.set_submodule(name, module.fold())

    # -- consolidation -------------------------------------------------------------------------------------------
    def consolidate(self, model: nn.Module, experience: Experience) -> ConsolidationReport:
        start = time.perf_counter()
        if any(isinstance(m, RotatedLayer) for m in model.modules()):
            raise ValueError("consolidate() needs the plain model: call finish() after training")
        data = budget_subset(experience, self.max_samples)
        layers = rotatable_layers(model, data.inputs[:1], include_output=self.rotate_output, names=self.layers)
        factors = kronecker_factors(
            model,
            layers,
            data.inputs,
            data.targets,
            mode=self.fisher_mode,
            active_outputs=data.active_outputs,
            batch_size=self.batch_size,
        )
        new = {name: (eigenbasis(f.inputs), eigenbasis(f.output_grads)) for name, f in factors.items()}
        params = dict(model.named_parameters())
        for name in new:  # a weight that joins the rotated layers: its plain (folded) penalty is a term in U = I
            key = f"{name}.weight"
            if key in self.importance:
                rotation_in, rotation_out = _identity(params[key])
                term = Term(self.importance.pop(key), self.anchor.pop(key), rotation_in, rotation_out)
                self.terms.setdefault(name, []).append(term)
        with rotated(model, new):  # the Fisher in the new coordinates
            fisher, samples = self.estimate(model, experience)
            theta = self.current_parameters(model, fisher)
        for name, (rotation_in, rotation_out) in new.items():
            key = f"{name}.weight"
            self.terms.setdefault(name, []).append(Term(fisher.pop(key), theta.pop(key), rotation_in, rotation_out))
            while self.max_terms is not None and len(self.terms[name]) > self.max_terms:
                oldest, following = self.terms[name][:2]
                self.terms[name][:2] = [fold_into(oldest, following)]
        self.fold(fisher, theta)  # biases and unrotated parameters: EWC's exact fold
        self.rotations = new
        self.experiences += 1
        self._cache = {}
        return ConsolidationReport(samples=samples, seconds=time.perf_counter() - start)

    def _rotation(self, name: str, weight: Tensor) -> tuple[Tensor, Tensor]:
        """(U₁, U₂) of a layer in float64, extended to the weight's present shape (identity if never rotated)."""
        if name not in self.rotations:
            return _identity(weight)
        rotation_in, rotation_out = self.rotations[name]
        if rotation_in.shape[0] != weight.shape[1]:
            raise ValueError(f"the input width of {name!r} changed since it was rotated; only output growth works")
        return rotation_in, extend_rotation(rotation_out, weight.shape[0])

    # -- the penalty, on a rotated (training) or a plain model ---------------------------------------------------
    def _term_on(self, name: str, k: int, module: nn.Module) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """(λΩₖ, W̄ₖ, left, right) on the weight's device: term k reads leftᵀ X right of the layer's trained weight X
        (W′ of a rotated layer, W of a plain one); left = right = None when that is X itself."""
        weight = module.weight
        assert isinstance(weight, Tensor)
        is_rotated = isinstance(module, RotatedLayer)
        key = (name, k, is_rotated, tuple(weight.shape), weight.device, weight.dtype)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        term = self.terms[name][k]
        if term.importance.shape[0] != weight.shape[0]:
            term = self.terms[name][k] = term.grown(weight.shape[0])
        if term.rotation_in.shape[0] != weight.shape[1]:
            raise ValueError(f"the input width of {name!r} changed since it was rotated; only output growth works")
        left: Tensor | None = term.rotation_out  # plain: U₂ₖᵀ W U₁ₖ
        right: Tensor | None = term.rotation_in
        if is_rotated:  # W = U₂ W′ U₁ᵀ, so U₂ₖᵀ W U₁ₖ = (U₂ᵀU₂ₖ)ᵀ W′ (U₁ᵀU₁ₖ)
            rotation_in, rotation_out = self._rotation(name, weight)
            same = torch.equal(rotation_in, term.rotation_in) and torch.equal(rotation_out, term.rotation_out)
            left = None if same else rotation_out.T @ term.rotation_out
            right = None if same else rotation_in.T @ term.rotation_in
        entry = (
            (self.lam * term.importance).to(weight.device, weight.dtype),
            term.anchor.to(weight.device, weight.dtype),
            None if left is None else left.to(weight.device, weight.dtype),
            None if right is None else right.to(weight.device, weight.dtype),
        )
        self._cache[key] = entry
        return entry

    def penalty(self, model: nn.Module) -> Tensor:
        """EWC's folded penalty on biases and unrotated parameters plus, for every rotated weight X,
        λ/2 Σₖ Ωₖ ∘ (leftₖᵀ X rightₖ − W̄ₖ)², i.e. λ/2 Σₖ Ωₖ ∘ (U₂ₖᵀ W U₁ₖ − W̄ₖ)² (the module docstring)."""
        total = super().penalty(model)
        for name, terms in self.terms.items():
            module = model.get_submodule(name)
            weight = module.weight
            assert isinstance(weight, Tensor)
            for k in range(len(terms)):
                scaled, anchor, left, right = self._term_on(name, k, module)
                value = weight if left is None or right is None else change_basis(weight, left, right)
                total = total + 0.5 * (scaled * (value - anchor).square()).sum()
        return total

    def add_penalty_grad(self, model: nn.Module) -> None:
        """EWC's fused λΩ(θ − θ̄) on the folded parameters; for a rotated weight X, Σₖ leftₖ [λΩₖ∘(leftₖᵀ X rightₖ −
        W̄ₖ)] rightₖᵀ (just λΩₖ∘(X − W̄ₖ) for the term in X's own basis)."""
        super().add_penalty_grad(model)
        with torch.no_grad():
            for name, terms in self.terms.items():
                module = model.get_submodule(name)
                weight = module.weight
                assert isinstance(weight, Tensor)
                grad = torch.zeros_like(weight)
                x = weight.detach()
                for k in range(len(terms)):
                    scaled, anchor, left, right = self._term_on(name, k, module)
                    if left is None or right is None:
                        grad.add_(scaled * (x - anchor))
                    else:
                        diff = change_basis(x, left, right) - anchor
                        grad.add_(change_basis(scaled * diff, left.T, right.T))
                if weight.grad is None:
                    weight.grad = grad
                else:
                    weight.grad.add_(grad)

    # -- state -----------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        state = super().state_dict()
        for name, (rotation_in, rotation_out) in self.rotations.items():
            state[f"rotation.{name}.input"] = rotation_in.detach().cpu().contiguous()
            state[f"rotation.{name}.output"] = rotation_out.detach().cpu().contiguous()
        for name, terms in self.terms.items():
            for k, term in enumerate(terms):
                parts = (term.importance, term.anchor, term.rotation_in, term.rotation_out)
                for part, value in zip(_TERM_PARTS, parts, strict=True):
                    state[f"term.{name}.{k}.{part}"] = value.detach().cpu().contiguous()
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        state = dict(state)
        parts: dict[str, dict[str, Tensor]] = {}
        for key in [k for k in state if k.startswith("rotation.")]:
            name, _, which = key.removeprefix("rotation.").rpartition(".")
            if which not in ("input", "output") or not name:
                raise ValueError(f"unexpected rotation key {key!r}")
            parts.setdefault(name, {})[which] = state.pop(key).to(torch.float64)
        incomplete = [name for name, p in parts.items() if len(p) != 2]
        if incomplete:
            raise ValueError(f"rotations of {incomplete} need both an input and an output rotation")
        found: dict[str, dict[int, dict[str, Tensor]]] = {}
        for key in [k for k in state if k.startswith("term.")]:
            head, _, part = key.removeprefix("term.").rpartition(".")
            name, _, index = head.rpartition(".")
            if part not in _TERM_PARTS or not name or not index.isdigit():
                raise ValueError(f"unexpected term key {key!r}")
            found.setdefault(name, {}).setdefault(int(index), {})[part] = state.pop(key)
        terms: dict[str, list[Term]] = {}
        for name, indexed in found.items():
            if sorted(indexed) != list(range(len(indexed))) or any(len(p) != 4 for p in indexed.values()):
                raise ValueError(f"the terms of {name!r} need importance, anchor, input and output, numbered from 0")
            terms[name] = [
                Term(p["importance"], p["anchor"], p["input"].to(torch.float64), p["output"].to(torch.float64))
                for p in (indexed[k] for k in range(len(indexed)))
            ]
        super().load_state_dict(state)
        self.rotations = {name: (p["input"], p["output"]) for name, p in parts.items()}
        for name, (rotation_in, rotation_out) in self.rotations.items():  # a state written before terms existed
            key = f"{name}.weight"
            if key in self.importance and name not in terms:
                old = Term(self.importance.pop(key), self.anchor.pop(key), rotation_in, rotation_out)
                terms[name] = [old]
        self._set(self.importance, self.anchor)
        self.terms = terms
        self._cache = {}
