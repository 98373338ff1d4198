"""The update the policy starts after new data arrives (a samples post, a release from quarantine): one rule for
which classes are known and how the request joins the queue, wherever the data came from."""

from __future__ import annotations

from registry import ModelRecord, PendingCounts
from service.runtime import Runtime
from worker.scheduling import request_update


def known_classes(runtime: Runtime, record: ModelRecord) -> list[str]:
    """The classes the live version predicts (the model's initial classes before it has one)."""
    live = runtime.store.live_version(record.name)
    if live is None:
        return list(record.classes)
    return list(runtime.store.get_version(record.name, live).spec.get("classes", []))


def start_policy_update(
    runtime: Runtime, record: ModelRecord, pending: PendingCounts, known: list[str], triggered_by: str | None
) -> str | None:
    """The id of the update the policy starts for ``pending`` (None when it waits)."""
    reason = runtime.policy.reason(pending, known)
    if reason is None:
        return None
    update = request_update(
        runtime.store,
        runtime.executor,
        record.name,
        runtime.policy.method,
        triggered_by=triggered_by,
        reason=reason,
        merge=True,  # joins a queued update, so the queue limit never refuses it
        max_queued=runtime.settings.max_queued_updates,
    )
    return update.update_id


def start_drift_update(runtime: Runtime, name: str, triggered_by: str | None) -> str | None:
    """The id of the update the policy starts because the model's traffic drifted and enough labels wait
    (``CL_POLICY_DRIFT_FEEDBACK``; None when it waits, or the rule is off)."""
    if not runtime.policy.after_drift_feedback or not runtime.drift.drifting(name):
        return None
    reason = runtime.policy.drift_reason(runtime.store.pending_counts(name), True)
    if reason is None:
        return None
    update = request_update(
        runtime.store,
        runtime.executor,
        name,
        runtime.policy.method,
        triggered_by=triggered_by,
        reason=reason,
        merge=True,
        max_queued=runtime.settings.max_queued_updates,
    )
    return update.update_id
