"""Synaptic Intelligence (Zenke, Poole & Ganguli, ICML 2017).

While task μ trains, each parameter's contribution to the drop of the (unregularised) task loss L is accumulated
along the optimisation path (their eq. 3, summed over steps t):
    ω_k^μ = −Σ_t g_k(t) · Δθ_k(t),   g = ∂L/∂θ at θ(t),   Δθ(t) = θ(t+1) − θ(t).
At the end of the task it becomes an importance, normalised by the task's total displacement (eq. 5)
    Ω_k^μ = Σ_{ν ≤ μ} ω_k^ν / ((Δ_k^ν)² + ξ),   Δ_k^ν = θ_k(t^ν) − θ_k(t^{ν−1}),
and the next tasks train with the surrogate loss (eq. 4)
    L̃ = L + c · Σ_k Ω_k (θ̃_k − θ_k)²,   θ̃ = the parameters at the end of the previous task.
g is the gradient of the data loss alone (`after_backward` sees ``.grad`` before the penalty's gradient is added), as
the paper and its code define it.  ω is not clipped: a parameter that moved against its gradient gets a negative
importance, as in the paper.  The penalty is the shared λ/2 · Ω (θ − θ*)² with λ = 2c.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from cl_core.experience import Experience
from cl_core.methods.base import ConsolidationReport, JSONValue, QuadraticPenalty, _grow_to


class SI(QuadraticPenalty):
    """SI: the path integral of the loss's gradient, normalised by the squared displacement (c, ξ)."""

    name = "si"
    strength = "c"
    tuning_grid: ClassVar[dict[str, list[float]] | None] = {
        "c": [0.1, 1.0, 10.0, 100.0, 1000.0],
        "xi": [0.001, 0.1],
    }

    def __init__(self, c: float = 1.0, xi: float = 1e-3) -> None:
        if not c >= 0:
            raise ValueError(f"c must be non-negative, got {c}")
        if not xi > 0:
            raise ValueError(f"xi must be positive (it damps Δ² = 0), got {xi}")
        super().__init__(lam=2.0 * c)
        self.c = float(c)
        self.xi = float(xi)
        self.path: dict[str, Tensor] = {}  # ω of the task in progress
        self.start: dict[str, Tensor] = {}  # θ at the start of the task in progress
        self._theta: dict[str, Tensor] = {}  # θ(t) and g(t) of the step in progress
        self._grad: dict[str, Tensor] = {}

    def hparams(self) -> dict[str, JSONValue]:
        return {"c": self.c, "xi": self.xi}

    # -- the path integral ------------------------------------------------------------------------------------------
    def after_backward(self, model: nn.Module) -> None:
        """Record θ(t) and g(t) = ∂L/∂θ (the data loss only) before the step."""
        for name, param in model.named_parameters():
            if param.grad is None or not param.requires_grad:
                continue
            value = param.detach()
            start = self.start.get(name)
            if start is None:
                self.start[name] = value.clone()  # the first step of a task: θ(t^{μ−1})
            elif start.shape != value.shape:  # the head grew: new rows start where they are now
                self.start[name] = _grow_to(start.to(value.device), value.shape, value)
            self._theta[name] = value.clone()
            self._grad[name] = param.grad.detach().clone()

    def after_step(self, model: nn.Module) -> None:
        """ω ← ω − g(t) · (θ(t+1) − θ(t))."""
        params = dict(model.named_parameters())
        for name, before in self._theta.items():
            after = params[name].detach()
            contribution = -self._grad[name] * (after - before)
            path = self.path.get(name)
            if path is None:
                self.path[name] = contribution
            else:
                if path.shape != contribution.shape:
                    path = _grow_to(path.to(after.device), contribution.shape, torch.zeros_like(contribution))
                self.path[name] = path + contribution
        self._theta, self._grad = {}, {}

    # -- the protocol ----------------------------------------------------------------------------------------------
    def consolidate(self, model: nn.Module, experience: Experience) -> ConsolidationReport:
        """Ω ← Ω + ω / (Δ² + ξ) for the task just trained; θ̃ ← θ; ω and the start reset."""
        params = {name: p.detach().clone() for name, p in model.named_parameters()}
        names = list(dict.fromkeys([*self.importance, *self.path]))
        theta = {name: params[name] for name in names}
        omega, _ = self.grown_state(theta)
        for name in self.path:
            value = theta[name]
            path = self.path[name].to(value.device, value.dtype)
            start = self.start[name].to(value.device, value.dtype)
            if path.shape != value.shape:
                path = _grow_to(path, value.shape, torch.zeros_like(value))
            if start.shape != value.shape:
                start = _grow_to(start, value.shape, value)
            new = path / ((value - start).square() + self.xi)
            omega[name] = omega[name] + new if name in omega else new
        self._set(omega, theta)
        self.path, self.start = {}, {}
        return ConsolidationReport(samples=0, seconds=0.0)

    # -- state -----------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        state = super().state_dict()
        state.update({f"path.{k}": v.detach().cpu().contiguous() for k, v in self.path.items()})
        state.update({f"start.{k}": v.detach().cpu().contiguous() for k, v in self.start.items()})
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.path = {k.removeprefix("path."): v.clone() for k, v in state.items() if k.startswith("path.")}
        self.start = {k.removeprefix("start."): v.clone() for k, v in state.items() if k.startswith("start.")}
        super().load_state_dict({k: v for k, v in state.items() if not k.startswith(("path.", "start."))})
        self._theta, self._grad = {}, {}
