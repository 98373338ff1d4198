"""Records as the API shows them."""

from __future__ import annotations

from cl_core.labels import natural_order
from registry import ModelRecord, Store, UpdateRecord, VersionRecord
from service import schemas
from service.serving import ModelServer
from worker.claims import waiting_classes
from worker.history import without_history


def model_info(
    store: Store, server: ModelServer, record: ModelRecord, updating: bool, min_samples_per_new_class: int
) -> schemas.ModelInfo:
    live = store.live_version(record.name)
    if live is not None:
        classes = list(store.get_version(record.name, live).spec.get("classes", []))
    else:
        classes = list(record.classes)
    pending = store.pending_counts(record.name)
    captured = store.capture_counts(record.name)
    versions = store.version_counts(record.name).count
    state = "updating" if updating else ("serving" if live is not None else "no live version")
    return schemas.ModelInfo(
        name=record.name,
        architecture=record.architecture,
        input_shape=record.input_shape,
        options=record.options,
        method=record.method,
        method_hparams=record.method_hparams,
        preprocessing=None if record.preprocessing is None else schemas.Preprocessing(**record.preprocessing),
        classes=natural_order(classes),
        live_version=live,
        versions=versions,
        pending=schemas.PendingCounts(
            labeled=pending.labeled,
            unlabeled=pending.unlabeled + captured.pending,
            held_out=pending.held_out,
            per_class=pending.per_class,
        ),
        pending_new_classes=natural_order(c for c in pending.per_class if c not in classes),
        waiting_classes=[
            schemas.WaitingClass(label=w.label, samples=w.samples, needed=w.needed)
            for w in waiting_classes(pending.per_class, classes, min_samples_per_new_class)
        ],
        quarantined=len(store.quarantined(record.name)),
        state=state,
        created_at=record.created_at,
        capture=None if record.capture is None else schemas.CaptureSetting(**record.capture),
        captured=schemas.CaptureCounts(stored=captured.stored, pending=captured.pending),
    )


def update_status(record: UpdateRecord) -> schemas.UpdateStatus:
    return schemas.UpdateStatus(
        update_id=record.update_id,
        model=record.model,
        method=record.method,
        status=record.status,
        progress=record.progress,
        version=record.version,
        error=record.error,
        metrics=record.metrics,
        triggered_by=record.triggered_by,
        reason=record.reason,
        created_at=record.created_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        hparams=record.hparams,
    )


def version_info(record: VersionRecord, live: int | None) -> schemas.VersionInfo:
    return schemas.VersionInfo(
        version=record.version,
        parent=record.parent,
        status="live" if record.version == live else record.status,
        live=record.version == live,
        method=record.method,
        hyperparameters=record.learner,
        train_config=record.train_config,
        classes=natural_order(record.spec.get("classes", [])),
        samples=record.samples,
        metrics=without_history(record.metrics),  # the ledger is the forgetting report's, O(experiences)
        update_id=record.update_id,
        triggered_by=record.triggered_by,
        promotions=record.promotions,
        created_at=record.created_at,
        pinned=record.pinned,
    )
