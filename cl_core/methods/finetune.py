"""Fine-tuning: no protection at all, the lower bound every method must beat."""

from __future__ import annotations

from torch import Tensor, nn

from cl_core.experience import Experience
from cl_core.methods.base import ConsolidationReport, ContinualMethod


class FineTune(ContinualMethod):
    """Trains on each experience as if it were the only one; consolidation keeps nothing."""

    name = "finetune"
    closed_form_grad = True
    strength = None  # nothing to tune

    def __init__(self, lam: float = 0.0) -> None:
        super().__init__(lam)

    def consolidate(self, model: nn.Module, experience: Experience) -> ConsolidationReport:
        return ConsolidationReport(samples=0, seconds=0.0)

    def penalty(self, model: nn.Module) -> Tensor:
        return next(model.parameters()).new_zeros(())

    def add_penalty_grad(self, model: nn.Module) -> None:
        """The penalty is zero: nothing to add."""

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if state:
            raise ValueError(f"fine-tune keeps no state, got {sorted(state)[:3]}")
