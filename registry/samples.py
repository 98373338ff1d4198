"""Samples as the store holds them, and the rules every backend applies to them the same way: the held-out policy,
the pending tally (samples set aside by label screening or left pending by an update included), the claim limit,
the retention mask and the experience an acknowledgement records.

The rules are pure functions over `BatchMeta` (what a store keeps beside a batch's tensors), so that both stores
call the same code and a change to a rule (the claim, say) is made once.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any, Self

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
    relabel: bool = False  # posted by an admin redefining a class: exempt from label screening

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
            relabel=bool(data.get("relabel", False)),
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
            **({"relabel": True} if self.relabel else {}),
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
    experience's claim (JSON ``{"from": after, "upto": upto}``, with what `consumed_experience` adds) and refuses it
    once another claim was acknowledged after ``after``.

    ``carried`` (id → batch) are the samples it took that were pending again inside consumed batches (deferred by an
    update, or released from quarantine); ``skipped`` the ids inside its batch range that it did not take
    (quarantined, or carried and so taken from their own batch)."""

    after: int
    upto: int
    carried: Mapping[str, int] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()

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
    and the token to acknowledge once the update's version is committed.

    ``exempt`` holds the ids that label screening must leave alone (posted with ``relabel`` by an admin, or released
    from quarantine); ``where`` maps every claimed id to the ingestion batch that holds it."""

    train: SampleSet
    held_out: SampleSet
    token: ClaimToken
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

    def to_json(self) -> dict[str, Any]:
        return {
            "labeled": self.labeled,
            "unlabeled": self.unlabeled,
            "held_out": self.held_out,
            "per_class": self.per_class,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        per_class = {str(c): int(n) for c, n in dict(data.get("per_class") or {}).items()}
        return cls(int(data["labeled"]), int(data["unlabeled"]), int(data["held_out"]), per_class)

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


@dataclass(frozen=True)
class SetAside:
    """The samples whose state is not given by their batch's position alone: ``carried`` (id → batch) are pending
    again inside consumed batches (deferred by an update, or released from quarantine), ``quarantined`` are set
    aside by label screening (never claimed, never tallied), ``exempt`` were released from quarantine (exempt from
    label screening).  Each store keeps them its own way; these rules read them the same way."""

    carried: Mapping[str, int] = field(default_factory=dict)
    quarantined: frozenset[str] = frozenset()
    exempt: frozenset[str] = frozenset()

    @property
    def carried_batches(self) -> list[int]:
        """The batches that hold carried samples (what a store must read besides the unconsumed ones)."""
        return sorted(set(self.carried.values()))

    @property
    def kept_by_retention(self) -> frozenset[str]:
        """Ids retention never drops: quarantined samples and carried (pending) ones."""
        return self.quarantined | frozenset(self.carried)

    def carried_rows(self, holding: Iterable[BatchMeta]) -> list[BatchMeta]:
        """The carried rows of ``holding`` (the batches numbered by `carried_batches`), batch by batch."""
        out = []
        for batch in holding:
            keep = [self.carried.get(i) == batch.seq for i in batch.ids]
            if any(keep):
                out.append(batch.select(keep))
        return out

    def fresh_rows(self, unconsumed: Iterable[BatchMeta]) -> list[BatchMeta]:
        """The rows of the unconsumed batches that are neither quarantined nor carried (a batch with no such row
        stays, empty, so a claim still moves past it)."""
        skip = self.kept_by_retention
        return [batch.select([i not in skip for i in batch.ids]) for batch in unconsumed]

    def pending(self, holding: Iterable[BatchMeta], unconsumed: Iterable[BatchMeta]) -> list[BatchMeta]:
        """The pending rows as batches, in claim order: the carried rows first, then the fresh ones."""
        return [*self.carried_rows(holding), *self.fresh_rows(unconsumed)]


@dataclass(frozen=True)
class ClaimPlan:
    """What a claim takes (`plan_claim`): per batch the rows to read (``batches``, carried rows first), the token,
    where each id lies and which ids are exempt from label screening."""

    batches: list[BatchMeta]
    token: ClaimToken
    where: dict[str, int]
    exempt: frozenset[str]

    def claim(self, parts: Sequence[SampleSet], shape: Sequence[int]) -> Claim:
        """The claim from the stored rows of ``batches`` (one SampleSet per batch, in order, at least the planned
        rows): training and held-out samples split by the planned flags."""
        train, held = [], []
        for meta, part in zip(self.batches, parts, strict=True):
            flags = dict(zip(meta.ids, meta.held_out, strict=True))
            train.append(part.select([flags.get(i) is False for i in part.ids]))
            held.append(part.select([flags.get(i) is True for i in part.ids]))
        return Claim(SampleSet.concat(train, shape), SampleSet.concat(held, shape), self.token, self.exempt, self.where)


def plan_claim(
    aside: SetAside, holding: Iterable[BatchMeta], unconsumed: Sequence[BatchMeta], after: int, limit: int | None
) -> ClaimPlan:
    """The one claim rule of both stores: the pending rows (`SetAside.pending`), whole batches while their training
    rows fit in ``limit`` (`claim_batches`); the token covers the unconsumed batches taken."""
    carried = aside.carried_rows(holding)
    taken = claim_batches([*carried, *aside.fresh_rows(unconsumed)], limit)
    upto = max((b.seq for b in taken[len(carried) :]), default=after)
    where: dict[str, int] = {}
    exempt = set(aside.exempt)
    for batch in taken:
        where.update(dict.fromkeys(batch.ids, batch.seq))
        if batch.relabel:
            exempt.update(batch.ids)
    skip = aside.kept_by_retention
    skipped = tuple(i for b in unconsumed if after < b.seq <= upto for i in b.ids if i in skip)
    took = {i: seq for i, seq in aside.carried.items() if i in where}
    return ClaimPlan(taken, ClaimToken(after, upto, took, skipped), where, frozenset(exempt & set(where)))


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
    Pending batches are never visited (their samples stay until trained), and the ids in ``protect`` always survive
    without counting against ``max_samples`` (quarantined and carried samples, and what the caller protects)."""

    now: float
    max_age_s: float | None
    max_samples: int | None
    protect: frozenset[str] = frozenset()
    kept: int = 0
    training: int = 0
    held_out: int = 0

    def mask(self, batch: BatchMeta) -> list[bool]:
        """Which rows of ``batch`` survive, given what newer batches kept (pure: `record` accounts for it)."""
        old = self.max_age_s is not None and self.now - batch.at > self.max_age_s
        keep, survivors = [], self.kept
        for sample_id in batch.ids:
            if sample_id in self.protect:
                keep.append(True)
                continue
            survive = not old and (self.max_samples is None or survivors < self.max_samples)
            survivors += survive
            keep.append(survive)
        return keep

    def record(self, batch: BatchMeta, keep: Sequence[bool]) -> None:
        """Account for ``keep`` applied to ``batch`` (what survived counts against ``max_samples``)."""
        for survive, flag, sample_id in zip(keep, batch.held_out, batch.ids, strict=True):
            if survive:
                self.kept += sample_id not in self.protect
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


