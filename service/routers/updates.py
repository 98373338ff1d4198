"""/v1/models/{name}/updates: request, follow and cancel updates."""

from __future__ import annotations

from fastapi import APIRouter, status

from registry import NotFound
from service import schemas
from service.deps import (
    DEFAULT_PAGE,
    ModelName,
    PageCursor,
    PageLimit,
    PredictCaller,
    RuntimeDep,
    TrainCaller,
    UpdateId,
    page_position,
)
from service.errors import ApiError
from service.idempotency import IdempotencyKey, derived_id
from service.views import update_status
from worker.audit import audit
from worker.learners import validate_method
from worker.scheduling import request_update
from worker.selection import check_update_hparams

router = APIRouter(prefix="/v1/models", tags=["updates"])


@router.post(
    "/{name}/updates",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=schemas.UpdateAccepted,
    responses={
        404: {"model": schemas.ErrorBody},
        409: {"model": schemas.ErrorBody},
        422: {"model": schemas.ErrorBody},
        429: {"model": schemas.ErrorBody},
    },
)
def start_update(
    name: ModelName,
    runtime: RuntimeDep,
    caller: TrainCaller,
    body: schemas.UpdateRequest | None = None,
    idempotency_key: IdempotencyKey = None,
) -> schemas.UpdateAccepted:
    """Queue an update of the live version with the pending samples (one runs at a time per model; 429 when
    ``CL_MAX_QUEUED_UPDATES`` are queued already).  ``hparams`` fixes values the update would otherwise choose."""
    store = runtime.store
    record = store.get_model(name)
    update_id = derived_id(name, "update", idempotency_key) if idempotency_key else None
    if update_id is not None:
        try:
            existing = store.get_update(name, update_id)  # a retry: the first answer
            return schemas.UpdateAccepted(update_id=existing.update_id, status=existing.status)
        except NotFound:
            pass
    try:
        method = validate_method((body.method if body else None) or record.method, runtime.settings)
    except ValueError as exc:
        raise ApiError(422, str(exc), field="method") from exc
    try:
        hparams = check_update_hparams(method, body.hparams or {}) if body is not None else {}
    except ValueError as exc:
        raise ApiError(422, str(exc), field="hparams") from exc
    if store.pending_counts(name).trainable == 0 and store.capture_counts(name).pending == 0:
        raise ApiError(409, f"model {name!r} has no pending samples to learn from; post samples first")
    update = request_update(
        store,
        runtime.executor,
        name,
        method,
        triggered_by=caller.name,
        reason="api",
        update_id=update_id,
        max_queued=runtime.settings.max_queued_updates,  # atomic in the store: QueueFull → 429
        hparams=hparams,
    )
    return schemas.UpdateAccepted(update_id=update.update_id, status=update.status)


@router.get("/{name}/updates", response_model=schemas.UpdateList)
def list_updates(
    name: ModelName,
    runtime: RuntimeDep,
    _: PredictCaller,
    limit: PageLimit = DEFAULT_PAGE,
    cursor: PageCursor = None,
) -> schemas.UpdateList:
    """Updates newest first (in the order they were requested), one page at a time (``next_cursor`` leads to the
    older ones; the records of finished updates beyond ``CL_KEEP_FINISHED_UPDATES`` are deleted)."""
    page = runtime.store.updates_page(name, limit=limit, before=page_position(cursor))
    return schemas.UpdateList(
        updates=[update_status(u) for u in page.items], next_cursor=None if page.next is None else str(page.next)
    )


@router.get(
    "/{name}/updates/{update_id}", response_model=schemas.UpdateStatus, responses={404: {"model": schemas.ErrorBody}}
)
def get_update(name: ModelName, update_id: UpdateId, runtime: RuntimeDep, _: PredictCaller) -> schemas.UpdateStatus:
    return update_status(runtime.store.get_update(name, update_id))


@router.delete("/{name}/updates/{update_id}", status_code=status.HTTP_202_ACCEPTED, response_model=schemas.UpdateStatus)
def cancel_update(
    name: ModelName, update_id: UpdateId, runtime: RuntimeDep, caller: TrainCaller
) -> schemas.UpdateStatus:
    """Cancel a queued update, or stop a running one between batches (nothing is committed)."""
    record = runtime.store.get_update(name, update_id)
    if not record.finished:
        runtime.executor.cancel(name, update_id)
        audit("update.cancel_requested", actor=caller.name, model=name, update_id=update_id)
    return update_status(runtime.store.get_update(name, update_id))
