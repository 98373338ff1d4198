"""What an update takes from its claim: new classes with too few samples wait, systematic label flips go to
quarantine, and the rest trains.

An update the policy started learns a new class once it has ``CL_POLICY_MIN_SAMPLES_PER_NEW_CLASS`` samples
(held-out ones included); until then the class's samples stay pending (the acknowledgement defers them) and the
model lists it under ``waiting_classes``, so one stray label never holds up the classes that are ready.  An update
requested explicitly learns every pending class: the caller asked for it.  Label screening (`worker.screening`)
runs over everything else the claim holds, every pending post together, whoever started the update.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from torch import Tensor, nn

from cl_core.labels import natural_order
from registry import Claim, QuarantineRecord, SampleSet, Store, UpdateRecord
from worker.audit import audit
from worker.config import WorkerSettings
from worker.screening import Screening, screen

POLICY = "policy"
"""How the reasons of updates the update policy started begin."""


def by_policy(reason: str | None) -> bool:
    """Whether an update was started by the update policy (its reason says so)."""
    return (reason or "").startswith(POLICY)


@dataclass(frozen=True)
class WaitingClass:
    """A new class that has fewer samples than a class needs before it is learned."""

    label: str
    samples: int
    needed: int  # samples a new class needs in all (held-out ones included)


def waiting_classes(per_class: Mapping[str, int], known: Collection[str], min_samples: int) -> list[WaitingClass]:
    """The new classes (not in ``known``) with fewer than ``min_samples`` samples, in natural label order."""
    return [
        WaitingClass(label, per_class[label], min_samples)
        for label in natural_order(per_class)
        if label not in known and per_class[label] < min_samples
    ]


@dataclass
class Prepared:
    """A claim after deferral and screening: what trains, what waits, what was quarantined."""

    claim: Claim
    deferred: list[str] = field(default_factory=list)
    waiting: list[WaitingClass] = field(default_factory=list)
    screening: Screening = field(default_factory=Screening)

    @property
    def quarantined(self) -> list[str]:
        return list(self.screening.quarantined)

    def nothing_left(self) -> str:
        """Why nothing is left to learn from."""
        reasons = []
        if self.waiting:
            waiting = ", ".join(f"{w.label!r} ({w.samples} of {w.needed})" for w in self.waiting)
            reasons.append(f"new classes wait for more samples: {waiting}")
        if self.screening.quarantined:
            reasons.append(self.screening.describe())
        return "no pending samples to learn from" + (f" ({'; '.join(reasons)})" if reasons else "")


def prepare_claim(
    store: Store,
    claim: Claim,
    live: nn.Module | None,
    known: list[str],
    trusted: SampleSet,
    update: UpdateRecord,
    settings: WorkerSettings,
    fence: int | None,
    trusted_logits: Tensor | None = None,
) -> Prepared:
    """Defer the samples of new classes that are not ready (in updates the policy started), screen the rest with
    the ``live`` model (None: the first version, nothing to screen against) against the lineage's ``trusted``
    held-out samples (``trusted_logits``: the live model's outputs on them, when already computed), and record the
    systematic flips in the store's quarantine (before training: a crash later keeps them there)."""
    name, update_id = update.model, update.update_id
    min_samples_per_new_class = settings.policy_min_samples_per_new_class if by_policy(update.reason) else 1
    claimed = SampleSet.concat([claim.train, claim.held_out], trusted.inputs.shape[1:])
    per_class: dict[str, int] = {}
    for label in claimed.labels:
        if label is not None:
            per_class[label] = per_class.get(label, 0) + 1
    waiting = waiting_classes(per_class, known, min_samples_per_new_class)
    waiting_labels = {w.label for w in waiting}
    deferred = [i for i, label in zip(claimed.ids, claimed.labels, strict=True) if label in waiting_labels]
    prepared = Prepared(claim.without(deferred), deferred, waiting)
    if live is None:
        return prepared
    rest = SampleSet.concat([prepared.claim.train.labeled, prepared.claim.held_out], trusted.inputs.shape[1:])
    prepared.screening = screening = screen(
        live, known, rest, trusted, claim.exempt, settings.screening_rules(), trusted_logits
    )
    if not screening.quarantined:
        return prepared
    held = set(claim.held_out.ids)
    records = [
        QuarantineRecord(
            id=sample_id,
            label=given,
            predicted=predicted,
            held_out=sample_id in held,
            update_id=update_id,
            reason=f"labeled {given!r}, looks like {predicted!r}",
            seq=claim.where[sample_id],
        )
        for sample_id, (given, predicted) in screening.quarantined.items()
    ]
    store.quarantine(name, records, fence=fence)
    pairs = [
        {"given": p.given, "predicted": p.predicted, "samples": p.confirmed, "share": p.share}
        for p in screening.pairs
        if p.systematic
    ]
    audit(
        "samples.quarantined",
        actor=f"label-screening ({update_id})",
        model=name,
        update_id=update_id,
        count=len(records),
        pairs=pairs,
    )
    prepared.claim = prepared.claim.without(screening.quarantined)
    return prepared
