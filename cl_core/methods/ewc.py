"""Elastic Weight Consolidation (Kirkpatrick et al., PNAS 2017).

One quadratic penalty per past experience k, eq. (3):  L(θ) = L_new(θ) + Σₖ Σᵢ λ/2 · Fₖ,ᵢ (θᵢ − θ*ₖ,ᵢ)².
The K quadratics fold exactly into one, up to a constant independent of θ:
    Σₖ Fₖ (θ − θ*ₖ)² = Ω (θ − θ̄)² + const,   Ω = Σₖ Fₖ,   θ̄ = Σₖ Fₖ θ*ₖ / Ω,
so the state is one (Ω, θ̄) pair: memory and step cost stay constant however many experiences pass.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn

from cl_core.experience import Experience
from cl_core.importance import FisherMode, fisher_diagonal
from cl_core.methods.base import ConsolidationReport, JSONValue, QuadraticPenalty, budget_subset


def fold_quadratics(old_omega: Tensor, old_anchor: Tensor, omega: Tensor, anchor: Tensor) -> tuple[Tensor, Tensor]:
    """Ω_old (θ − θ̄_old)² + Ω (θ − θ*)² = (Ω_old + Ω)(θ − θ̄)² + const: returns (Ω_old + Ω, θ̄)."""
    total = old_omega + omega
    # θ̄ = (Ω_old θ̄_old + Ω θ*) / (Ω_old + Ω), written as θ* + Ω_old (θ̄_old − θ*) / (Ω_old + Ω) so that it is
    # exactly θ* where nothing was important before; where nothing is important at all, θ* will do.
    shift = old_omega * (old_anchor - anchor) / total.clamp_min(torch.finfo(omega.dtype).tiny)
    return total, anchor + torch.where(total > 0, shift, torch.zeros_like(shift))


class EWC(QuadraticPenalty):
    """EWC with the exact diagonal Fisher (true by default: the expectation over the model's own predictions)."""

    name = "ewc"

    def __init__(
        self,
        lam: float = 100.0,
        fisher_mode: FisherMode = "true",
        max_samples: int | None = None,
        batch_size: int = 256,
    ) -> None:
        super().__init__(lam)
        if fisher_mode not in ("true", "empirical"):
            raise ValueError(f"unknown fisher_mode {fisher_mode!r}; expected 'true' or 'empirical'")
        self.fisher_mode: FisherMode = fisher_mode
        self.max_samples = max_samples
        self.batch_size = batch_size
        self.experiences = 0

    def hparams(self) -> dict[str, JSONValue]:
        return {
            "lam": self.lam,
            "fisher_mode": self.fisher_mode,
            "max_samples": self.max_samples,
            "batch_size": self.batch_size,
        }

    def estimate(self, model: nn.Module, experience: Experience) -> tuple[dict[str, Tensor], int]:
        """The experience's diagonal Fisher (on at most ``max_samples`` samples) and the samples it used."""
        data = budget_subset(experience, self.max_samples)
        if self.fisher_mode == "empirical" and data.targets is None:
            raise ValueError("EWC with the empirical Fisher needs labeled data")
        fisher = fisher_diagonal(
            model,
            data.inputs,
            data.targets,
            mode=self.fisher_mode,
            active_outputs=data.active_outputs,
            batch_size=self.batch_size,
        )
        return fisher, len(data)

    def consolidate(self, model: nn.Module, experience: Experience) -> ConsolidationReport:
        start = time.perf_counter()
        fisher, samples = self.estimate(model, experience)
        self.fold(fisher, self.current_parameters(model, fisher))
        self.experiences += 1
        return ConsolidationReport(samples=samples, seconds=time.perf_counter() - start)

    def fold(self, fisher: dict[str, Tensor], theta: dict[str, Tensor]) -> None:
        """Fold one more penalty F (θ − θ*)² into the state (Ω, θ̄), exactly up to a θ-independent constant."""
        omega, anchor = self.grown_state(theta)
        folded_omega, folded_anchor = {}, {}
        for name, f in fisher.items():
            old_omega = omega.get(name, torch.zeros_like(f))
            old_anchor = anchor.get(name, theta[name])
            folded_omega[name], folded_anchor[name] = fold_quadratics(old_omega, old_anchor, f, theta[name])
        self._set(folded_omega, folded_anchor)

    def state_dict(self) -> dict[str, Tensor]:
        state = super().state_dict()
        state["experiences"] = torch.tensor(self.experiences)
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        state = dict(state)
        self.experiences = int(state.pop("experiences", torch.tensor(0)))
        super().load_state_dict(state)
