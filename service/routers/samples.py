"""/v1/models/{name}/samples: ingestion of labeled and unlabeled data (durable before the answer), and deletion."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, status
from starlette.concurrency import run_in_threadpool

from service import schemas
from service.auth import Principal
from service.bodies import documented
from service.deps import ModelName, RuntimeDep, TrainCaller
from service.errors import ApiError
from service.idempotency import IdempotencyKey, keep, replay
from service.media import SAMPLES_MEDIA, Upload, decode_samples, openapi_media, read_samples
from service.runtime import Runtime
from worker.audit import audit
from worker.deletion import forget_samples
from worker.pipeline import LockLost
from worker.scheduling import request_update

router = APIRouter(prefix="/v1/models", tags=["samples"])


@router.post(
    "/{name}/samples",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=schemas.SamplesResponse,
    responses={
        404: {"model": schemas.ErrorBody},
        413: {"model": schemas.ErrorBody},
        422: {"model": schemas.ErrorBody},
        429: {"model": schemas.ErrorBody},
    },
    openapi_extra=documented(schemas.SamplesRequest, openapi_media(SAMPLES_MEDIA)),
)
async def post_samples(
    name: ModelName,
    request: Request,
    runtime: RuntimeDep,
    caller: TrainCaller,
    idempotency_key: IdempotencyKey = None,
    label: Annotated[str | None, Query(max_length=200, description="the label of a single image body")] = None,
) -> schemas.SamplesResponse:
    """Accept samples (label absent or null = unlabeled) as JSON, an .npz file, an image or a form of images
    (`service.media`).  New labels are new classes: the head grows at the next update.  A share of each labeled
    class is held out for evaluation.  The update policy may start an update."""
    body = await read_samples(request, label)
    return await run_in_threadpool(ingest, name, body, runtime, caller, idempotency_key)


def ingest(
    name: str,
    body: schemas.SamplesRequest | Upload,
    runtime: Runtime,
    caller: Principal,
    idempotency_key: str | None,
) -> schemas.SamplesResponse:
    """Store the samples (blocking I/O: runs in the thread pool)."""
    store, settings = runtime.store, runtime.settings
    record = store.get_model(name)
    batch = decode_samples(body, record, settings)
    request_digest = batch.digest() if idempotency_key else ""
    if idempotency_key and (first := replay(store, name, "samples", idempotency_key, request_digest)) is not None:
        return schemas.SamplesResponse(**first)
    inputs, labels = batch.inputs, batch.labels
    before = store.pending_counts(name)
    waiting = before.total
    if waiting + len(labels) > settings.max_pending_samples:
        raise ApiError(
            429,
            f"{waiting} samples of {name!r} are waiting for an update (limit {settings.max_pending_samples}); "
            "retry once an update has consumed them",
            headers={"Retry-After": "30"},
        )
    live = store.live_version(name)
    known = list(store.get_version(name, live).spec.get("classes", [])) if live is not None else []
    ids, held = store.append_samples(name, inputs, labels, settings.holdout_fraction, request_key=idempotency_key)
    labeled = sum(label is not None for label in labels)
    held_out = sum(held)
    runtime.api_metrics.samples.labels(name, "labeled").inc(labeled - held_out)
    runtime.api_metrics.samples.labels(name, "unlabeled").inc(len(labels) - labeled)
    runtime.api_metrics.samples.labels(name, "held_out").inc(held_out)
    new_classes = [c for c in dict.fromkeys(labels) if c is not None and c not in known]
    audit(
        "samples.accepted",
        actor=caller.name,
        model=name,
        accepted=len(labels),
        labeled=labeled,
        held_out=held_out,
        new_classes=new_classes,
        first_id=ids[0],
        last_id=ids[-1],
    )
    update_id = None
    reason = runtime.policy.reason(before.plus(labels, held), known)  # saves reading the store again
    if reason is not None:
        update = request_update(
            store,
            runtime.executor,
            name,
            runtime.policy.method,
            triggered_by=caller.name,
            reason=reason,
            merge=True,  # joins a queued update, so the queue limit never refuses it
            max_queued=settings.max_queued_updates,
        )
        update_id = update.update_id
    answer = schemas.SamplesResponse(
        accepted=len(labels),
        labeled=labeled,
        unlabeled=len(labels) - labeled,
        held_out=held_out,
        new_classes=new_classes,
        ids=ids,
        update_id=update_id,
    )
    if idempotency_key:
        keep(store, name, "samples", idempotency_key, request_digest, answer.model_dump(), settings.idempotency_ttl_s)
    return answer


@router.post(
    "/{name}/samples/delete",
    response_model=schemas.SamplesDeleted,
    responses={404: {"model": schemas.ErrorBody}, 409: {"model": schemas.ErrorBody}},
)
def delete_samples(
    name: ModelName, body: schemas.SamplesDelete, runtime: RuntimeDep, caller: TrainCaller
) -> schemas.SamplesDeleted:
    """Delete samples by the ids ingestion returned: never trained again, and removed from every exemplar memory."""
    runtime.store.get_model(name)
    try:
        result = forget_samples(runtime.store, name, body.ids, runtime.settings)
    except LockLost as exc:
        raise ApiError(409, str(exc), headers={"Retry-After": "10"}) from exc
    runtime.api_metrics.samples_dropped.labels(name, "deleted").inc(result.samples)
    audit(
        "samples.deleted",
        actor=caller.name,
        model=name,
        requested=len(body.ids),
        deleted=result.samples,
        exemplars=result.exemplars,
    )
    return schemas.SamplesDeleted(
        deleted=result.samples, exemplars_removed=result.exemplars, versions_scrubbed=result.versions
    )
