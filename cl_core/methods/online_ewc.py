"""Online EWC (Schwarz et al., ICML 2018, "Progress & Compress", eq. 8).

One running Fisher and one anchor: after each experience  F ← γ·F + F_new  and  θ* ← θ.  The penalty is
λ/2 · Σᵢ Fᵢ (θᵢ − θ*ᵢ)².  Memory does not grow with the number of experiences.
"""

from __future__ import annotations

import time

from torch import Tensor, nn

from cl_core.experience import Experience
from cl_core.importance import FisherMode
from cl_core.methods.base import ConsolidationReport, JSONValue
from cl_core.methods.ewc import EWC


class OnlineEWC(EWC):
    """EWC with a decayed running Fisher (γ) and the latest parameters as the single anchor."""

    name = "online-ewc"

    def __init__(
        self,
        lam: float = 100.0,
        gamma: float = 1.0,
        fisher_mode: FisherMode = "true",
        max_samples: int | None = None,
        batch_size: int = 256,
    ) -> None:
        super().__init__(lam, fisher_mode, max_samples, batch_size)
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        self.gamma = float(gamma)

    def hparams(self) -> dict[str, JSONValue]:
        return {**super().hparams(), "gamma": self.gamma}

    def consolidate(self, model: nn.Module, experience: Experience) -> ConsolidationReport:
        start = time.perf_counter()
        fisher, samples = self.estimate(model, experience)
        theta = self.current_parameters(model, fisher)
        old, _ = self.grown_state(theta)
        running: dict[str, Tensor] = {
            name: (self.gamma * old[name] + f) if name in old else f for name, f in fisher.items()
        }
        self._set(running, theta)
        self.experiences += 1
        return ConsolidationReport(samples=samples, seconds=time.perf_counter() - start)
