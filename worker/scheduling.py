"""Requesting updates: explicit ones from the API, and automatic ones from the update policy.

Policy triggers merge: while an update of a model is still queued, a new trigger joins it instead of queueing
another.  Explicit requests always queue their own update (they may name another method).  Both go through
`Store.create_update`, which applies the queue limit and the merge atomically with the write.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from cl_core.labels import natural_order
from registry import PendingCounts, Store, UpdateRecord
from worker.audit import audit
from worker.claims import POLICY, waiting_classes
from worker.executor import Executor


@dataclass(frozen=True)
class UpdatePolicy:
    """Trigger an update when a new class has ``min_samples_per_new_class`` samples, or after ``after_labeled``
    new labeled samples of classes that can be learned (0 disables that rule).  New classes with fewer samples
    wait (the update leaves them pending, `worker.claims`) without holding up the others."""

    min_samples_per_new_class: int = 20
    after_labeled: int = 0
    method: str = "auto"
    after_drift_feedback: int = 0  # with input drift detected, after this many pending labeled samples (0: off)

    def reason(self, pending: PendingCounts, known_classes: list[str]) -> str | None:
        """Why an update should start now, or None."""
        waiting = waiting_classes(pending.per_class, known_classes, self.min_samples_per_new_class)
        held = {w.label for w in waiting}
        ready = natural_order(c for c in pending.per_class if c not in known_classes and c not in held)
        if ready:
            text = f"{POLICY}: new classes {ready} have ≥ {self.min_samples_per_new_class} samples each"
            return text + (f" ({len(waiting)} other new classes wait)" if waiting else "")
        learnable = pending.labeled - sum(w.samples for w in waiting)  # a lower bound (held-out included)
        if self.after_labeled and learnable >= self.after_labeled:
            return f"{POLICY}: {learnable} new labeled samples (≥ {self.after_labeled})"
        return None

    def drift_reason(self, pending: PendingCounts, drifting: bool) -> str | None:
        """Why an update should start now that the traffic drifted (the labels that arrived since, feedback on
        captured predictions above all, show the model the new inputs), or None."""
        if not self.after_drift_feedback or not drifting or pending.labeled < self.after_drift_feedback:
            return None
        wanted = self.after_drift_feedback
        return f"{POLICY}: input drift detected and {pending.labeled} labeled samples wait (≥ {wanted})"


def new_update_id() -> str:
    return uuid.uuid4().hex


def request_update(
    store: Store,
    executor: Executor,
    name: str,
    method: str,
    *,
    triggered_by: str | None,
    reason: str,
    merge: bool = False,
    update_id: str | None = None,
    max_queued: int | None = None,
    hparams: dict[str, float] | None = None,
) -> UpdateRecord:
    """Store a queued update and hand it to the executor; with ``merge``, join the newest update that is still
    queued instead.  A given ``update_id`` makes the request idempotent: an existing update with that id is returned
    as it is.  With ``max_queued``, QueueFull when that many updates of the model are queued (a merging request
    joins one of them instead, so it is never refused).  ``hparams`` (checked by the caller) fix values the update
    would otherwise choose (`worker.selection`)."""
    wanted = UpdateRecord(
        update_id=update_id or new_update_id(),
        model=name,
        method=method,
        triggered_by=triggered_by,
        reason=reason,
        hparams=dict(hparams or {}),
    )
    record = store.create_update(wanted, max_queued=max_queued, join_queued=merge)
    if record is wanted or record.to_json() == wanted.to_json():
        executor.submit(name, record.update_id)
        audit("update.queued", actor=triggered_by, model=name, update_id=record.update_id, method=method, reason=reason)
    return record
