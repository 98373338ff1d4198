"""Several methods' penalties trained at once (e.g. online EWC from labeled data plus MAS from unlabeled data).

Not a method of its own: `Learner` uses it to present its parts to the trainer as one.  Consolidation stays with
the parts (each sees the data that suits it), so `consolidate` here is an error.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING

from torch import Tensor, nn

from cl_core.experience import Experience
from cl_core.methods.base import ConsolidationReport, ContinualMethod

if TYPE_CHECKING:
    from cl_core.trainer import Batch


class Combined(ContinualMethod):
    """The sum of the parts' penalties and extra losses; hooks run for every part."""

    name = "combined"
    registered = False  # not a method to build by name

    def __init__(self, parts: Sequence[ContinualMethod]) -> None:
        super().__init__(0.0)
        self.parts = list(parts)
        self.closed_form_grad = all(p.closed_form_grad for p in self.parts)  # type: ignore[misc]

    def consolidate(self, model: nn.Module, experience: Experience) -> ConsolidationReport:
        raise TypeError("consolidate each part of a Combined method on the data that suits it")

    def penalty(self, model: nn.Module) -> Tensor:
        total = self.parts[0].penalty(model)
        for part in self.parts[1:]:
            total = total + part.penalty(model)
        return total

    def add_penalty_grad(self, model: nn.Module) -> None:
        for part in self.parts:
            part.add_penalty_grad(model)

    def state_dict(self) -> dict[str, Tensor]:
        raise TypeError("a Combined method has no state of its own; save its parts")

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        raise TypeError("a Combined method has no state of its own; load its parts")

    def prepare(self, model: nn.Module) -> None:
        for part in self.parts:
            part.prepare(model)

    def finish(self, model: nn.Module) -> None:
        for part in reversed(self.parts):
            part.finish(model)

    @contextmanager
    def training_hooks(self, model: nn.Module) -> Iterator[None]:
        with ExitStack() as stack:
            for part in self.parts:
                stack.enter_context(part.training_hooks(model))
            yield

    def batch_loss(self, model: nn.Module, batch: Batch, outputs: Tensor) -> Tensor | None:
        losses = [loss for part in self.parts if (loss := part.batch_loss(model, batch, outputs)) is not None]
        return _sum(losses)

    def after_backward(self, model: nn.Module) -> None:
        for part in self.parts:
            part.after_backward(model)

    def after_step(self, model: nn.Module) -> None:
        for part in self.parts:
            part.after_step(model)

    def forget(self, ids: set[int]) -> int:
        return sum(part.forget(ids) for part in self.parts)

    def stored_samples(self) -> int:
        return sum(part.stored_samples() for part in self.parts)

    def extra_loss(self) -> Tensor | None:
        return _sum([loss for part in self.parts if (loss := part.extra_loss()) is not None])


def _sum(losses: list[Tensor]) -> Tensor | None:
    if not losses:
        return None
    total = losses[0]
    for loss in losses[1:]:
        total = total + loss
    return total
