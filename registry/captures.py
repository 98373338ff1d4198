"""The capture reservoir: a bounded, sampled share of a model's prediction traffic, kept as unlabeled samples for
the MAS importance of the next update and for feedback labels.  Both stores apply these rules the same way.

* **Ids.**  A captured input's id comes from the model's sample counter (`Store.reserve_ids`, taken in blocks by
  the API process before the prediction is answered), so it is a sample id like any other: `samples/delete` takes
  it, and feedback turns the input into a labeled sample that keeps it (so deleting it later also scrubs it from
  exemplar memories).
* **Pending and observed.**  Every capture offered gets a position (``next_seq``), kept or not.  A stored capture
  whose position is above ``consumed`` is *pending*: the next update claims it (`CaptureClaim`) and measures MAS
  importance on it; the update's acknowledgement moves ``consumed`` to the claim's position.  Observed captures stay
  stored, for feedback, until newer captures need their slot.
* **Bounded.**  At most ``capacity`` captures are stored (the model's ``capture.max_samples``).  A new capture takes
  a free slot, else the slot of the oldest observed capture, else (every slot pending) it is kept with probability
  capacity / n, n being the captures offered since the last acknowledgement, in a uniformly drawn slot (Vitter's
  algorithm R, drawn from a keyed hash of a stored seed, as `registry.heldout` does).  The pending captures are so
  a uniform sample of the traffic since the last update (exactly, when no update is running while they arrive).
  This is the one place where pending data is dropped: the reservoir is a sample, not a queue.
* **Feedback** takes a capture out of the reservoir (it becomes an ordinary labeled sample, screened and gated like
  any) and remembers its id among the last `ANSWERED_KEPT` answered ones, so a second label for it is refused.
* **Deletion** frees the slot (and the store tombstones the id, so a capture still in flight is not stored).

The index (positions, slots, answered ids) is one JSON value; each capture's input is stored apart under its id
(a one-row safetensors payload), so evicting or deleting one never rewrites the others.
"""

from __future__ import annotations

import heapq
import secrets
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Self

import torch
from torch import Tensor

from cl_core.validation import shown
from registry import tensors
from registry.heldout import draw
from registry.samples import SampleSet

ANSWERED_KEPT = 1000
"""Answered ids remembered (for the message of a second feedback; a second label is refused in any case, since the
capture left the reservoir with the first)."""
MAX_RESERVE = 1_000_000
"""The most ids one `Store.reserve_ids` call takes."""
MIN_RATE, MAX_RATE = 0.0, 1.0


@dataclass(frozen=True)
class CaptureConfig:
    """A model's capture setting (``ModelRecord.capture``): the share of predicted inputs kept, and the reservoir's
    size.  ``rate`` 0 keeps the stored captures (for feedback) but captures nothing new."""

    rate: float
    max_samples: int

    def __post_init__(self) -> None:
        rate = self.rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not MIN_RATE <= rate <= MAX_RATE:
            raise ValueError(f"capture.rate must be a number in [0, 1], got {shown(rate)}")
        if isinstance(self.max_samples, bool) or not isinstance(self.max_samples, int) or self.max_samples < 1:
            raise ValueError(f"capture.max_samples must be an integer of at least 1, got {shown(self.max_samples)}")
        object.__setattr__(self, "rate", float(rate))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        if not isinstance(data, Mapping) or set(data) != {"rate", "max_samples"}:
            raise ValueError("capture must be an object with exactly 'rate' and 'max_samples'")
        return cls(data["rate"], data["max_samples"])

    def to_json(self) -> dict[str, Any]:
        return {"rate": self.rate, "max_samples": self.max_samples}


@dataclass
class Slot:
    """One stored capture: its id, its position among the offers and when it was captured (epoch seconds)."""

    id: str
    seq: int
    at: float


