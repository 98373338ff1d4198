"""Memory Aware Synapses (Aljundi et al., ECCV 2018).

Importance from unlabeled data, eq. (4) with the squared ℓ2 norm of the output (eq. 5):
    Ωᵢ = (1/N) Σₙ |∂ ‖f(xₙ)‖²₂ / ∂θᵢ|.
Across experiences Ω is accumulated as a running mean weighted by sample counts,
    Ω ← (N·Ω + n·Ω_new) / (N + n),   N ← N + n,
and the anchor is the present parameters; the penalty is λ/2 · Σᵢ Ωᵢ (θᵢ − θ*ᵢ)² (eq. 6, with the ½ that all
quadratic methods here share).  Labels are never needed, so a deployed model can measure importance on its
users' own inputs.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn

from cl_core.experience import Experience
from cl_core.importance import mas_importance
from cl_core.methods.base import ConsolidationReport, JSONValue, QuadraticPenalty, budget_subset


class MAS(QuadraticPenalty):
    """MAS with exact per-sample absolute gradients, accumulated across experiences by sample count."""

    name = "mas"

    def __init__(self, lam: float = 1.0, max_samples: int | None = None, batch_size: int = 256) -> None:
        super().__init__(lam)
        self.max_samples = max_samples
        self.batch_size = batch_size
        self.seen_samples = 0

    def hparams(self) -> dict[str, JSONValue]:
        return {"lam": self.lam, "max_samples": self.max_samples, "batch_size": self.batch_size}

    def consolidate(self, model: nn.Module, experience: Experience) -> ConsolidationReport:
        start = time.perf_counter()
        data = budget_subset(experience, self.max_samples)
        new = mas_importance(model, data.inputs, active_outputs=data.active_outputs, batch_size=self.batch_size)
        n = len(data)
        theta = self.current_parameters(model, new)
        old, _ = self.grown_state(theta)
        total = self.seen_samples + n
        merged = {
            name: (self.seen_samples * old[name] + n * omega) / total if name in old else omega
            for name, omega in new.items()
        }
        self._set(merged, theta)
        self.seen_samples = total
        return ConsolidationReport(samples=n, seconds=time.perf_counter() - start)

    def state_dict(self) -> dict[str, Tensor]:
        state = super().state_dict()
        state["seen_samples"] = torch.tensor(self.seen_samples)
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        state = dict(state)
        self.seen_samples = int(state.pop("seen_samples", torch.tensor(0)))
        super().load_state_dict(state)
