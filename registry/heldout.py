"""The held-out store: the evaluation data of every experience, bounded per class by a reservoir, kept apart from
the ingestion batches so that raw-sample retention never touches it.  Both stores apply these rules the same way.

When an acknowledgement makes held-out samples an experience (`Store.ack`, `Store.add_experience`), they are
offered to their class's reservoir (Vitter's algorithm R): the first ``capacity`` samples of a class are kept; the
n-th one after that replaces a uniformly drawn slot with probability capacity / n.  Every sample a class ever held
out is then equally likely to be in the reservoir, whichever experience it came from, so old experiences keep a
fair share instead of being pushed out by new ones.  The draws are a keyed hash of (seed, class, n) with the seed
stored in the index: replaying the same offers gives the same reservoir, in any process and in either store.

A deleted sample leaves its slot empty; the next samples of its class fill empty slots first (so after deletions
the newest samples are favoured until the reservoir is full again).  A capacity lowered later keeps the first
``capacity`` slots of each class; one raised later is filled by the next samples.

Rows are stored in *parts* (one per acknowledgement, with the rows it kept), described by the index: the slots of
every class, the ids each part stores and the last experience folded in (so an experience that was committed but
not folded in, after a crash or in data written before this store existed, is folded in later, exactly once).
A row evicted from its reservoir stays in its part until the parts are consolidated (`HeldOutIndex.crowded`):
the store never holds more than about twice the reservoir's rows.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import torch

from registry import tensors
from registry.records import ExperienceRecord
from registry.samples import SampleSet

DEFAULT_CAPACITY = 500
"""Held-out samples kept per class: well above the forgetting gate's trusted minimum (30 per class)."""
MAX_PARTS = 32
"""Parts beyond this are consolidated into one (reading the whole store stays a bounded number of reads)."""


def draw(seed: int, label: str, n: int) -> int:
    """A uniform integer in [0, n) for the n-th sample of ``label`` (bias below n / 2¹²⁸)."""
    digest = hashlib.sha256(f"{seed}\0{label}\0{n}".encode()).digest()
    return int.from_bytes(digest[:16], "big") % n


@dataclass
class Reservoir:
    """One class: how many of its held-out samples were offered, and the ids in its slots."""

    seen: int = 0
    slots: list[str] = field(default_factory=list)


