"""Online EWC (Schwarz et al., ICML 2018, "Progress & Compress", eq. 8).

One running Fisher and one anchor.  After each experience k (the paper's eq. 8 and its running Fisher),

    F*ₖ = γ F*ₖ₋₁ + Fₖ,      θ*ₖ = θ   (the parameters after experience k),

and while experience k + 1 trains the penalty is, as the paper writes it,

    λ/2 · ‖θ − θ*ₖ‖²_{γF*ₖ} = λ/2 · Σᵢ γ F*ₖ,ᵢ (θᵢ − θ*ₖ,ᵢ)²,

so γ multiplies the stored F* once more in the penalty (van de Ven's reference implementation does the same:
``fisher = self.gamma * fisher``).  λ is therefore on the paper's (and the literature's) scale; before this
project applied γ only in the running sum, its λ was γ · λ of the paper.  γ = 1 is EWC with its K penalties folded
into one (`cl_core.methods.ewc`) except that the anchor is the latest parameters rather than the Fisher-weighted
mean of all anchors; γ = 0 keeps no protection at all.  Memory does not grow with the number of experiences.
The Fisher is the exact diagonal one of `EWC` (``fisher_mode``: true by default, or empirical).
"""

from __future__ import annotations

import time

from torch import Tensor, nn

from cl_core.experience import Experience
from cl_core.importance import FisherMode
from cl_core.methods.base import ConsolidationReport, JSONValue
from cl_core.methods.ewc import EWC


class OnlineEWC(EWC):
    """EWC with a decayed running Fisher (γ), the latest parameters as the single anchor, and the penalty weighted
    by γF* as in Progress & Compress."""

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

    def penalty_weight(self) -> float:
        """γλ: the penalty is λ/2 ‖θ − θ*‖² weighted by γF* (Schwarz et al. 2018, eq. 8)."""
        return self.gamma * self.lam

    def consolidate(self, model: nn.Module, experience: Experience) -> ConsolidationReport:
        start = time.perf_counter()
        fisher, samples = self.estimate(model, experience)
        theta = self.current_parameters(model, fisher)
        old, _ = self.grown_state(theta)
        running: dict[str, Tensor] = {  # F*ₖ = γ F*ₖ₋₁ + Fₖ
            name: (self.gamma * old[name] + f) if name in old else f for name, f in fisher.items()
        }
        self._set(running, theta)
        self.experiences += 1
        return ConsolidationReport(samples=samples, seconds=time.perf_counter() - start)
