"""/v1/models/{name}/updates: request, follow and cancel updates."""

from __future__ import annotations

from fastapi import APIRouter, status

from service import schemas
from service.deps import ModelName, PredictCaller, RuntimeDep, TrainCaller
from service.errors import ApiError
from service.views import update_status
from worker.learners import validate_method
from worker.scheduling import request_update

router = APIRouter(prefix="/v1/models", tags=["updates"])


@router.post(
    "/{name}/updates",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=schemas.UpdateAccepted,
    responses={404: {"model": schemas.ErrorBody}, 409: {"model": schemas.ErrorBody}, 422: {"model": schemas.ErrorBody}},
)
def start_update(
    name: ModelName, runtime: RuntimeDep, caller: TrainCaller, body: schemas.UpdateRequest | None = None
) -> schemas.UpdateAccepted:
    """Queue an update of the live version with the pending samples (one runs at a time per model)."""
    record = runtime.store.get_model(name)
    try:
        method = validate_method((body.method if body else None) or record.method, runtime.settings)
    except ValueError as exc:
        raise ApiError(422, str(exc), field="method") from exc
    pending = runtime.store.pending_counts(name)
    if pending["labeled"] + pending["unlabeled"] == 0:
        raise ApiError(409, f"model {name!r} has no pending samples to learn from; post samples first")
    update = request_update(runtime.store, runtime.executor, name, method, triggered_by=caller.name, reason="api")
    return schemas.UpdateAccepted(update_id=update.update_id, status=update.status)


@router.get("/{name}/updates", response_model=schemas.UpdateList)
def list_updates(name: ModelName, runtime: RuntimeDep, _: PredictCaller) -> schemas.UpdateList:
    runtime.store.get_model(name)
    return schemas.UpdateList(updates=[update_status(u) for u in runtime.store.list_updates(name)])


@router.get(
    "/{name}/updates/{update_id}", response_model=schemas.UpdateStatus, responses={404: {"model": schemas.ErrorBody}}
)
def get_update(name: ModelName, update_id: str, runtime: RuntimeDep, _: PredictCaller) -> schemas.UpdateStatus:
    return update_status(runtime.store.get_update(name, update_id))


@router.delete("/{name}/updates/{update_id}", status_code=status.HTTP_202_ACCEPTED, response_model=schemas.UpdateStatus)
def cancel_update(name: ModelName, update_id: str, runtime: RuntimeDep, _: TrainCaller) -> schemas.UpdateStatus:
    """Cancel a queued update, or stop a running one between batches (nothing is committed)."""
    record = runtime.store.get_update(name, update_id)
    if not record.finished:
        runtime.executor.cancel(name, update_id)
    return update_status(runtime.store.get_update(name, update_id))
