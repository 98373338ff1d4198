"""Label screening before training: find systematic label flips in a claim and set them aside (quarantine).

The rule follows confident learning (Northcutt, Jiang & Chuang 2021, "Confident Learning: Estimating Uncertainty
in Dataset Labels", the idea behind cleanlab): a labeled sample whose given label is ``g`` counts towards the pair
(g → k) when the live model assigns it to another class ``k`` at least as confidently as it assigns, on average, the
lineage's trusted held-out samples of ``k`` to ``k`` (the per-class threshold t_k of the paper's confident joint).
Counting per pair over the *whole* claim (every pending post together) is what makes a poison split over many
posts add up.

A softmax is over-confident on inputs unlike anything it has seen, so a genuinely new class is often called an old
one "confidently" (on the protocol's data, a model of digits 0-4 calls about half of the 9s a confident 4).  A count
is therefore confirmed by a second, model-free test: the sample's nearest neighbours in input space, among the
trusted samples of ``k`` and those of ``g`` (the trusted ones for a known class, at most `MAX_REFERENCE` of each,
evenly spread; for a class new in the claim, the claim's other samples labeled ``g``), must be mostly trusted
samples of ``k``: a relabelled image of ``k`` looks like the ``k`` the lineage already has, while an unusual image
of ``g`` still looks like the rest of ``g``.

A pair is *systematic*, and its confirmed samples are quarantined, when it holds at least ``min_count`` samples and
at least ``min_share`` of the samples labeled ``g``; fewer is isolated noise and trains as posted.  Once a pair is
systematic, every sample labeled ``g`` that the model puts in ``k`` (at any confidence) and whose neighbours confirm
it goes too; and when at least ``group_share`` of the samples labeled ``g`` are confirmed flips, none of the claim's
samples labeled ``g`` is believed: the whole group goes to quarantine.  Samples posted
with ``"relabel": true`` (admin) or released from quarantine are exempt: an operator may redefine a class.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from registry import SampleSet
from worker.evaluation import logits_of

MAX_CORE = 4096
"""At most about this many of a new class's samples are compared against (the neighbour search's cost)."""

MAX_REFERENCE = 256
"""At most this many trusted samples of a class are compared against, evenly spread over its held-out reservoir
(the neighbour search's cost stays the same however full the reservoir is; its thresholds use every one)."""

PROJECTION_DIM = 512
"""Inputs with more values than this are compared after a fixed random projection (distances are kept within a
few per cent, Johnson-Lindenstrauss), which bounds the cost of the neighbour search."""


@dataclass(frozen=True)
class ScreeningRules:
    """When a pair counts as systematic (``enabled=False`` turns screening off)."""

    enabled: bool = True
    min_share: float = 0.05
    min_count: int = 10
    neighbours: int = 10
    min_reference: int = 10  # trusted samples a class needs before flips into it are screened
    group_share: float = 0.5  # from this share of confirmed flips, a label's whole group in the claim is set aside


@dataclass
class PairFinding:
    """One (given label → predicted class) pair of the claim."""

    given: str
    predicted: str
    confident: int  # samples the live model assigns to ``predicted`` with at least its threshold
    confirmed: int  # … whose nearest neighbours are mostly trusted samples of ``predicted``
    labeled: int  # samples labeled ``given`` that were screened
    share: float  # confirmed / labeled
    systematic: bool


@dataclass
class Screening:
    """What screening found in a claim and which samples it quarantines."""

    screened: int = 0
    exempt: int = 0
    pairs: list[PairFinding] = field(default_factory=list)
    quarantined: dict[str, tuple[str, str]] = field(default_factory=dict)  # id → (given, predicted)
    thresholds: dict[str, float] = field(default_factory=dict)
    unscreened_classes: list[str] = field(default_factory=list)  # too few trusted samples to screen flips into
    groups: list[str] = field(default_factory=list)  # labels whose every sample in the claim was set aside

    def to_json(self) -> dict[str, Any]:
        return {
            "screened": self.screened,
            "exempt": self.exempt,
            "quarantined": len(self.quarantined),
            "pairs": [asdict(p) for p in self.pairs],
            "thresholds": {k: round(v, 4) for k, v in self.thresholds.items()},
            "unscreened_classes": self.unscreened_classes,
            "groups": self.groups,
        }

    def describe(self) -> str:
        systematic = [p for p in self.pairs if p.systematic]
        if not systematic:
            return "label screening found no systematic flip"
        parts = [f"{p.confirmed} labeled {p.given!r} look like {p.predicted!r} ({p.share:.0%})" for p in systematic]
        if self.groups:
            parts.append(f"every sample labeled {', '.join(map(repr, self.groups))} (mostly flips)")
        return f"label screening quarantined {len(self.quarantined)} samples: " + "; ".join(parts)


def _probabilities(model: nn.Module, inputs: Tensor) -> Tensor:
    return logits_of(model, inputs).softmax(1) if len(inputs) else torch.zeros(0, 0)


def _flat(inputs: Tensor) -> Tensor:
    """Inputs as vectors (randomly projected, with a fixed seed, when they are long)."""
    flat = inputs.flatten(1).float()
    if flat.shape[1] <= PROJECTION_DIM:
        return flat
    generator = torch.Generator().manual_seed(0)
    projection = torch.randn(flat.shape[1], PROJECTION_DIM, generator=generator) / math.sqrt(PROJECTION_DIM)
    return flat @ projection


def _mostly_reference(queries: Tensor, reference: Tensor, others: Tensor, k: int, chunk: int = 512) -> Tensor:
    """For each query: are more than half of its ``k`` nearest neighbours (Euclidean) in ``reference``?"""
    pool = torch.cat([reference, others])
    is_reference = torch.cat([torch.ones(len(reference)), torch.zeros(len(others))])
    k = min(k, len(pool))
    out = []
    for start in range(0, len(queries), chunk):
        distances = torch.cdist(queries[start : start + chunk], pool)
        nearest = distances.topk(k, largest=False).indices
        out.append(is_reference[nearest].mean(1) > 0.5)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


class _References:
    """The trusted samples of each class as vectors for the neighbour search: at most `MAX_REFERENCE` per class,
    evenly spread, flattened only for the classes a search needs."""

    def __init__(self, inputs: Tensor, rows: dict[str, list[int]]) -> None:
        self.inputs, self.rows = inputs, rows
        self._vectors: dict[str, Tensor] = {}

    def count(self, label: str) -> int:
        return len(self.rows.get(label, []))

    def of(self, label: str) -> Tensor:
        if label not in self._vectors:
            rows = self.rows.get(label, [])
            stride = max(1, math.ceil(len(rows) / MAX_REFERENCE))
            self._vectors[label] = _flat(self.inputs[rows[::stride]])
        return self._vectors[label]


def _given_side(
    vectors: Tensor,
    trusted: _References,
    label: str,
    given: list[int],
    suspects: set[int],
    rules: ScreeningRules,
) -> Tensor:
    """What the samples labeled ``g`` are compared against: the lineage's trusted samples of ``g`` when it has
    enough (the claim's own samples never vouch for each other), else, for a class new in the claim, the claim's
    samples labeled ``g`` other than the suspects."""
    if trusted.count(label) >= rules.min_reference:
        return trusted.of(label)
    core = [i for i in given if i not in suspects]
    stride = max(1, len(core) // MAX_CORE)  # a bounded, evenly spread subset keeps the search cheap
    return vectors[core[::stride]]


def screen(
    model: nn.Module,
    classes: Sequence[str],
    samples: SampleSet,
    trusted: SampleSet,
    exempt: Collection[str],
    rules: ScreeningRules,
    trusted_logits: Tensor | None = None,
) -> Screening:
    """Screen a claim's labeled ``samples`` (training and held-out, with ids) with the live ``model`` (whose outputs
    are ``classes``) against the lineage's ``trusted`` held-out samples (``trusted_logits``: the model's outputs on
    them, when already computed)."""
    result = Screening()
    if not rules.enabled or not classes or len(samples) == 0:
        return result
    exempt = set(exempt)
    keep = [
        label is not None and sample_id not in exempt
        for label, sample_id in zip(samples.labels, samples.ids, strict=True)
    ]
    result.exempt = len(samples) - sum(keep)
    samples = samples.select(keep)
    result.screened = len(samples)
    if len(samples) == 0:
        return result
    # per-class thresholds: the live model's mean self-confidence on the trusted samples of each class
    if trusted_logits is None or len(trusted_logits) != len(trusted):
        trusted_logits = logits_of(model, trusted.inputs) if len(trusted) else torch.zeros(0, len(classes))
    trusted_probs = trusted_logits.softmax(1) if len(trusted) else torch.zeros(0, len(classes))
    trusted_rows: dict[str, list[int]] = {}
    for i, label in enumerate(trusted.labels):
        if label is not None and label in classes:
            trusted_rows.setdefault(label, []).append(i)
    for index, label in enumerate(classes):
        rows = trusted_rows.get(label, [])
        if len(rows) >= rules.min_reference:
            result.thresholds[label] = float(trusted_probs[rows, index].mean())
        else:
            result.unscreened_classes.append(label)
    if not result.thresholds:
        return result
    probs = _probabilities(model, samples.inputs)
    confidence, predicted = probs.max(1)
    labels = [str(label) for label in samples.labels]
    given_rows: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        given_rows.setdefault(label, []).append(i)
    candidates: dict[tuple[str, str], list[int]] = {}
    for i, (label, index, conf) in enumerate(zip(labels, predicted.tolist(), confidence.tolist(), strict=True)):
        assigned = classes[index]
        threshold = result.thresholds.get(assigned)
        if assigned != label and threshold is not None and conf >= threshold:
            candidates.setdefault((label, assigned), []).append(i)
    if not candidates:
        return result
    vectors = _flat(samples.inputs)
    trusted_vectors = _References(trusted.inputs, trusted_rows)
    for (given, assigned), rows in sorted(candidates.items()):
        labeled = len(given_rows[given])
        confirmed: list[int] = []
        if len(rows) >= rules.min_count and len(rows) / labeled >= rules.min_share:
            reference = trusted_vectors.of(assigned)
            flagged = set(rows)
            others = _given_side(vectors, trusted_vectors, given, given_rows[given], flagged, rules)
            votes = _mostly_reference(vectors[rows], reference, others, rules.neighbours)
            confirmed = [i for i, vote in zip(rows, votes.tolist(), strict=True) if vote]
        share = len(confirmed) / labeled
        systematic = len(confirmed) >= rules.min_count and share >= rules.min_share
        result.pairs.append(
            PairFinding(given, assigned, len(rows), len(confirmed), labeled, round(share, 4), systematic)
        )
        if systematic:
            # the pair is systematic: every sample labeled `given` the model puts in `assigned` (at any confidence)
            # whose neighbours are mostly trusted `assigned` samples goes too
            suspects = [i for i in given_rows[given] if classes[int(predicted[i])] == assigned]
            others = _given_side(vectors, trusted_vectors, given, given_rows[given], set(suspects), rules)
            votes = _mostly_reference(vectors[suspects], trusted_vectors.of(assigned), others, rules.neighbours)
            extended = [i for i, vote in zip(suspects, votes.tolist(), strict=True) if vote]
            for i in sorted(set(confirmed) | set(extended)):
                result.quarantined[samples.ids[i]] = (given, assigned)
    _set_aside_groups(result, samples, labels, given_rows, rules)
    return result


def _set_aside_groups(
    result: Screening, samples: SampleSet, labels: list[str], given_rows: dict[str, list[int]], rules: ScreeningRules
) -> None:
    """When most samples posted with one label are confirmed flips, the claim's other samples with that label are
    not believed either: the whole group goes to quarantine (with the class most of it was flipped from)."""
    flipped: dict[str, dict[str, int]] = {}
    for given, predicted in result.quarantined.values():
        flipped.setdefault(given, {})
        flipped[given][predicted] = flipped[given].get(predicted, 0) + 1
    for given, counts in sorted(flipped.items()):
        if sum(counts.values()) / len(given_rows[given]) >= rules.group_share:
            dominant = max(sorted(counts), key=lambda c: counts[c])
            result.groups.append(given)
            for i in given_rows[given]:
                result.quarantined.setdefault(samples.ids[i], (given, dominant))
