"""The store interface: models, versions, method state, samples, updates and the live-version pointer.

Two implementations share it: `LocalStore` (a directory; the embedded default) and `RedisStore` (distributed
mode).  Everything above the store (worker pipeline, service) talks to this interface only, and the contract tests
in tests/registry run against both.

Rules every implementation keeps:
* a version becomes visible only once its weights, state and metadata are all written (atomic commit);
* the live pointer changes by compare-and-set, so two writers can never both promote;
* accepted samples are durable when `append_samples` returns; an update `claim`s the pending ones and they stay
  pending until `ack` names the committed version that consumed them (a crashed update loses nothing);
* tensors travel as safetensors bytes, metadata as JSON; nothing is ever pickled;
* a name or id that `registry.names` does not accept is an `InvalidIdentifier` (a ValueError): nothing is read or
  written for it;
* a store given a `registry.signing.Signer` signs every promotion (model, version, digest of the stored weights,
  sequence number) and keeps the record with the pointer in the same atomic change; without one it stores none.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

from torch import Tensor

from registry.captures import CaptureClaim, CaptureCounts, FeedbackResult
from registry.heldout import HeldOut
from registry.records import (
    ExperienceRecord,
    LivePointer,
    LockHolder,
    ModelRecord,
    Page,
    QuarantineRecord,
    UpdateRecord,
    VersionCounts,
    VersionRecord,
)
from registry.samples import Claim, PendingCounts, SampleSet

log = logging.getLogger(__name__)

LiveListener = Callable[[str, int | None], None]
"""Called with (model name, new live version or None) whenever a live pointer changes."""

ListenerErrorHook = Callable[[str, BaseException], None]
"""Told (model name, exception) when a live-pointer listener raised."""

UNSET: Any = object()


class Subscription(ABC):
    @abstractmethod
    def close(self) -> None:
        """Stop delivering notifications."""


class Store(ABC):
    """Where models, versions, method state, samples and updates live."""

    _listener_error_hooks: tuple[ListenerErrorHook, ...] = ()

    # -- lifecycle ------------------------------------------------------------------------------------------------
    @abstractmethod
    def ping(self) -> None:
        """Raise StoreUnavailable when the backend cannot be reached."""

    def close(self) -> None:
        """Release connections and background threads."""

    # -- models ---------------------------------------------------------------------------------------------------
    @abstractmethod
    def create_model(self, record: ModelRecord) -> None:
        """Conflict if the name is taken."""

    @abstractmethod
    def get_model(self, name: str) -> ModelRecord:
        """NotFound if absent."""

    @abstractmethod
    def list_models(self) -> list[ModelRecord]: ...

    @abstractmethod
    def delete_model(self, name: str) -> None:
        """Remove the model and everything it owns (versions, samples, updates, pointer)."""

    @abstractmethod
    def update_model(self, name: str, change: Callable[[ModelRecord], ModelRecord]) -> ModelRecord:
        """Replace the model's record by ``change(record)`` atomically (read, change and write as one step; the name
        cannot change); returns the record as stored.  NotFound if absent."""

    # -- versions -------------------------------------------------------------------------------------------------
    @abstractmethod
    def commit_version(
        self,
        record: VersionRecord,
        weights: bytes,
        state: bytes,
        *,
        fence: int | None = None,
        number: int | None = None,
    ) -> VersionRecord:
        """Store a new version atomically; the store assigns ``record.version`` (the next number, or ``number``
        when importing: it must exceed every existing one) and returns the record as stored.  ``fence`` is the
        update lock's token: a stale token is a Conflict."""

    @abstractmethod
    def get_version(self, name: str, version: int) -> VersionRecord: ...

    @abstractmethod
    def list_versions(self, name: str) -> list[VersionRecord]:
        """All versions, oldest first (reads every record: for callers that need them all, e.g. export)."""

    @abstractmethod
    def versions_page(self, name: str, *, limit: int, before: int | None = None) -> Page[VersionRecord]:
        """At most ``limit`` (≥ 1) versions numbered below ``before`` (None: from the newest), newest first, reading
        only those records; ``Page.next`` is the ``before`` of the next page."""

    @abstractmethod
    def version_counts(self, name: str) -> VersionCounts:
        """How many versions are stored and the newest number, from stored counters (no listing)."""

    @abstractmethod
    def pin_version(self, name: str, version: int, pinned: bool) -> VersionRecord:
        """Pin (or unpin) a version: retention never deletes a pinned one.  Atomic with `prune_version`: a pin
        either lands on the stored version (which then stays) or, the version being gone, raises NotFound."""

    @abstractmethod
    def prune_version(self, name: str, version: int, *, promotions: int) -> bool:
        """Delete a version for retention, with its weights and state, unless (checked atomically with the
        deletion) it is live, pinned, or was promoted more than ``promotions`` times (promoted since retention
        looked).  Returns whether it was deleted (False also when it is gone already)."""

    @abstractmethod
    def read_weights(self, name: str, version: int) -> bytes: ...

    @abstractmethod
    def read_state(self, name: str, version: int) -> bytes: ...

    @abstractmethod
    def rewrite_state(self, name: str, version: int, state: bytes) -> None:
        """Replace a version's method state (only to scrub deleted samples out of its exemplar memory)."""

    @abstractmethod
    def delete_version(self, name: str, version: int) -> None:
        """Remove a version that is not live (retention)."""

    # -- the live pointer -----------------------------------------------------------------------------------------
    @abstractmethod
    def live_version(self, name: str) -> int | None: ...

    @abstractmethod
    def live_pointer(self, name: str) -> LivePointer:
        """The live pointer with its promotion record, read atomically (what a replica verifies before serving)."""

    @abstractmethod
    def promote(self, name: str, version: int, *, by: str | None, expected: int | None = UNSET) -> bool:
        """Point ``name`` at ``version`` (recording who did it on the version); with ``expected`` given, only if
        the pointer still holds that value (compare-and-set).  Returns False when the comparison failed.  With a
        signer, the pointer and its signed promotion record change together; without, the record is removed."""

    @abstractmethod
    def subscribe(self, listener: LiveListener) -> Subscription:
        """Deliver every change of any live pointer (from this process or, with Redis, any replica).

        A listener that raises changes nothing: the pointer is written before listeners run, the error is logged
        and reported to the hooks of `on_listener_error`, and the other listeners still run."""

    def on_listener_error(self, hook: ListenerErrorHook) -> None:
        """Be told of every listener error (the service counts them)."""
        self._listener_error_hooks = (*self._listener_error_hooks, hook)

    def listener_failed(self, name: str, error: BaseException) -> None:
        """Log a failure of something that reacted to a pointer change and tell the hooks (never raises)."""
        log.error("a live-pointer listener of %s failed: %s", name, error, exc_info=error)
        for hook in self._listener_error_hooks:
            try:
                hook(name, error)
            except Exception:
                log.exception("a listener-error hook failed")

    def deliver(self, listeners: Iterable[LiveListener], name: str, version: int | None) -> None:
        """Call each listener; one that raises is reported (`listener_failed`) and does not stop the others."""
        for listener in listeners:
            try:
                listener(name, version)
            except Exception as exc:
                self.listener_failed(name, exc)

    # -- samples --------------------------------------------------------------------------------------------------
    @abstractmethod
    def append_samples(
        self,
        name: str,
        inputs: Tensor,
        labels: Sequence[str | None],
        holdout_fraction: float,
        *,
        request_key: str | None = None,
        relabel: bool = False,
    ) -> tuple[list[str], list[bool]]:
        """Store samples durably before returning their ids (decimal strings of a per-model counter) and held-out
        flags (`samples.holdout_flags`).  With ``request_key``, a second call with the same key stores nothing
        and returns the first call's ids and flags (idempotent ingestion, kept until retention drops the batch).
        ``relabel`` marks the samples exempt from label screening (an admin redefining a class)."""

    @abstractmethod
    def claim(self, name: str, *, limit: int | None = None) -> Claim:
        """The pending samples (training and held-out): those left pending by earlier updates (deferred or
        released from quarantine) first, then the newer ones in arrival order; at most ``limit`` training samples
        (whole batches).  Quarantined samples are never claimed."""

    @abstractmethod
    def ack(
        self,
        name: str,
        claim: Claim,
        version: int,
        update_id: str | None,
        *,
        fence: int | None = None,
        quarantined: Collection[str] = (),
        deferred: Collection[str] = (),
    ) -> None:
        """Mark a claim consumed by ``version``; its held-out samples become that version's experience, offered to
        the held-out store, and leave the batches (which keep their training rows for raw-sample retention).  Claimed
        samples named in ``quarantined`` (already recorded by `quarantine`) or ``deferred`` are not consumed and
        stay out of the experience; the deferred ones stay pending for a later update."""

    @abstractmethod
    def quarantine(self, name: str, records: Sequence[QuarantineRecord], *, fence: int | None = None) -> None:
        """Set claimed pending samples aside (each record names the sample and its batch, ``Claim.where``): no
        claim returns them until `release_quarantine`; `delete_samples` removes them.  ``fence`` as for commits."""

    @abstractmethod
    def quarantined(self, name: str) -> list[QuarantineRecord]:
        """The samples in quarantine now, oldest first."""

    @abstractmethod
    def release_quarantine(self, name: str, ids: Sequence[str]) -> list[str]:
        """Return quarantined samples to the pending ones, exempt from label screening; returns the ids released
        (ids not in quarantine are ignored; one invalid id is an InvalidIdentifier, and nothing is released)."""

    @abstractmethod
    def experiences(self, name: str) -> list[ExperienceRecord]:
        """Every committed experience, oldest first."""

    @abstractmethod
    def experience_samples(self, name: str, version: int) -> SampleSet:
        """The held-out samples of the experience that ``version`` consumed that the held-out store still keeps
        (`registry.heldout`: at most its capacity per class over all experiences; empty if none)."""

    @abstractmethod
    def held_out_rows(self, name: str) -> HeldOut:
        """The whole held-out store in one read: every kept row, grouped by experience (the version that consumed
        it; versions ascending, experiences without a kept sample left out), one span per experience.  Raw-sample
        retention never changes it; deletion by id does."""

    def held_out(self, name: str) -> dict[int, SampleSet]:
        """`held_out_rows` as one sample set per experience."""
        return self.held_out_rows(name).as_dict()

    @abstractmethod
    def delete_samples(self, name: str, ids: Sequence[str]) -> int:
        """Forget samples by id: pending ones are never trained, stored ones (batches, the held-out store and the
        capture reservoir alike) are dropped, and the ids are kept as
        tombstones (`deleted_ids`) so exemplar memories can drop them too.  Returns how many were found.  One
        invalid id (`registry.names.check_sample_ids`) is an InvalidIdentifier, and nothing is deleted."""

    @abstractmethod
    def deleted_ids(self, name: str) -> set[int]:
        """Ids of every sample deleted on request (entries of the record that are not valid ids are ignored, with a
        warning)."""

    @abstractmethod
    def repair_deleted_ids(self, name: str) -> int:
        """Drop the invalid entries of the deletion record (written by code that did not check ids), with a
        warning; returns how many were dropped."""

    @abstractmethod
    def apply_retention(
        self, name: str, *, max_age_s: float | None, max_samples: int | None, protect: Collection[str] = ()
    ) -> dict[str, int]:
        """Drop consumed raw samples older than ``max_age_s`` or beyond the newest ``max_samples`` (pending and
        quarantined samples are kept, and so are the ids in ``protect``).  The held-out store is never touched: the
        experiences' evaluation data stays whatever raw samples go.  Returns {"training": n, "held_out": n} (a held-out
        row is dropped only where a batch still held one the held-out store has: after a crash, say)."""

    @abstractmethod
    def add_experience(self, name: str, version: int, held_out: SampleSet, update_id: str | None) -> None:
        """Record held-out samples as ``version``'s experience directly (importing a model from another store): they
        get new ids and go through the held-out store's reservoir like any experience."""

    @abstractmethod
    def pending_counts(self, name: str) -> PendingCounts:
        """What is waiting for the next update (`samples.tally_pending` over `samples.SetAside.pending`: carried
        samples included, quarantined ones excluded)."""

    # -- captured prediction traffic (`registry.captures`) -----------------------------------------------------------
    @abstractmethod
    def reserve_ids(self, name: str, count: int) -> int:
        """Take ``count`` (1 to `captures.MAX_RESERVE`) consecutive sample ids that no sample will ever be given
        otherwise; returns the first.  (The API takes them in blocks, so that a captured prediction carries its id
        before the capture is stored.)"""

    @abstractmethod
    def add_captures(self, name: str, inputs: Tensor, ids: Sequence[str], capacity: int) -> list[str]:
        """Offer captured inputs (ids from `reserve_ids`) to the model's capture reservoir of ``capacity``; returns
        the ids stored.  Ids deleted meanwhile (tombstoned) are never stored; the captures evicted to make room are
        removed.  A capture is durable in the embedded store once its index is written (rows are written first)."""

    @abstractmethod
    def claim_captures(self, name: str) -> CaptureClaim:
        """The pending captures (unlabeled, with their ids), for an update's MAS importance."""

    @abstractmethod
    def ack_captures(self, name: str, claim: CaptureClaim, *, fence: int | None = None) -> None:
        """The claimed captures were observed by a committed version: no longer pending (they stay stored for
        feedback until newer captures need their slots).  ``fence`` as for commits."""

    @abstractmethod
    def label_captures(self, name: str, items: Sequence[tuple[str, str]], holdout_fraction: float) -> FeedbackResult:
        """Feedback: each (id, label) whose capture is stored becomes a labeled sample with the same id, pending like
        a posted one (held out by the same policy, screened by the next update), in one atomic step with its leaving
        the reservoir; ids not stored (never captured, evicted, deleted) are "unknown", ids labeled before
        "answered".  Ids must be distinct; one invalid id is an InvalidIdentifier and nothing changes."""

    @abstractmethod
    def trim_captures(self, name: str, capacity: int, *, max_age_s: float | None = None) -> int:
        """Apply a new capacity (observed captures go first, then the newest) and drop observed captures older than
        ``max_age_s`` (retention); capacity 0 empties the reservoir.  Returns how many were dropped."""

    @abstractmethod
    def capture_counts(self, name: str) -> CaptureCounts:
        """What the capture reservoir holds (read from its index alone)."""

    # -- updates --------------------------------------------------------------------------------------------------
    @abstractmethod
    def put_update(self, record: UpdateRecord) -> None:
        """Create or replace an update record."""

    @abstractmethod
    def create_update(
        self, record: UpdateRecord, *, max_queued: int | None = None, join_queued: bool = False
    ) -> UpdateRecord:
        """Store ``record`` (a queued update) and return it, unless, checked atomically with the write, in order:

        * an update with its id exists: return that one, whatever the queue holds (idempotent requests);
        * ``join_queued`` and an update of the model is queued: return the newest queued one (policy triggers
          merge into it);
        * ``max_queued`` (≥ 1) updates of the model are queued: raise QueueFull.

        The check and the write are one step, so concurrent requests (threads, replicas) never queue more than
        ``max_queued`` updates."""

    @abstractmethod
    def get_update(self, name: str, update_id: str) -> UpdateRecord: ...

    @abstractmethod
    def list_updates(self, name: str) -> list[UpdateRecord]:
        """Every stored update, oldest first by (created_at, update_id) (reads every record)."""

    @abstractmethod
    def updates_page(self, name: str, *, limit: int, before: int | None = None) -> Page[UpdateRecord]:
        """At most ``limit`` (≥ 1) updates stored before position ``before`` (None: from the newest), newest first
        in the order the store created them; reads only those records."""

    @abstractmethod
    def active_updates(self, name: str) -> list[UpdateRecord]:
        """The queued and running updates, in the order they were created, from a per-model index (as many
        reads as there are such updates, whatever the history)."""

    @abstractmethod
    def trim_updates(self, name: str, keep_finished: int) -> int:
        """Delete the records (and cancellation flags) of finished updates beyond the newest ``keep_finished``;
        queued and running ones are never deleted.  Returns how many were deleted."""

    @abstractmethod
    def request_cancel(self, name: str, update_id: str) -> None:
        """Flag an update for cancellation (kept apart from the record, which its runner rewrites)."""

    @abstractmethod
    def cancel_requested(self, name: str, update_id: str) -> bool: ...

    # -- idempotent answers ----------------------------------------------------------------------------------------
    @abstractmethod
    def remember(self, name: str, key: str, value: dict[str, Any], ttl_s: float) -> None:
        """Keep an answer under a request key for ``ttl_s`` seconds."""

    @abstractmethod
    def recall(self, name: str, key: str) -> dict[str, Any] | None:
        """The answer kept under a request key, if it has not expired."""

    # -- the per-model update lock --------------------------------------------------------------------------------
    @abstractmethod
    def acquire_update_lock(self, name: str, owner: str, ttl_s: float) -> int | None:
        """A fencing token (strictly increasing per model) if the lock was free or expired, else None."""

    @abstractmethod
    def refresh_update_lock(self, name: str, token: int, ttl_s: float) -> bool:
        """Extend a held lock; False if it was lost."""

    @abstractmethod
    def release_update_lock(self, name: str, token: int) -> None: ...

    @abstractmethod
    def update_lock_holder(self, name: str) -> LockHolder | None:
        """Who holds the lock now (None when it is free or has expired): lets a recovery sweep tell a running
        update whose worker is alive from one whose worker vanished."""