@dataclass
class HeldOutIndex:
    """What the held-out store holds (JSON beside the parts).  ``last`` is (version, at) of the last experience
    folded in; ``parts`` maps each part to the ids stored in it, in order; ``gen`` changes with every write (the
    Redis store compares it before writing)."""

    seed: int = field(default_factory=lambda: secrets.randbits(62))
    classes: dict[str, Reservoir] = field(default_factory=dict)
    parts: dict[str, list[str]] = field(default_factory=dict)
    last: tuple[int, float] | None = None
    next_part: int = 0
    gen: int = 0

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        last = data.get("last")
        return cls(
            seed=int(data["seed"]),
            classes={
                str(c): Reservoir(int(r["seen"]), [str(i) for i in r["slots"]]) for c, r in data["classes"].items()
            },
            parts={str(p): [str(i) for i in ids] for p, ids in data["parts"].items()},
            last=None if last is None else (int(last[0]), float(last[1])),
            next_part=int(data["next_part"]),
            gen=int(data.get("gen", 0)),
        )

    def clone(self) -> HeldOutIndex:
        """A copy to change (lists copied, ids shared: strings): far cheaper than parsing the JSON again."""
        return HeldOutIndex(
            self.seed,
            {c: Reservoir(r.seen, list(r.slots)) for c, r in self.classes.items()},
            {p: list(ids) for p, ids in self.parts.items()},
            self.last,
            self.next_part,
            self.gen,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": 1,
            "seed": self.seed,
            "classes": {c: {"seen": r.seen, "slots": r.slots} for c, r in self.classes.items()},
            "parts": self.parts,
            "last": None if self.last is None else list(self.last),
            "next_part": self.next_part,
            "gen": self.gen,
        }

    @property
    def live(self) -> set[str]:
        """Ids in some reservoir slot (what `held_out` returns)."""
        return {i for r in self.classes.values() for i in r.slots}

    @property
    def stored(self) -> int:
        return sum(len(ids) for ids in self.parts.values())

    def pending(self, experiences: Sequence[ExperienceRecord]) -> list[int]:
        """Positions in ``experiences`` of those not folded in yet (after the last one that was; none if that one
        is no longer listed)."""
        if self.last is None:
            return list(range(len(experiences)))
        for position in range(len(experiences) - 1, -1, -1):
            e = experiences[position]
            if (e.version, e.at) == self.last:
                return list(range(position + 1, len(experiences)))
        return []

    def offer(self, labels: Sequence[str | None], ids: Sequence[str], capacity: int) -> list[bool]:
        """Offer one experience's held-out rows (in order) to their reservoirs; returns which rows are in a slot
        afterwards.  The caller stores those rows as a new part (`fold`)."""
        if capacity < 1:
            raise ValueError(f"the held-out capacity must be at least 1, got {capacity}")
        for sample_id, label in zip(ids, labels, strict=True):
            if label is None:
                continue  # held-out rows are labeled; an unlabeled one has nothing to evaluate
            reservoir = self.classes.setdefault(label, Reservoir())
            del reservoir.slots[capacity:]
            reservoir.seen += 1
            if len(reservoir.slots) < capacity:
                reservoir.slots.append(sample_id)
            else:
                j = draw(self.seed, label, reservoir.seen)
                if j < capacity:
                    reservoir.slots[j] = sample_id
        live = self.live
        return [i in live for i in ids]

    def fold(self, experience: ExperienceRecord, kept_ids: Sequence[str]) -> tuple[str | None, list[str]]:
        """Record a folded-in experience whose kept rows go to a new part (None when it kept none); returns the
        part's name and the parts left without a live row (to remove)."""
        part = None
        if kept_ids:
            part = str(self.next_part)
            self.parts[part] = list(kept_ids)
        self.next_part += 1
        self.last = (experience.version, experience.at)
        self.gen += 1
        return part, self.drop_dead_parts()

    def drop_dead_parts(self) -> list[str]:
        live = self.live
        dead = [p for p, ids in self.parts.items() if not any(i in live for i in ids)]
        for p in dead:
            del self.parts[p]
        return dead

    def remove(self, ids: Iterable[str]) -> list[str]:
        """Forget samples (deletion by id): out of their slots and their parts; returns the parts that stored any
        of them (to rewrite without them, or to remove once they hold no live row)."""
        wanted = set(ids)
        for reservoir in self.classes.values():
            reservoir.slots = [i for i in reservoir.slots if i not in wanted]
        touched = [p for p, stored in self.parts.items() if wanted.intersection(stored)]
        for p in touched:
            self.parts[p] = [i for i in self.parts[p] if i not in wanted]
        if touched:
            self.gen += 1
        return touched

    @property
    def crowded(self) -> bool:
        """Whether the parts should be consolidated: too many of them, or more than half their rows evicted."""
        stored = self.stored
        return len(self.parts) > MAX_PARTS or (stored > 64 and stored > 2 * len(self.live))


@dataclass
class Part:
    """One part's rows: inputs with their ids, labels and the experience (version) each belongs to."""

    samples: SampleSet
    experiences: list[int]

    def to_bytes(self, **extra: Any) -> bytes:
        meta = {"ids": self.samples.ids, "labels": self.samples.labels, "experiences": self.experiences, **extra}
        return tensors.dumps({"inputs": self.samples.inputs}, meta)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        meta = tensors.metadata(data)
        samples = SampleSet(tensors.loads(data)["inputs"], list(meta["labels"]), [str(i) for i in meta["ids"]])
        return cls(samples, [int(v) for v in meta["experiences"]])

    @staticmethod
    def header(data: bytes) -> dict[str, Any]:
        return tensors.metadata(data)

    def select(self, keep: Sequence[bool]) -> Part:
        return Part(self.samples.select(keep), [v for v, k in zip(self.experiences, keep, strict=True) if k])

    def without(self, ids: Iterable[str]) -> Part:
        drop = set(ids)
        return self.select([i not in drop for i in self.samples.ids])


def new_part(held: SampleSet, version: int) -> Part:
    return Part(held, [version] * len(held))


def consolidate(index: HeldOutIndex, parts: Mapping[str, Part], shape: Sequence[int]) -> tuple[str, Part, list[str]]:
    """One part with every live row of ``parts`` (in their order); updates the index and returns the new part's
    name, the part and the names it replaces."""
    live = index.live
    ordered = [parts[p] for p in sorted(parts, key=int)]
    kept = [p.select([i in live for i in p.samples.ids]) for p in ordered]
    merged = Part(SampleSet.concat([k.samples for k in kept], shape), [v for k in kept for v in k.experiences])
    name = str(index.next_part)
    replaced = list(index.parts)
    index.parts = {name: list(merged.samples.ids)} if len(merged.samples) else {}
    index.next_part += 1
    index.gen += 1
    return name, merged, replaced