def consumed_experience(
    claim: Claim, version: int, update_id: str | None, quarantined: Collection[str], deferred: Collection[str]
) -> ExperienceRecord:
    """The experience a version's acknowledgement records: the claim's batch range, the ids inside it that were not
    consumed (skipped by the claim, quarantined, deferred), the carried samples it consumed and those it deferred
    (each with its batch), and what it counted."""
    left_out = set(quarantined) | set(deferred)
    token = {
        **claim.token.to_json(),
        "excluded": sorted({*claim.token.skipped, *left_out}, key=_id_order),
        "consumed": {i: seq for i, seq in claim.token.carried.items() if i not in left_out},
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


def consumed_held_out(claim: Claim, quarantined: Collection[str], deferred: Collection[str]) -> SampleSet:
    """The held-out samples an acknowledgement makes its experience (in claim order): the claim's, less those
    quarantined or deferred."""
    left_out = set(quarantined) | set(deferred)
    return claim.held_out.select([i not in left_out for i in claim.held_out.ids])


def experience_mask(claim: dict[str, Any], meta: BatchMeta) -> list[bool]:
    """Which rows of a batch are held-out samples of the experience whose claim JSON is ``claim`` (how the held-out
    store folds in experiences that were stored inside their batches: data written before it existed)."""
    token, excluded, consumed = experience_parts(claim)
    inside = token.covers(meta.seq)
    return [
        flag and ((inside and i not in excluded) or consumed.get(i) == meta.seq)
        for i, flag in zip(meta.ids, meta.held_out, strict=True)
    ]


def experience_batches(claim: dict[str, Any], stored: Iterable[int]) -> list[int]:
    """The batches among ``stored`` that may hold held-out samples of the experience (`experience_mask`)."""
    token, _, consumed = experience_parts(claim)
    carried = set(consumed.values())
    return [seq for seq in stored if token.covers(seq) or seq in carried]


def experience_parts(claim: dict[str, Any]) -> tuple[ClaimToken, set[str], dict[str, int]]:
    """How to read an experience's held-out samples back: its batch range, the ids inside it that it did not
    consume, and the carried samples (id → batch) it consumed from older batches."""
    excluded = {str(i) for i in claim.get("excluded") or ()}
    consumed = {str(i): int(seq) for i, seq in dict(claim.get("consumed") or {}).items()}
    return ClaimToken.from_json(claim), excluded, consumed


def _id_order(sample_id: str) -> tuple[int, str]:
    return (int(sample_id), sample_id) if sample_id.isdigit() else (0, sample_id)