@dataclass
class CaptureIndex:
    """The reservoir's state (JSON).  ``gen`` changes with every write (the Redis store compares it)."""

    seed: int = field(default_factory=lambda: secrets.randbits(62))
    next_seq: int = 1
    consumed: int = 0
    slots: list[Slot] = field(default_factory=list)
    answered: list[str] = field(default_factory=list)
    gen: int = 0

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        ids, seqs, ats = data["ids"], data["seqs"], data["ats"]
        if not len(ids) == len(seqs) == len(ats):
            raise ValueError("a capture index needs one position and time per id")
        return cls(
            seed=int(data["seed"]),
            next_seq=int(data["next_seq"]),
            consumed=int(data["consumed"]),
            slots=[Slot(str(i), int(s), float(a)) for i, s, a in zip(ids, seqs, ats, strict=True)],
            answered=[str(i) for i in data.get("answered", [])],
            gen=int(data.get("gen", 0)),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": 1,
            "seed": self.seed,
            "next_seq": self.next_seq,
            "consumed": self.consumed,
            "ids": [s.id for s in self.slots],
            "seqs": [s.seq for s in self.slots],
            "ats": [round(s.at, 3) for s in self.slots],
            "answered": self.answered,
            "gen": self.gen,
        }

    @property
    def ids(self) -> set[str]:
        return {s.id for s in self.slots}

    @property
    def pending(self) -> list[Slot]:
        """The captures no update has observed yet, in the order they were offered."""
        return sorted((s for s in self.slots if s.seq > self.consumed), key=lambda s: s.seq)

    def offer(self, ids: Sequence[str], at: float, capacity: int) -> tuple[list[str], list[str]]:
        """Offer captures (in order); returns the ids stored and the ids evicted to make room (the caller writes
        the first and removes the second).  An id already stored or answered is not offered again."""
        if capacity < 1:
            raise ValueError(f"the capture capacity must be at least 1, got {capacity}")
        evicted = self.trim(capacity)
        known = self.ids | set(self.answered)
        observed = [(s.seq, s.id) for s in self.slots if s.seq <= self.consumed]
        heapq.heapify(observed)  # the oldest observed capture goes first
        position = {s.id: n for n, s in enumerate(self.slots)}
        stored: list[str] = []
        for sample_id in ids:
            if sample_id in known:
                continue
            known.add(sample_id)
            seq = self.next_seq
            self.next_seq += 1
            slot = Slot(sample_id, seq, at)
            if len(self.slots) < capacity:
                position[sample_id] = len(self.slots)
                self.slots.append(slot)
            elif observed:
                _, old = heapq.heappop(observed)
                j = position.pop(old)
                evicted.append(old)
                self.slots[j], position[sample_id] = slot, j
            else:
                j = draw(self.seed, "capture", seq - self.consumed)  # n: offers since the last acknowledgement
                if j >= capacity:
                    continue
                old = self.slots[j].id
                position.pop(old)
                evicted.append(old)
                self.slots[j], position[sample_id] = slot, j
            stored.append(sample_id)
        stored_now = self.ids
        stored = [i for i in stored if i in stored_now]  # a capture evicted by a later one of the same offer
        evicted = [i for i in evicted if i not in stored_now]
        self.gen += 1
        return stored, evicted

    def trim(self, capacity: int, *, max_age_s: float | None = None, now: float | None = None) -> list[str]:
        """Drop captures beyond ``capacity`` (observed ones first, then the newest) and observed ones older than
        ``max_age_s``; returns their ids."""
        now = time.time() if now is None else now
        dropped = []
        if max_age_s is not None:
            old = {s.id for s in self.slots if s.seq <= self.consumed and now - s.at > max_age_s}
            dropped += [s.id for s in self.slots if s.id in old]
            self.slots = [s for s in self.slots if s.id not in old]
        if len(self.slots) > capacity:
            consumed = self.consumed
            order = sorted(self.slots, key=lambda s: (s.seq > consumed, s.seq if s.seq <= consumed else -s.seq))
            excess = {s.id for s in order[: len(self.slots) - capacity]}
            dropped += [s.id for s in self.slots if s.id in excess]
            self.slots = [s for s in self.slots if s.id not in excess]
        if dropped:
            self.gen += 1
        return dropped

    def consume(self, upto: int) -> None:
        """An update observed the captures up to position ``upto`` (they stay stored, for feedback)."""
        if upto > self.consumed:
            self.consumed = upto
            self.gen += 1

    def take(self, ids: Sequence[str]) -> dict[str, FeedbackStatus]:
        """Feedback for ``ids`` (distinct): each stored one leaves the reservoir and is remembered as answered."""
        stored, answered = self.ids, set(self.answered)
        outcome: dict[str, FeedbackStatus] = {}
        for sample_id in ids:
            if sample_id in stored:
                outcome[sample_id] = "accepted"
            elif sample_id in answered:
                outcome[sample_id] = "answered"
            else:
                outcome[sample_id] = "unknown"
        taken = [i for i, status in outcome.items() if status == "accepted"]
        if taken:
            self.remove(taken)
            self.answered = [*self.answered, *taken][-ANSWERED_KEPT:]
        return outcome

    def remove(self, ids: Iterable[str]) -> list[str]:
        """Forget captures (deletion by id, feedback); returns the ids that were stored."""
        wanted = set(ids)
        found = [s.id for s in self.slots if s.id in wanted]
        if found:
            self.slots = [s for s in self.slots if s.id not in wanted]
            self.gen += 1
        return found

    def counts(self) -> CaptureCounts:
        return CaptureCounts(
            stored=len(self.slots),
            pending=sum(s.seq > self.consumed for s in self.slots),
            offered=self.next_seq - 1,
            observed_upto=self.consumed,
        )


