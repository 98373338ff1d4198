"""The unit a continual learner sees: one experience's data and which outputs compete."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from cl_core.validation import check_inputs, check_targets


@dataclass
class Experience:
    """One experience: inputs, optional labels (output indices), the outputs that compete, the classes it adds.

    ``targets`` is None for unlabeled data (MAS can still measure importance from it).  ``active_outputs`` lists
    the outputs that compete in the softmax (a task's head in task-incremental learning); None means all.
    ``new_classes`` are the output indices first seen in this experience (weight aligning needs them).
    """

    inputs: Tensor
    targets: Tensor | None = None
    active_outputs: tuple[int, ...] | None = None
    new_classes: tuple[int, ...] = field(default_factory=tuple)
    ids: Tensor | None = None  # the store's sample ids (int64), so an exemplar memory can honour deletions

    def __post_init__(self) -> None:
        check_inputs(self.inputs)
        if self.targets is not None:
            check_targets(self.targets, len(self.inputs))
        if self.active_outputs is not None:
            self.active_outputs = tuple(int(i) for i in self.active_outputs)
            if self.targets is not None:
                allowed = torch.tensor(self.active_outputs)
                inside = torch.isin(self.targets.cpu(), allowed)
                if not bool(inside.all()):
                    index = int((~inside).nonzero()[0, 0])
                    raise ValueError(
                        f"targets[{index}] = {int(self.targets[index])} is not among the active outputs "
                        f"{list(self.active_outputs)}"
                    )
        self.new_classes = tuple(int(i) for i in self.new_classes)
        if self.ids is not None and tuple(self.ids.shape) != (len(self.inputs),):
            raise ValueError(f"ids must have one entry per sample, got shape {tuple(self.ids.shape)}")

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def labeled(self) -> bool:
        return self.targets is not None

    def subset(self, index: Tensor | Sequence[int]) -> Experience:
        """The same experience restricted to some samples (for importance on a budget)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        return Experience(
            self.inputs[idx],
            None if self.targets is None else self.targets[idx],
            self.active_outputs,
            self.new_classes,
            None if self.ids is None else self.ids[idx],
        )
