"""Learning without Forgetting (Li & Hoiem, ECCV 2016; TPAMI 2017).

Before a new task trains, the old network's responses Y_o on the new data are its "old heads'" outputs; training
then minimises (their eq. 2 and §3)
    λ_o · L_old(Y_o, Ŷ_o) + L_new(Y_n, Ŷ_n) + R(θ),
    L_old(y_o, ŷ_o) = −Σᵢ y′_o⁽ⁱ⁾ log ŷ′_o⁽ⁱ⁾,   y′_o⁽ⁱ⁾ = (y_o⁽ⁱ⁾)^{1/T} / Σⱼ (y_o⁽ʲ⁾)^{1/T}  (same for ŷ′_o),
with temperature T = 2 in the paper.  Since y_o are softmax probabilities, y′_o = softmax(z_o / T) of the old
logits z_o, and ŷ′_o = softmax(ẑ_o / T) of the current network's logits on the same outputs.  One L_old per old head
(task-incremental: the outputs each old task used; class- and domain-incremental: every output the old network had),
averaged over the batch.

Here the old network is the parameters (and buffers) saved by `consolidate`, run with `torch.func.functional_call` on
each batch, so its responses need not be recorded per sample.  We minimise KL(y′_o ‖ ŷ′_o) = L_old − H(y′_o): the
same gradient as the paper's cross-entropy (H(y′_o) does not depend on θ) and exactly zero at the old parameters.
Not reproduced: the paper's warm-up step (training the new head alone first) and its weight decay R(θ); van de Ven &
Tolias's LwF does without both too.  L_new is the trainer's cross-entropy; λ_o is ``lam``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from cl_core.experience import Experience
from cl_core.methods.base import ConsolidationReport, ContinualMethod, JSONValue

if TYPE_CHECKING:
    from cl_core.trainer import Batch


class LwF(ContinualMethod):
    """Distillation of the previous network's softened outputs on the old heads (λ_o = ``lam``, T)."""

    name = "lwf"
    closed_form_grad = True  # no parameter penalty: its gradient is zero
    tuning_grid: ClassVar[dict[str, list[float]] | None] = {
        "lam": [0.3, 1.0, 3.0, 10.0],
        "temperature": [1.0, 2.0],
    }

    def __init__(self, lam: float = 1.0, temperature: float = 2.0) -> None:
        super().__init__(lam)
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        self.old: dict[str, Tensor] = {}  # the previous network's parameters and buffers, by name
        self.heads: list[tuple[int, ...] | None] = []  # outputs of each old head (None: all the old network had)
        self._device_copy: dict[str, Tensor] = {}

    def hparams(self) -> dict[str, JSONValue]:
        return {"lam": self.lam, "temperature": self.temperature}

    # -- the protocol ----------------------------------------------------------------------------------------------
    def consolidate(self, model: nn.Module, experience: Experience) -> ConsolidationReport:
        """The network after this experience becomes the old network; the experience's outputs an old head."""
        self.old = {k: v.detach().cpu().clone() for k, v in [*model.named_parameters(), *model.named_buffers()]}
        self._device_copy = {}
        head = None if experience.active_outputs is None else tuple(int(o) for o in experience.active_outputs)
        if head not in self.heads:
            self.heads.append(head)
        return ConsolidationReport(samples=0, seconds=0.0)

    def penalty(self, model: nn.Module) -> Tensor:
        return next(model.parameters()).new_zeros(())

    def add_penalty_grad(self, model: nn.Module) -> None:
        """No parameter penalty: nothing to add."""

    def old_logits(self, model: nn.Module, inputs: Tensor) -> Tensor:
        """z_o: the old network's logits on ``inputs`` (eval mode, no gradient)."""
        param = next(model.parameters())
        if not self._device_copy or next(iter(self._device_copy.values())).device != param.device:
            self._device_copy = {k: v.to(param.device) for k, v in self.old.items()}
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return functional_call(model, self._device_copy, (inputs,))
        finally:
            model.train(was_training)

    def distillation(self, logits: Tensor, old_logits: Tensor) -> Tensor:
        """Σ over old heads of the batch mean of KL(softmax(z_o/T) ‖ softmax(ẑ_o/T)) on the head's outputs."""
        total = logits.new_zeros(())
        width = old_logits.shape[1]
        for head in self.heads:
            cols = list(range(width)) if head is None else [o for o in head if o < width]
            if not cols:
                continue
            index = torch.tensor(cols, device=logits.device)
            log_p = F.log_softmax(old_logits.index_select(1, index) / self.temperature, dim=1)
            log_q = F.log_softmax(logits.index_select(1, index) / self.temperature, dim=1)
            total = total + F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")
        return total

    def batch_loss(self, model: nn.Module, batch: Batch, outputs: Tensor) -> Tensor | None:
        if not self.old or self.lam == 0:
            return None
        return self.lam * self.distillation(outputs, self.old_logits(model, batch.inputs))

    # -- state -----------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        if not self.old:
            return {}
        width = max((len(h) for h in self.heads if h is not None), default=0)
        table = torch.full((len(self.heads), width), -1, dtype=torch.long)
        for g, head in enumerate(self.heads):
            if head is not None:
                table[g, : len(head)] = torch.tensor(head, dtype=torch.long)
        state = {f"old.{k}": v.contiguous() for k, v in self.old.items()}
        state["heads.outputs"] = table
        state["heads.all"] = torch.tensor([h is None for h in self.heads], dtype=torch.bool)
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        unknown = [k for k in state if not k.startswith(("old.", "heads."))]
        if unknown:
            raise ValueError(f"unexpected LwF state keys {unknown[:3]}")
        self.old = {k.removeprefix("old."): v.detach().clone() for k, v in state.items() if k.startswith("old.")}
        self._device_copy = {}
        if not self.old:
            self.heads = []
            return
        self.heads = [
            None if bool(everything) else tuple(int(o) for o in row.tolist() if o >= 0)
            for row, everything in zip(state["heads.outputs"], state["heads.all"], strict=True)
        ]
