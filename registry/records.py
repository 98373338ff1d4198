"""The store's records: JSON-able dataclasses, the same for every backend.

Tensors never travel in these records (they go as safetensors bytes); a record is the metadata beside them.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Generic, Literal, Self, TypeVar

UpdateStatus = Literal["queued", "running", "succeeded", "failed", "rejected", "cancelled", "skipped"]
FINISHED: tuple[UpdateStatus, ...] = ("succeeded", "failed", "rejected", "cancelled", "skipped")
"""An update ends in one of these; "skipped" means nothing was left to learn (another update consumed the samples)."""


def now() -> float:
    return time.time()


class _JSON:
    """to_json / from_json for flat dataclasses of JSON values (unknown keys from newer writers are ignored)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class ModelRecord(_JSON):
    """A model's configuration: its architecture and how it learns.  Its versions are stored apart."""

    name: str
    architecture: str
    input_shape: list[int]
    classes: list[str]  # the initial classes (a version's spec holds the classes it can predict)
    options: dict[str, Any] = field(default_factory=dict)
    method: str = "auto"
    method_hparams: dict[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=now)
    created_by: str | None = None
    # how an image becomes an input (`cl_core.preprocessing.Preprocessing` JSON); None: the model takes no images
    preprocessing: dict[str, Any] | None = None
    # prediction traffic kept as unlabeled samples (`registry.captures.CaptureConfig` JSON); None: capture is off
    capture: dict[str, Any] | None = None


@dataclass
class Promotion(_JSON):
    by: str | None
    at: float
    previous: int | None


@dataclass
class VersionRecord(_JSON):
    """An immutable snapshot's metadata: lineage, how it was made, what it saw and how it scored."""

    model: str
    version: int
    parent: int | None
    spec: dict[str, Any]  # cl_core.models.ModelSpec JSON (classes included)
    learner: dict[str, Any]  # cl_core.learner.Learner.hparams() (empty: no learner state yet)
    method: str
    train_config: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, Any] = field(default_factory=dict)  # labeled, unlabeled, held_out, new_classes
    metrics: dict[str, Any] = field(default_factory=dict)
    status: Literal["candidate", "rejected", "imported"] = "candidate"
    update_id: str | None = None
    triggered_by: str | None = None
    promotions: list[dict[str, Any]] = field(default_factory=list)  # Promotion JSON, oldest first
    created_at: float = field(default_factory=now)
    pinned: bool = False  # an operator pinned it: version retention keeps it whatever its age

    @property
    def last_promoted(self) -> float | None:
        """When it last went live (None: it never did)."""
        return max((float(p.get("at") or 0.0) for p in self.promotions), default=None)


T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing, newest first; ``next`` is the position to pass as ``before`` for the next page (None:
    this was the last).  Positions are version numbers for versions and the store's creation sequence numbers for
    updates, so records created while a client pages are never returned twice and never shift a page."""

    items: list[T]
    next: int | None


@dataclass(frozen=True)
class VersionCounts:
    """What a model summary says of its versions, read from stored counters (not by listing them)."""

    count: int  # versions stored now (retention deletes old ones)
    newest: int | None  # the highest version number stored


@dataclass
class UpdateRecord(_JSON):
    """One requested update and where it stands."""

    update_id: str
    model: str
    method: str
    status: UpdateStatus = "queued"
    progress: float = 0.0
    version: int | None = None
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    triggered_by: str | None = None
    reason: str | None = None  # "api", "policy: …"
    attempts: int = 0
    hparams: dict[str, float] = field(default_factory=dict)  # what the request fixed ("lam", …), else chosen
    created_at: float = field(default_factory=now)
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


@dataclass(frozen=True)
class LockHolder:
    """Who holds a model's update lock now, and for how much longer unless refreshed."""

    owner: str
    token: int
    expires_in_s: float


@dataclass
class ExperienceRecord(_JSON):
    """The samples one committed update consumed; its held-out part is that experience's evaluation data."""

    version: int
    update_id: str | None
    claim: dict[str, Any]  # backend-specific description of what was consumed
    labeled: int = 0
    unlabeled: int = 0
    held_out: int = 0
    at: float = field(default_factory=now)


@dataclass
class QuarantineRecord(_JSON):
    """A pending sample that label screening set aside: neither trained nor held out until an admin releases it
    (it then returns to the pending samples, exempt from screening) or deletes it."""

    id: str
    label: str | None  # the label it was posted with
    predicted: str  # the class the live model and the trusted neighbours say it shows
    held_out: bool  # its hold-out flag from ingestion (kept when it is released)
    update_id: str | None  # the update whose screening quarantined it
    reason: str
    seq: int = 0  # the ingestion batch that holds it (bookkeeping of the store)
    at: float = field(default_factory=now)


@dataclass(frozen=True)
class LivePointer:
    """A model's live pointer and the promotion record stored with it, read together.

    ``promotion`` is the record as stored (JSON text; None when the pointer is unsigned): only
    `registry.signing.Verifier` interprets it, so whatever an attacker wrote there reaches the check unchanged."""

    version: int | None
    promotion: str | None = None
