"""/v1/models/{name}/samples: ingestion of labeled and unlabeled data, durable before the answer."""

from __future__ import annotations

from fastapi import APIRouter, status

from service import schemas
from service.deps import ModelName, RuntimeDep, TrainCaller
from service.errors import ApiError
from service.ingest import labels_of, to_tensor
from worker.scheduling import request_update

router = APIRouter(prefix="/v1/models", tags=["samples"])


@router.post(
    "/{name}/samples",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=schemas.SamplesResponse,
    responses={404: {"model": schemas.ErrorBody}, 413: {"model": schemas.ErrorBody}, 422: {"model": schemas.ErrorBody}},
)
def post_samples(
    name: ModelName, body: schemas.SamplesRequest, runtime: RuntimeDep, caller: TrainCaller
) -> schemas.SamplesResponse:
    """Accept samples (label absent or null = unlabeled).  New labels are new classes: the head grows at the next
    update.  A share of each labeled class is held out for evaluation.  The update policy may start an update."""
    store, settings = runtime.store, runtime.settings
    record = store.get_model(name)
    if len(body.samples) > settings.max_samples_per_request:
        raise ApiError(413, f"at most {settings.max_samples_per_request} samples per request", field="samples")
    inputs = to_tensor([s.input for s in body.samples], record.input_shape, "input", "samples[{index}].input")
    labels = labels_of([s.label for s in body.samples])
    live = store.live_version(name)
    known = list(store.get_version(name, live).spec.get("classes", [])) if live is not None else []
    ids, held = store.append_samples(name, inputs, labels, settings.holdout_fraction)
    labeled = sum(label is not None for label in labels)
    held_out = sum(held)
    runtime.api_metrics.samples.labels(name, "labeled").inc(labeled - held_out)
    runtime.api_metrics.samples.labels(name, "unlabeled").inc(len(labels) - labeled)
    runtime.api_metrics.samples.labels(name, "held_out").inc(held_out)
    new_classes = [c for c in dict.fromkeys(labels) if c is not None and c not in known]
    update_id = None
    reason = runtime.policy.reason(store.pending_counts(name), known)
    if reason is not None:
        update = request_update(
            store, runtime.executor, name, runtime.policy.method, triggered_by=caller.name, reason=reason, merge=True
        )
        update_id = update.update_id
    return schemas.SamplesResponse(
        accepted=len(labels),
        labeled=labeled,
        unlabeled=len(labels) - labeled,
        held_out=held_out,
        new_classes=new_classes,
        ids=ids,
        update_id=update_id,
    )
