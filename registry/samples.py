"""Samples as the store holds them, and the rules every backend applies to them the same way: the held-out policy,
the pending tally, the claim limit and the retention mask.

The rules are pure functions over `BatchMeta` (what a store keeps beside a batch's tensors), so that both stores
call the same code and a change to a rule (the claim, say) is made once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any, Self

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


@dataclass(frozen=True)
class BatchMeta:
    """One stored ingestion batch as both stores describe it beside its tensors: per row its label (None:
    unlabeled), held-out flag and id; when it arrived; and, for idempotent ingestion, the request key with the
    first answer (ids and flags) to repeat on a retry.  ``seq`` (the batch's number) is the store's key, not part
    of the stored JSON."""

    seq: int
    labels: list[str | None]
    held_out: list[bool]
    ids: list[str]
    at: float
    request_key: str | None = None
    original_ids: list[str] | None = None
    original_held_out: list[bool] | None = None

    def __post_init__(self) -> None:
        if not len(self.labels) == len(self.held_out) == len(self.ids):
            raise ValueError(f"batch {self.seq}: labels, held-out flags and ids differ in length")

    @classmethod
    def from_json(cls, seq: int, data: dict[str, Any]) -> Self:
        return cls(
            seq=seq,
            labels=list(data["labels"]),
            held_out=[bool(h) for h in data["held_out"]],
            ids=[str(i) for i in data["ids"]],
            at=float(data["at"]),
            request_key=data.get("request_key"),
            original_ids=data.get("original_ids"),
            original_held_out=data.get("original_held_out"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "labels": self.labels,
            "held_out": self.held_out,
            "ids": self.ids,
            "at": self.at,
            "request_key": self.request_key,
            "original_ids": self.original_ids,
            "original_held_out": self.original_held_out,
        }

    @property
    def n_train(self) -> int:
        """Rows an update trains on (the held-out ones are evaluation data)."""
        return self.held_out.count(False)

    def select(self, keep: Sequence[bool]) -> BatchMeta:
        """The batch with only the rows ``keep`` marks (the request key and first answer stay: a retry of the
        request must still be recognised)."""
        if len(keep) != len(self.ids):
            raise ValueError(f"batch {self.seq}: a mask of {len(keep)} rows for {len(self.ids)}")
        return replace(
            self,
            labels=[v for v, k in zip(self.labels, keep, strict=True) if k],
            held_out=[v for v, k in zip(self.held_out, keep, strict=True) if k],
            ids=[v for v, k in zip(self.ids, keep, strict=True) if k],
        )


@dataclass(frozen=True)
class ClaimToken:
    """What a claim took: the batches numbered above ``after`` up to ``upto``.  `Store.ack` records it as the
    experience's claim (JSON ``{"from": after, "upto": upto}``) and refuses it once another claim was acknowledged
    after ``after``."""

    after: int
    upto: int

    def to_json(self) -> dict[str, int]:
        return {"from": self.after, "upto": self.upto}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        return cls(after=int(data["from"]), upto=int(data["upto"]))

    def covers(self, seq: int) -> bool:
        return self.after < seq <= self.upto


@dataclass
class Claim:
    """The pending samples an update takes: training samples and the held-out samples that arrived with them,
    and the token to acknowledge once the update's version is committed."""

    train: SampleSet
    held_out: SampleSet
    token: ClaimToken


@dataclass(frozen=True)
class PendingCounts:
    """What is waiting for the next update.  ``labeled`` excludes the held-out samples; ``per_class`` counts every
    labeled sample (held-out ones included), since it is what the update policy compares against its thresholds."""

    labeled: int = 0
    unlabeled: int = 0
    held_out: int = 0
    per_class: dict[str, int] = field(default_factory=dict)

    @property
    def trainable(self) -> int:
        """Samples an update would train on (labeled and unlabeled, held-out ones excluded)."""
        return self.labeled + self.unlabeled

    @property
    def total(self) -> int:
        """Every pending sample, held-out ones included (what the ingestion buffer limit counts)."""
        return self.labeled + self.unlabeled + self.held_out

    def plus(self, labels: Sequence[str | None], held_out: Sequence[bool]) -> PendingCounts:
        """These counts with one more batch's rows: the one rule for what a pending row counts as."""
        per_class = dict(self.per_class)
        labeled, unlabeled, held = self.labeled, self.unlabeled, self.held_out
        for label, flag in zip(labels, held_out, strict=True):
            if label is not None:
                per_class[label] = per_class.get(label, 0) + 1
            if flag:
                held += 1
            elif label is None:
                unlabeled += 1
            else:
                labeled += 1
        return PendingCounts(labeled, unlabeled, held, per_class)


def tally_pending(pending: Iterable[BatchMeta]) -> PendingCounts:
    """The pending counts of the pending batches."""
    counts = PendingCounts()
    for batch in pending:
        counts = counts.plus(batch.labels, batch.held_out)
    return counts


def claim_batches(pending: Iterable[BatchMeta], limit: int | None) -> list[BatchMeta]:
    """The batches a claim takes from the pending ones (in arrival order): whole batches, in order, while their
    training rows fit in ``limit``; the first batch with training rows is taken whatever its size, so that a claim
    always makes progress."""
    taken: list[BatchMeta] = []
    counted = 0
    for batch in pending:
        if limit is not None and counted and counted + batch.n_train > limit:
            break
        taken.append(batch)
        counted += batch.n_train
    return taken


@dataclass
class RetentionPass:
    """One retention pass over the consumed batches, visited newest first: a batch older than ``max_age_s`` loses
    every row; otherwise rows survive while fewer than ``max_samples`` rows of newer batches have survived.
    Pending batches are never visited (their samples stay until trained)."""

    now: float
    max_age_s: float | None
    max_samples: int | None
    kept: int = 0
    training: int = 0
    held_out: int = 0

    def mask(self, batch: BatchMeta) -> list[bool]:
        """Which rows of ``batch`` survive, given what newer batches kept (pure: `record` accounts for it)."""
        old = self.max_age_s is not None and self.now - batch.at > self.max_age_s
        keep, survivors = [], self.kept
        for _ in batch.held_out:
            survive = not old and (self.max_samples is None or survivors < self.max_samples)
            survivors += survive
            keep.append(survive)
        return keep

    def record(self, batch: BatchMeta, keep: Sequence[bool]) -> None:
        """Account for ``keep`` applied to ``batch`` (what survived counts against ``max_samples``)."""
        for survive, flag in zip(keep, batch.held_out, strict=True):
            if survive:
                self.kept += 1
            elif flag:
                self.held_out += 1
            else:
                self.training += 1

    @property
    def dropped(self) -> dict[str, int]:
        return {"training": self.training, "held_out": self.held_out}


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
