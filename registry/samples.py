"""Samples as the store holds them, and the held-out policy every backend applies the same way."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import torch
from torch import Tensor


@dataclass
class SampleSet:
    """Inputs (N, *shape) float32 with their labels (None: unlabeled) and store-assigned ids."""

    inputs: Tensor
    labels: list[str | None]
    ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.labels) != self.inputs.shape[0] or (self.ids and len(self.ids) != len(self.labels)):
            raise ValueError("a sample set needs one label (and id) per input")

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, keep: Sequence[bool]) -> SampleSet:
        index = [i for i, k in enumerate(keep) if k]
        return SampleSet(
            self.inputs[index] if index else self.inputs[:0],
            [self.labels[i] for i in index],
            [self.ids[i] for i in index] if self.ids else [],
        )

    @property
    def labeled(self) -> SampleSet:
        return self.select([label is not None for label in self.labels])

    @property
    def unlabeled(self) -> SampleSet:
        return self.select([label is None for label in self.labels])

    @staticmethod
    def concat(parts: Sequence[SampleSet], input_shape: Sequence[int]) -> SampleSet:
        parts = [p for p in parts if len(p)]
        if not parts:
            return SampleSet(torch.zeros(0, *input_shape), [], [])
        return SampleSet(
            torch.cat([p.inputs for p in parts]),
            [label for p in parts for label in p.labels],
            [i for p in parts for i in p.ids],
        )


@dataclass
class Claim:
    """The pending samples an update takes: training samples and the held-out samples that arrived with them.

    ``token`` is backend-specific (what to acknowledge once the update's version is committed)."""

    train: SampleSet
    held_out: SampleSet
    token: dict[str, object]


def holdout_flags(labels: Sequence[str | None], counts: dict[str, int], fraction: float) -> list[bool]:
    """Stratified hold-out: the n-th labeled sample of a class is held out when ⌊n·f⌋ > ⌊(n−1)·f⌋.

    With f = 0.2 that is the 5th, 10th, … sample of every class: an exact share per class, deterministic, and
    computable from one counter per class.  ``counts`` (samples of each class so far) is updated in place.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    share = Fraction(str(fraction))  # exact decimal arithmetic: no 3·0.1 = 0.30000000000000004 surprises
    flags = []
    for label in labels:
        if label is None:
            flags.append(False)
            continue
        n = counts.get(label, 0) + 1
        counts[label] = n
        flags.append(math.floor(n * share) > math.floor((n - 1) * share))
    return flags
