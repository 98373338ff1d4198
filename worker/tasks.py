"""The Celery tasks: a few lines each that call the pipeline, the core and the store; the delivery policy (late
acknowledgement, requeue when the process dies, retries with backoff while the store is unreachable) sits in the
decorators.  Arguments and results are JSON."""

from __future__ import annotations

from typing import Any

from celery import Task

from cl_core.importance import mas_importance
from registry import NotFound, Store, StoreUnavailable
from worker.app import ESTIMATE_IMPORTANCE, EVALUATE_VERSION, RUN_UPDATE, app, current
from worker.evaluation import EvaluationData, version_metrics
from worker.history import DEFAULT_WIDTH, StoredHistory, history_of, without_history
from worker.pipeline import LockLost, load_version

TRANSIENT = (StoreUnavailable,)


@app.task(
    name=RUN_UPDATE,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=TRANSIENT,
    retry_backoff=1,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=None,
    ignore_result=True,
)
def run_update_task(self: Task, name: str, update_id: str) -> dict[str, Any]:
    """Run one queued update to its end; a copy of it (redelivered, or sent again) finds it finished."""
    worker = current()
    try:
        record = worker.run_update(name, update_id, where=f"{self.request.hostname}:{worker.pid}")
    except LockLost as exc:  # another update of this model runs: wait for it in the queue, not in this process
        raise self.retry(exc=exc, countdown=worker.settings.celery_lock_retry_s) from exc
    except NotFound:
        return {"status": "gone"}  # the model or the update was deleted
    return {"status": record.status, "version": record.version}


@app.task(
    name=EVALUATE_VERSION, acks_late=True, autoretry_for=TRANSIENT, retry_backoff=1, retry_backoff_max=60, max_retries=5
)
def evaluate_version_task(name: str, version: int) -> dict[str, Any]:
    """A stored version's held-out metrics recomputed on the data the store holds now."""
    worker = current()
    return evaluate_version(worker.store, name, version, worker.settings.report_window)


@app.task(
    name=ESTIMATE_IMPORTANCE,
    acks_late=True,
    autoretry_for=TRANSIENT,
    retry_backoff=1,
    retry_backoff_max=60,
    max_retries=5,
)
def estimate_importance_task(name: str, version: int | None = None, max_samples: int | None = None) -> dict[str, Any]:
    """MAS importance of a version (default: the live one) on the model's pending unlabeled samples."""
    return estimate_importance(current().store, name, version, max_samples)


def evaluate_version(store: Store, name: str, version: int, width: int = DEFAULT_WIDTH) -> dict[str, Any]:
    """Score ``version`` as its update did (its parent's ledger's experiences and its own held-out samples)."""
    loaded = load_version(store, name, version)
    record = store.get_version(name, version)
    stored = StoredHistory.from_metrics(record.metrics)  # its ancestors' experiences, whether they are kept or not
    if stored is not None:
        parent, again = None, (version, stored)
        experiences = stored.ledger.experiences
    else:  # written before the ledger: its parent's, replayed
        parent, again = history_of(store, name, record.parent, width), None
        experiences = parent.experiences
    data = EvaluationData.gather(store, name, experiences, store.experience_samples(name, version))
    metrics = version_metrics(
        loaded.model, loaded.spec.classes, data, parent, loaded.spec.input_shape, width=width, again=again
    )
    return {"model": name, "version": version, "metrics": without_history(metrics.to_json())}


def estimate_importance(
    store: Store, name: str, version: int | None = None, max_samples: int | None = None
) -> dict[str, Any]:
    """Per parameter, the mean and largest MAS importance Ω on the pending unlabeled samples (nothing is stored
    or consumed: an update trains on those samples and keeps their importance with its version)."""
    version = store.live_version(name) if version is None else version
    if version is None:
        raise ValueError(f"model {name!r} has no live version to measure")
    unlabeled = store.claim(name).train.unlabeled
    inputs = unlabeled.inputs[:max_samples] if max_samples else unlabeled.inputs
    summary: dict[str, Any] = {"model": name, "version": version, "samples": len(inputs), "parameters": {}}
    if len(inputs):
        omega = mas_importance(load_version(store, name, version).model, inputs)
        summary["parameters"] = {k: {"mean": float(v.mean()), "max": float(v.max())} for k, v in omega.items()}
    return summary
