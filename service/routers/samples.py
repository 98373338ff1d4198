"""/v1/models/{name}/samples: ingestion of labeled and unlabeled data (durable before the answer), and deletion."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from fastapi import APIRouter, Query, Request, status
from starlette.concurrency import run_in_threadpool

from cl_core.labels import natural_order
from service import schemas
from service.auth import Principal
from service.bodies import documented
from service.deps import ModelName, RuntimeDep, TrainCaller
from service.errors import ApiError
from service.idempotency import IdempotencyKey, digest, keep, replay
from service.media import SAMPLES_MEDIA, Upload, decode_samples, openapi_media, read_samples
from service.policy_updates import known_classes, start_policy_update
from service.runtime import Runtime
from worker.audit import audit
from worker.deletion import forget_samples
from worker.locking import LockLost

router = APIRouter(prefix="/v1/models", tags=["samples"])

DeferUpdate = Annotated[
    bool,
    Query(
        description="more samples of the same batch follow: store these but leave the update policy to the last "
        "request (one posted file then makes one update, trained on all of it)"
    ),
]


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
    defer_update: DeferUpdate = False,
    label: Annotated[str | None, Query(max_length=200, description="the label of a single image body")] = None,
) -> schemas.SamplesResponse:
    """Accept samples (label absent or null = unlabeled) as JSON, an .npz file, an image or a form of images
    (`service.media`).  New labels are new classes: the head grows at the next update.  A share of each labeled
    class is held out for evaluation.  The update policy may start an update, unless ``defer_update`` says that
    more samples follow."""
    body = await read_samples(request, label)
    return await run_in_threadpool(ingest, name, body, runtime, caller, idempotency_key, defer_update)


def ingest(
    name: str,
    body: schemas.SamplesRequest | Upload,
    runtime: Runtime,
    caller: Principal,
    idempotency_key: str | None,
    defer_update: bool = False,
) -> schemas.SamplesResponse:
    """Store the samples (blocking I/O: runs in the thread pool); the update policy looks at everything pending
    once they are stored, unless ``defer_update``."""
    store, settings = runtime.store, runtime.settings
    relabel = isinstance(body, schemas.SamplesRequest) and body.relabel  # a JSON flag (binary forms never relabel)
    if relabel and not caller.allows("admin"):
        raise ApiError(403, f"this key has the {caller.scope!r} scope; \"relabel\" needs 'admin'", field="relabel")
    record = store.get_model(name)
    batch = decode_samples(body, record, settings)
    # the flag is part of the request: the same key with and without it are different requests
    request_digest = digest(f"{batch.digest()}\0defer_update={defer_update}") if idempotency_key else ""
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
    known = known_classes(runtime, record)
    check_class_growth(labels, known, before.per_class, settings.max_classes, settings.max_new_classes_per_request)
    ids, held = store.append_samples(
        name, inputs, labels, settings.holdout_fraction, request_key=idempotency_key, relabel=relabel
    )
    labeled = sum(label is not None for label in labels)
    held_out = sum(held)
    runtime.api_metrics.samples.labels(name, "labeled").inc(labeled - held_out)
    runtime.api_metrics.samples.labels(name, "unlabeled").inc(len(labels) - labeled)
    runtime.api_metrics.samples.labels(name, "held_out").inc(held_out)
    new_classes = natural_order({c for c in labels if c is not None and c not in known})
    audit(
        "samples.accepted",
        actor=caller.name,
        model=name,
        accepted=len(labels),
        labeled=labeled,
        held_out=held_out,
        new_classes=new_classes,
        relabel=relabel,
        first_id=ids[0],
        last_id=ids[-1],
    )
    # before + this request saves reading the store again
    update_id = (
        None if defer_update else start_policy_update(runtime, record, before.plus(labels, held), known, caller.name)
    )
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


def check_class_growth(
    labels: list[str | None], known: list[str], pending: Mapping[str, int], max_classes: int, max_new: int
) -> None:
    """422 when a request brings more new class names than one request may, or would take the model (its classes,
    the new ones still pending and this request's) beyond ``max_classes``: nothing is stored."""
    new = {label for label in labels if label is not None and label not in known}
    if len(new) > max_new:
        raise ApiError(
            422,
            f"the samples bring {len(new)} new class names; one request may bring at most {max_new} "
            "(CL_MAX_NEW_CLASSES_PER_REQUEST)",
            field="samples",
        )
    total = len(set(known) | set(pending) | new)
    if total > max_classes:
        raise ApiError(
            422,
            f"the model would have {total} classes (known, pending and new); at most {max_classes} (CL_MAX_CLASSES)",
            field="samples",
        )
