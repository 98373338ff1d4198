"""Dark Experience Replay++ (Buzzega, Boschini, Porrello, Abati & Calderara, NeurIPS 2020).

A reservoir buffer M (Vitter's algorithm R over the stream of training samples, their Alg. 1) keeps inputs with
their labels and the logits z the network produced for them when they were stored.  Every step adds (their eq. 6)
    L = L_CE(current batch) + α · E_{(x, z) ~ M} ‖z − h_θ(x)‖²₂ + β · E_{(x′, y′) ~ M} L_CE(y′, f_θ(x′)),
with the two expectations estimated on two independent memory batches of the current batch's size (drawn without
replacement), and then offers the current batch, with the logits of this step's forward pass, to the reservoir.
‖·‖²₂ is summed over the stored logits and averaged over the memory batch, as the equation is written (the authors'
code averages over logits too, so its α is K times ours for K outputs).  A class-incremental head grows: a sample
stored when the head had K′ < K outputs regresses its K′ stored logits.  β's cross-entropy lets the outputs compete
that competed when the sample was stored (all outputs the head has now, unless the task masked them).

The stream Alg. 1 offers is the training data, each sample once, with the logits of the step that trained on it:
the paper trains one epoch on MNIST.  With several epochs we offer each batch of the last epoch (``offer="last"``,
the default), so that every sample is offered once per experience, with the logits the network gives it after the
experience's other epochs; ``offer="every"`` offers every step of every epoch (a sample can then be stored twice,
with early, barely trained logits).  Measured on the protocol's validation split (README), "last" was the better.
The buffer keeps the store's sample ids, so a deletion request also removes a sample from it (`forget`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cl_core.experience import Experience
from cl_core.methods.base import ConsolidationReport, ContinualMethod, JSONValue

if TYPE_CHECKING:
    from cl_core.trainer import Batch

_KEYS = ("inputs", "targets", "logits", "widths", "masks", "all", "ids")


class DERPP(ContinualMethod):
    """DER++: replay of stored logits (α) and labels (β) from a reservoir buffer of ``buffer_size`` samples."""

    name = "derpp"
    closed_form_grad = True  # no parameter penalty
    strength = "alpha"
    memory_argument = "buffer_size"
    tuning_grid: ClassVar[dict[str, list[float]] | None] = {
        "alpha": [0.03, 0.1, 0.3, 1.0],
        "beta": [0.5, 1.0],
    }

    def __init__(
        self, alpha: float = 0.1, beta: float = 0.5, buffer_size: int = 200, seed: int = 0, offer: str = "last"
    ) -> None:
        super().__init__(0.0)
        if offer not in ("last", "every"):
            raise ValueError(f"offer must be 'last' (each sample once, in the last epoch) or 'every', got {offer!r}")
        self.offer_epochs = offer
        if not alpha >= 0 or not beta >= 0:
            raise ValueError(f"alpha and beta must be non-negative, got {alpha}, {beta}")
        if isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 1:
            raise ValueError(f"buffer_size must be a positive integer, got {buffer_size!r}")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.buffer_size = buffer_size
        self.seed = int(seed)
        self.seen = 0  # samples offered to the reservoir so far
        self.buffer: dict[str, Tensor] = {}

    def hparams(self) -> dict[str, JSONValue]:
        return {
            "alpha": self.alpha,
            "beta": self.beta,
            "buffer_size": self.buffer_size,
            "seed": self.seed,
            "offer": self.offer_epochs,
        }

    def stored_samples(self) -> int:
        return 0 if not self.buffer else int(self.buffer["targets"].shape[0])

    # -- the protocol ----------------------------------------------------------------------------------------------
    def consolidate(self, model: nn.Module, experience: Experience) -> ConsolidationReport:
        """Nothing to estimate: the buffer fills while training."""
        return ConsolidationReport(samples=0, seconds=0.0)

    def penalty(self, model: nn.Module) -> Tensor:
        return next(model.parameters()).new_zeros(())

    def add_penalty_grad(self, model: nn.Module) -> None:
        """No parameter penalty: nothing to add."""

    def batch_loss(self, model: nn.Module, batch: Batch, outputs: Tensor) -> Tensor | None:
        loss = self.replay_loss(model, batch.current, outputs.shape[1], outputs.device)
        if self.offer_epochs == "last" and batch.epoch != batch.epochs:
            return loss
        current = batch.current
        mask = None if batch.mask is None else batch.mask[:current]
        ids = None if batch.ids is None else batch.ids[:current]
        self.offer(batch.inputs[:current], batch.targets[:current], outputs[:current].detach(), mask, ids)
        return loss

    def replay_loss(self, model: nn.Module, size: int, outputs: int, device: torch.device) -> Tensor | None:
        """α · mean ‖z − h(x)‖² on one memory batch + β · cross-entropy on another (None while the buffer is empty)."""
        stored = self.stored_samples()
        if stored == 0 or size == 0 or (self.alpha == 0 and self.beta == 0):
            return None
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.seen)
        take = min(size, stored)
        total: Tensor | None = None
        if self.alpha > 0:
            index = torch.randperm(stored, generator=generator)[:take]
            x, z, widths = (self.buffer[k][index].to(device) for k in ("inputs", "logits", "widths"))
            h = model(x)
            columns = min(z.shape[1], h.shape[1])
            valid = torch.arange(columns, device=device)[None, :] < widths[:, None]
            squared = (z[:, :columns] - h[:, :columns]).square() * valid
            total = self.alpha * squared.sum(dim=1).mean()
        if self.beta > 0:
            index = torch.randperm(stored, generator=generator)[:take]
            x, y = self.buffer["inputs"][index].to(device), self.buffer["targets"][index].to(device)
            logits = model(x)
            mask = self._masks(index, outputs).to(device)
            ce = F.cross_entropy(logits.masked_fill(~mask, float("-inf")), y)
            total = self.beta * ce if total is None else total + self.beta * ce
        return total

    def _masks(self, index: Tensor, outputs: int) -> Tensor:
        """(n, outputs) competing outputs of stored samples: all for those stored unmasked, else their stored row."""
        rows = self.buffer["masks"][index]
        if rows.shape[1] < outputs:
            rows = torch.cat([rows, torch.zeros(len(rows), outputs - rows.shape[1], dtype=torch.bool)], dim=1)
        rows = rows[:, :outputs]
        return rows | self.buffer["all"][index][:, None]

    # -- the reservoir -----------------------------------------------------------------------------------------------
    def offer(self, inputs: Tensor, targets: Tensor, logits: Tensor, mask: Tensor | None, ids: Tensor | None) -> None:
        """Algorithm R: the n-th offered sample fills a free slot, else replaces slot j ~ U{0..n−1} if j < size."""
        n = len(targets)
        if n == 0:
            return
        inputs, targets, logits = inputs.detach().cpu(), targets.detach().cpu(), logits.detach().float().cpu()
        width = logits.shape[1]
        rows = torch.zeros(n, width, dtype=torch.bool) if mask is None else mask.detach().cpu()
        everything = torch.full((n,), mask is None, dtype=torch.bool)
        sample_ids = torch.full((n,), -1, dtype=torch.long) if ids is None else ids.detach().cpu().long()
        new = {
            "inputs": inputs,
            "targets": targets.long(),
            "logits": logits,
            "widths": torch.full((n,), width, dtype=torch.long),
            "masks": rows,
            "all": everything,
            "ids": sample_ids,
        }
        if not self.buffer:
            self.buffer = {k: v[:0].clone() for k, v in new.items()}
        self._widen(width)
        new["logits"], new["masks"] = self._pad(new["logits"], 0.0), self._pad(new["masks"], False)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.seen + 7)
        draws = (torch.rand(n, generator=generator, dtype=torch.float64) * (self.seen + 1 + torch.arange(n))).long()
        free = max(0, self.buffer_size - self.stored_samples())
        fill = min(free, n)
        if fill:
            self.buffer = {k: torch.cat([self.buffer[k], new[k][:fill]]) for k in _KEYS}
        for i in range(fill, n):
            slot = int(draws[i])  # uniform over the samples offered so far, this one included
            if slot < self.buffer_size:
                for k in _KEYS:
                    self.buffer[k][slot] = new[k][i]
        self.seen += n

    def _widen(self, width: int) -> None:
        """Pad stored logits and masks to ``width`` columns (the head grew)."""
        have = self.buffer["logits"].shape[1]
        if width > have:
            self.buffer["logits"] = torch.cat(
                [self.buffer["logits"], torch.zeros(len(self.buffer["logits"]), width - have)], 1
            )
            self.buffer["masks"] = torch.cat(
                [self.buffer["masks"], torch.zeros(len(self.buffer["masks"]), width - have, dtype=torch.bool)], 1
            )

    def _pad(self, value: Tensor, fill: float | bool) -> Tensor:
        width = self.buffer["logits"].shape[1]
        if value.shape[1] == width:
            return value
        pad = torch.full((len(value), width - value.shape[1]), fill, dtype=value.dtype)
        return torch.cat([value, pad], dim=1)

    def forget(self, ids: set[int]) -> int:
        if not self.buffer or not ids:
            return 0
        gone = torch.isin(self.buffer["ids"], torch.tensor(sorted(ids), dtype=torch.long))
        self.buffer = {k: v[~gone] for k, v in self.buffer.items()}
        return int(gone.sum())

    # -- state -----------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        state = {f"buffer.{k}": v.contiguous() for k, v in self.buffer.items()}
        state["seen"] = torch.tensor(self.seen)
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        buffer = {k.removeprefix("buffer."): v.clone() for k, v in state.items() if k.startswith("buffer.")}
        if buffer and set(buffer) != set(_KEYS):
            raise ValueError(f"DER++ buffer state must hold {', '.join(_KEYS)}, got {sorted(buffer)}")
        unknown = [k for k in state if not k.startswith("buffer.") and k != "seen"]
        if unknown:
            raise ValueError(f"unexpected DER++ state keys {unknown[:3]}")
        if buffer and len(buffer["targets"]) > self.buffer_size:
            raise ValueError(f"the buffer holds {len(buffer['targets'])} samples, more than its {self.buffer_size}")
        self.buffer = buffer
        self.seen = int(state.get("seen", torch.tensor(0)))
