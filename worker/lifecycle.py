"""The update state machine: the one module that changes an update's status.

    queued ──▶ running ──▶ succeeded | rejected | failed | cancelled | skipped
      │           │
      │           └──▶ queued      (preempted by a shutdown, or recovered after its worker vanished)
      └──▶ cancelled

A finished status never changes again.  ``skipped`` means the run found nothing left to learn (another update
consumed the samples, a redelivered task, two requests racing): harmless, and not counted as a failure.  Anything
else raises `IllegalTransition`.  Every change is written to the store and to the audit trail here, so the
executors, the pipeline, the recovery sweep and the routers only say which change they want.

Who may make a change: the holder of the model's update lock for a running update (the pipeline, the recovery
sweep, giving up on an update); anyone for a queued one (cancel).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from registry import Store, UpdateRecord
from registry.records import FINISHED, UpdateStatus
from worker.audit import audit
from worker.history import without_history

TRANSITIONS: dict[UpdateStatus, frozenset[UpdateStatus]] = {
    "queued": frozenset({"running", "cancelled"}),
    "running": frozenset({"succeeded", "rejected", "failed", "cancelled", "skipped", "queued"}),
    **{status: frozenset() for status in FINISHED},
}

Ended = Literal["succeeded", "rejected", "skipped"]


class IllegalTransition(Exception):
    """A status change the state machine does not allow (a bug, or a record another process changed)."""


@dataclass(frozen=True)
class Outcome:
    """How a run that reached its end turned out (what the pipeline's `_update` returns)."""

    status: Ended
    version: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    note: str | None = None  # why it was rejected or skipped


def allowed(current: UpdateStatus, target: UpdateStatus) -> bool:
    return target in TRANSITIONS.get(current, frozenset())


def check(current: UpdateStatus, target: UpdateStatus) -> None:
    """Raise `IllegalTransition` unless ``current → target`` is allowed."""
    if not allowed(current, target):
        raise IllegalTransition(f"an update cannot go from {current!r} to {target!r}")


def _write(store: Store, record: UpdateRecord, event: str, **fields: Any) -> UpdateRecord:
    store.put_update(record)
    audit(event, actor=record.triggered_by, model=record.model, update_id=record.update_id, **fields)
    return record


def start(store: Store, record: UpdateRecord) -> UpdateRecord:
    """queued → running, one more attempt.  A record still ``running`` is an attempt that ended without finishing
    (its worker died, or lost the store): it goes back to the queue and starts again from there."""
    if record.status == "running":
        check("running", "queued")
        record.status = "queued"
    check(record.status, "running")
    record.status, record.started_at, record.attempts = "running", time.time(), record.attempts + 1
    record.progress, record.error, record.finished_at = 0.0, None, None
    return _write(store, record, "update.started", method=record.method, attempt=record.attempts)


def progress(store: Store, record: UpdateRecord, fraction: float) -> None:
    """Record how far a running update got (not a status change)."""
    if record.status != "running":
        raise IllegalTransition(f"only a running update reports progress, this one is {record.status!r}")
    record.progress = round(min(max(fraction, 0.0), 1.0), 4)
    store.put_update(record)


def finish(store: Store, record: UpdateRecord, outcome: Outcome) -> UpdateRecord:
    """running → succeeded, rejected (the forgetting gate) or skipped (nothing left to learn)."""
    check(record.status, outcome.status)
    # the version's figures without its history (the ledger is the forgetting report's, O(experiences))
    record.status, record.version, record.metrics = outcome.status, outcome.version, without_history(outcome.metrics)
    record.error, record.progress, record.finished_at = outcome.note, 1.0, time.time()
    return _write(store, record, f"update.{record.status}", version=record.version, error=record.error)


def fail(store: Store, record: UpdateRecord, error: str) -> UpdateRecord:
    """running → failed: the update raised; the live version keeps serving and the samples stay pending."""
    check(record.status, "failed")
    record.status, record.error, record.finished_at = "failed", error, time.time()
    return _write(store, record, "update.failed", version=record.version, error=error)


def cancel(store: Store, record: UpdateRecord, error: str) -> UpdateRecord:
    """queued or running → cancelled (nothing committed)."""
    check(record.status, "cancelled")
    record.status, record.error, record.finished_at = "cancelled", error, time.time()
    return _write(store, record, "update.cancelled", error=error)


def requeue(store: Store, record: UpdateRecord, reason: str) -> UpdateRecord:
    """running → queued: it runs again from the start (a shutdown preempted it, or its worker vanished)."""
    check(record.status, "queued")
    record.status, record.progress, record.started_at, record.error = "queued", 0.0, None, reason
    return _write(store, record, "update.requeued", attempt=record.attempts, reason=reason)