@dataclass
class HeldOut:
    """The held-out store as one read gives it: every live row in one set, grouped by experience (versions
    ascending, rows in the order they were stored), and each experience's rows as a span of it.  One tensor and a
    span per experience, not a set per experience: an update scores the rows in one pass and slices the spans, at
    a cost linear in the (bounded) rows and free of a per-experience object for each of the thousand experiences a
    long-running model's reservoir may still hold a row of."""

    samples: SampleSet
    spans: dict[int, tuple[int, int]]  # experience → [start, end) in ``samples``, versions ascending

    def __len__(self) -> int:
        return len(self.samples)

    @classmethod
    def of(cls, experiences: Mapping[int, SampleSet], shape: Sequence[int]) -> HeldOut:
        """From one set per experience (versions ascending; empty ones left out)."""
        kept = {v: experiences[v] for v in sorted(experiences) if len(experiences[v])}
        spans, start = {}, 0
        for v, samples in kept.items():
            spans[v] = (start, start + len(samples))
            start += len(samples)
        return cls(SampleSet.concat(list(kept.values()), shape), spans)

    def experience(self, version: int) -> SampleSet | None:
        span = self.spans.get(version)
        if span is None:
            return None
        start, end = span
        return SampleSet(self.samples.inputs[start:end], self.samples.labels[start:end], self.samples.ids[start:end])

    def as_dict(self) -> dict[int, SampleSet]:
        return {v: found for v in self.spans if (found := self.experience(v)) is not None}

    def select(self, versions: Iterable[int]) -> HeldOut:
        """The rows of the experiences among ``versions`` (itself, no copy, when that is every experience held)."""
        chosen = set(versions)
        wanted = [v for v in self.spans if v in chosen]
        if len(wanted) == len(self.spans):
            return self
        rows = [r for v in wanted for r in range(*self.spans[v])]
        spans, start = {}, 0
        for v in wanted:
            spans[v] = (start, start + self.spans[v][1] - self.spans[v][0])
            start = spans[v][1]
        samples = self.samples
        inputs = samples.inputs.index_select(0, torch.tensor(rows, dtype=torch.long))
        return HeldOut(SampleSet(inputs, [samples.labels[r] for r in rows], [samples.ids[r] for r in rows]), spans)


def grouped(index: HeldOutIndex, parts: Mapping[str, Part], shape: Sequence[int]) -> HeldOut:
    """The live rows of ``parts`` grouped by experience: one pass over the rows and one copy of the kept rows, part
    by part, into the result (parts hold ascending experiences as acknowledgements write them; otherwise, after an
    import of an older experience, a stable sort by experience and one gather)."""
    live = index.live
    ordered = [parts[name] for name in sorted(parts, key=int) if len(parts[name].samples)]
    keyed: list[tuple[int, int, int]] = []  # (experience, part, row) of every live row, in storage order
    for number, part in enumerate(ordered):
        for row, (version, sample_id) in enumerate(zip(part.experiences, part.samples.ids, strict=True)):
            if sample_id in live:
                keyed.append((version, number, row))
    if any(keyed[i][0] > keyed[i + 1][0] for i in range(len(keyed) - 1)):
        keyed.sort(key=lambda k: k[0])  # stable: storage order within an experience
    labels = [ordered[p].samples.labels[r] for _, p, r in keyed]
    ids = [ordered[p].samples.ids[r] for _, p, r in keyed]
    if len(ordered) == 1 and len(keyed) == len(ordered[0].samples) and all(r == i for i, (_, _, r) in enumerate(keyed)):
        inputs = ordered[0].samples.inputs  # the part itself, in order: shared, read-only
    else:
        inputs = torch.empty(len(keyed), *shape, dtype=ordered[0].samples.inputs.dtype if ordered else torch.float32)
        start = 0
        while start < len(keyed):  # runs of rows from one part: one gather each, straight into the result
            source = keyed[start][1]
            end = start
            while end < len(keyed) and keyed[end][1] == source:
                end += 1
            rows = torch.tensor([r for _, _, r in keyed[start:end]], dtype=torch.long)
            torch.index_select(ordered[source].samples.inputs, 0, rows, out=inputs[start:end])
            start = end
    spans: dict[int, tuple[int, int]] = {}
    for position, (version, _, _) in enumerate(keyed):
        first = spans[version][0] if version in spans else position
        spans[version] = (first, position + 1)
    return HeldOut(SampleSet(inputs, labels, ids), spans)


def empty(shape: Sequence[int]) -> SampleSet:
    return SampleSet(torch.zeros(0, *shape), [], [])
