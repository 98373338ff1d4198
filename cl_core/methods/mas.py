"""Memory Aware Synapses (Aljundi et al., ECCV 2018).

Importance from unlabeled data, eq. (4) with the squared ℓ2 norm of the output (eq. 5):
    Ωᵢ = (1/N) Σₙ |∂ ‖f(xₙ)‖²₂ / ∂θᵢ|.
Across experiences, ``accumulate`` chooses how a new experience's Ω joins the past:

* ``"sum"`` (default, the paper): Ω ← Ω + Ω_new.  The paper accumulates importance over tasks ("the importance
  weights are accumulated"), and the official code adds them (``acc_omega = prev_omega + new_omega``): after K
  tasks every task keeps its own full protection, so a fixed λ protects the first task as much after the tenth
  task as after the second.
* ``"mean"`` (departs from the paper): a running mean weighted by sample counts,
  Ω ← (N·Ω + n·Ω_new) / (N + n),   N ← N + n.
  Ω then stays on one task's scale however many experiences pass, so the protection of each old task shrinks as
  1/K at a fixed λ.  Kept because it is the right accumulator when the "experiences" are repeated measurements of
  one distribution, not new tasks: the service's companion MAS measures importance on every update's captured
  traffic (`cl_core.learner.Learner.observe`), and a sum there would multiply the penalty by the number of
  updates (see ``worker.config.WorkerSettings.mas_accumulate``).

The anchor is the present parameters; the penalty is λ/2 · Σᵢ Ωᵢ (θᵢ − θ*ᵢ)² (eq. 6 writes λ Σᵢ Ωᵢ (θᵢ − θ*ᵢ)²;
the ½ is the one all quadratic methods here share, so λ here is twice the paper's).  Labels are never needed, so a
deployed model can measure importance on its users' own inputs.
"""

from __future__ import annotations

import time
from typing import Literal

import torch
from torch import Tensor, nn

from cl_core.experience import Experience
from cl_core.importance import mas_importance
from cl_core.methods.base import ConsolidationReport, JSONValue, QuadraticPenalty, budget_subset

Accumulate = Literal["sum", "mean"]
ACCUMULATORS: tuple[Accumulate, ...] = ("sum", "mean")


class MAS(QuadraticPenalty):
    """MAS with exact per-sample absolute gradients, summed over experiences (or their sample-weighted mean)."""

    name = "mas"

    def __init__(
        self,
        lam: float = 1.0,
        max_samples: int | None = None,
        batch_size: int = 256,
        accumulate: Accumulate = "sum",
    ) -> None:
        super().__init__(lam)
        if accumulate not in ACCUMULATORS:
            raise ValueError(f"unknown accumulate {accumulate!r}; expected 'sum' (the paper) or 'mean'")
        self.max_samples = max_samples
        self.batch_size = batch_size
        self.accumulate: Accumulate = accumulate
        self.seen_samples = 0

    def hparams(self) -> dict[str, JSONValue]:
        return {
            "lam": self.lam,
            "max_samples": self.max_samples,
            "batch_size": self.batch_size,
            "accumulate": self.accumulate,
        }

    def merge(self, old: Tensor | None, new: Tensor, n: int) -> Tensor:
        """One experience's importance (measured on ``n`` samples) joined to the past's, as ``accumulate`` says."""
        if old is None:
            return new
        if self.accumulate == "sum":
            return old + new  # the paper's accumulation (official code: acc_omega = prev_omega + new_omega)
        return (self.seen_samples * old + n * new) / (self.seen_samples + n)

    def consolidate(self, model: nn.Module, experience: Experience) -> ConsolidationReport:
        start = time.perf_counter()
        data = budget_subset(experience, self.max_samples)
        new = mas_importance(model, data.inputs, active_outputs=data.active_outputs, batch_size=self.batch_size)
        n = len(data)
        theta = self.current_parameters(model, new)
        old, _ = self.grown_state(theta)
        merged = {name: self.merge(old.get(name), omega, n) for name, omega in new.items()}
        self._set(merged, theta)
        self.seen_samples += n
        return ConsolidationReport(samples=n, seconds=time.perf_counter() - start)

    def state_dict(self) -> dict[str, Tensor]:
        state = super().state_dict()
        state["seen_samples"] = torch.tensor(self.seen_samples)
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        state = dict(state)
        self.seen_samples = int(state.pop("seen_samples", torch.tensor(0)))
        super().load_state_dict(state)
