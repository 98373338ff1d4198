"""Samples as the store holds them, and the held-out policy every backend applies the same way."""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch
from torch import Tensor

from registry.records import ExperienceRecord


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

    ``token`` is backend-specific (what to acknowledge once the update's version is committed).  ``exempt`` holds
    the ids that label screening must leave alone (posted with ``relabel`` by an admin, or released from
    quarantine); ``where`` maps every claimed id to the ingestion batch that holds it."""

    train: SampleSet
    held_out: SampleSet
    token: dict[str, object]
    exempt: frozenset[str] = frozenset()
    where: dict[str, int] = field(default_factory=dict)

    @property
    def ids(self) -> list[str]:
        return [*self.train.ids, *self.held_out.ids]

    def without(self, ids: Collection[str]) -> Claim:
        """The same claim with some samples left out of training and evaluation (quarantined or deferred); the
        token still covers them, so `Store.ack` must be told which ones were left out."""
        drop = set(ids)
        return Claim(
            self.train.select([i not in drop for i in self.train.ids]),
            self.held_out.select([i not in drop for i in self.held_out.ids]),
            self.token,
            self.exempt,
            self.where,
        )


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


def count_pending(rows: Iterable[tuple[str | None, bool]]) -> dict[str, Any]:
    """What is waiting for the next update, from (label, held-out flag) rows: {"labeled": n, "unlabeled": n,
    "held_out": n, "per_class": {label: n}} (``per_class`` counts held-out samples too)."""
    labeled = unlabeled = held_out = 0
    per_class: dict[str, int] = {}
    for label, flag in rows:
        if label is not None:
            per_class[label] = per_class.get(label, 0) + 1
        if flag:
            held_out += 1
        elif label is None:
            unlabeled += 1
        else:
            labeled += 1
    return {"labeled": labeled, "unlabeled": unlabeled, "held_out": held_out, "per_class": per_class}


def consumed_experience(
    claim: Claim, version: int, update_id: str | None, quarantined: Collection[str], deferred: Collection[str]
) -> ExperienceRecord:
    """The experience a version's acknowledgement records: the claim's batch range, the ids inside it that were not
    consumed (skipped by the claim, quarantined, deferred), the carried samples it consumed and those it deferred
    (each with its batch), and what it counted."""
    left_out = set(quarantined) | set(deferred)
    carried = {str(i): int(seq) for i, seq in dict(claim.token.get("carried") or {}).items()}  # type: ignore[call-overload]
    skipped = [str(i) for i in list(claim.token.get("skipped") or [])]  # type: ignore[call-overload]
    token = {
        "from": claim.token["from"],
        "upto": claim.token["upto"],
        "excluded": sorted({*skipped, *left_out}, key=_id_order),
        "consumed": {i: seq for i, seq in carried.items() if i not in left_out},
        "deferred": {i: claim.where[i] for i in sorted(set(deferred), key=_id_order) if i in claim.where},
    }
    train = claim.train.select([i not in left_out for i in claim.train.ids])
    held = sum(i not in left_out for i in claim.held_out.ids)
    return ExperienceRecord(
        version=version,
        update_id=update_id,
        claim=token,
        labeled=sum(label is not None for label in train.labels),
        unlabeled=train.labels.count(None),
        held_out=held,
    )


def _id_order(sample_id: str) -> tuple[int, str]:
    return (int(sample_id), sample_id) if sample_id.isdigit() else (0, sample_id)
