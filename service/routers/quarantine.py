"""/v1/models/{name}/quarantine: the samples label screening set aside, and releasing them.

Screening (`worker.screening`) quarantines systematic label flips before an update trains: they are neither trained
nor held out.  An admin who meant the relabelling (a class redefined on purpose) releases them: they return to the
pending samples, exempt from screening, and the update policy may start an update.  `samples/delete` deletes them.
"""

from __future__ import annotations

from fastapi import APIRouter

from service import schemas
from service.deps import AdminCaller, ModelName, RuntimeDep, TrainCaller
from service.policy_updates import known_classes, start_policy_update
from worker.audit import audit

router = APIRouter(prefix="/v1/models", tags=["samples"])


@router.get("/{name}/quarantine", response_model=schemas.QuarantineList, responses={404: {"model": schemas.ErrorBody}})
def list_quarantine(name: ModelName, runtime: RuntimeDep, _: TrainCaller) -> schemas.QuarantineList:
    """The quarantined samples, oldest first: the label each was posted with and the class it looks like."""
    records = runtime.store.quarantined(name)
    return schemas.QuarantineList(
        model=name,
        samples=[
            schemas.QuarantinedSample(
                id=r.id,
                label=r.label,
                predicted=r.predicted,
                held_out=r.held_out,
                update_id=r.update_id,
                reason=r.reason,
                at=r.at,
            )
            for r in records
        ],
    )


@router.post(
    "/{name}/quarantine/release",
    response_model=schemas.QuarantineReleased,
    responses={404: {"model": schemas.ErrorBody}},
)
def release_quarantine(
    name: ModelName, body: schemas.QuarantineRelease, runtime: RuntimeDep, caller: AdminCaller
) -> schemas.QuarantineReleased:
    """Return quarantined samples to the pending ones (exempt from screening: their labels are meant).  Ids that are
    not in quarantine are ignored; the answer lists those released."""
    store = runtime.store
    store.get_model(name)
    released = store.release_quarantine(name, body.ids)
    audit("samples.released", actor=caller.name, model=name, requested=len(body.ids), released=len(released))
    update_id = None
    if released:
        record = store.get_model(name)
        update_id = start_policy_update(
            runtime, record, store.pending_counts(name), known_classes(runtime, record), caller.name
        )
    return schemas.QuarantineReleased(released=released, update_id=update_id)