FeedbackStatus = Literal["accepted", "answered", "unknown"]


@dataclass(frozen=True)
class CaptureCounts:
    """What the reservoir holds: captures stored, those no update has observed yet, every capture ever offered to
    it, and the position the last acknowledgement reached."""

    stored: int = 0
    pending: int = 0
    offered: int = 0
    observed_upto: int = 0


@dataclass(frozen=True)
class CaptureClaim:
    """The pending captures an update observes (unlabeled samples with their ids) and the position its
    acknowledgement (`Store.ack_captures`) moves the reservoir to."""

    samples: SampleSet
    upto: int

    def __len__(self) -> int:
        return len(self.samples)


@dataclass(frozen=True)
class FeedbackResult:
    """What `Store.label_captures` did with each item, in the order given: ``status`` per id, the held-out flag of
    the accepted ones (a labeled sample is held out like any other), and the labels accepted."""

    status: dict[str, FeedbackStatus]
    held_out: dict[str, bool]
    labels: dict[str, str]

    @property
    def accepted(self) -> list[str]:
        return [i for i, s in self.status.items() if s == "accepted"]


def row_bytes(row: Tensor) -> bytes:
    """One capture's input as stored (safetensors, float32)."""
    return tensors.dumps({"input": row.detach().to(torch.float32)})


def row_tensor(data: bytes, shape: Sequence[int]) -> Tensor | None:
    """A stored capture's input, or None when the bytes are not one (a row torn by a crash: the capture is lost)."""
    try:
        row = tensors.loads(data)["input"]
    except (ValueError, KeyError):
        return None
    return row if tuple(row.shape) == tuple(shape) else None


def gather(slots: Sequence[Slot], rows: Mapping[str, Tensor], shape: Sequence[int]) -> SampleSet:
    """The unlabeled sample set of the slots whose rows were read (in slot order; a missing row is left out)."""
    found = [s.id for s in slots if s.id in rows]
    if not found:
        return SampleSet(torch.zeros(0, *shape), [], [])
    return SampleSet(torch.stack([rows[i] for i in found]), [None] * len(found), found)


def distinct(ids: Collection[str]) -> list[str]:
    return list(dict.fromkeys(ids))
