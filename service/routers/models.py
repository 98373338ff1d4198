"""/v1/models: create, list, describe, import weights, delete."""

from __future__ import annotations

import dataclasses
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from cl_core.models import ModelSpec, architectures, build_model
from cl_core.preprocessing import Preprocessing
from cl_core.validation import shown
from registry import ModelRecord
from registry.transfer import export_model, import_model
from service import schemas
from service.deps import AdminCaller, ModelName, PredictCaller, RuntimeDep
from service.errors import ApiError
from service.ingest import labels_of
from service.routers.traffic import checked_capture
from service.schemas import NAME_PATTERN
from service.views import model_info, version_info
from worker.audit import audit
from worker.learners import validate_method
from worker.locking import LockLost
from worker.pipeline import import_weights
from worker.promotion import auto_promote

router = APIRouter(prefix="/v1/models", tags=["models"])


def _updating(runtime: RuntimeDep, name: str) -> bool:
    return any(u.status == "running" for u in runtime.store.active_updates(name))


@router.post("", status_code=status.HTTP_201_CREATED, response_model=schemas.ModelInfo)
def create_model(body: schemas.ModelCreate, runtime: RuntimeDep, caller: AdminCaller) -> schemas.ModelInfo:
    """Create a model from a registered architecture; it has no live version until its first update or import."""
    if body.architecture not in architectures():
        raise ApiError(
            422,
            f"unknown architecture {shown(body.architecture)}; known: {', '.join(architectures())}",
            field="architecture",
        )
    if any(d < 1 or d > 100_000 for d in body.input_shape):
        raise ApiError(422, f"input_shape dimensions must be in 1..100000, got {body.input_shape}", field="input_shape")
    if len(body.classes) > runtime.settings.max_classes:
        raise ApiError(
            422, f"{len(body.classes)} classes; a model has at most {runtime.settings.max_classes}", field="classes"
        )
    classes = labels_of(body.classes)
    if len(set(classes)) != len(classes):
        raise ApiError(422, "class names must be unique", field="classes")
    try:
        method = validate_method(body.method, runtime.settings)
        spec = ModelSpec(body.architecture, tuple(body.input_shape), [c for c in classes if c], dict(body.options))
        build_model(spec)  # the options and shape must build
    except ValueError as exc:
        raise ApiError(422, str(exc), field="method" if "method" in str(exc) else "options") from exc
    preprocessing = None
    if body.preprocessing is not None:
        try:
            image_spec = Preprocessing.from_json(body.preprocessing.model_dump())
            image_spec.check_input_shape(body.input_shape)
        except ValueError as exc:
            raise ApiError(422, str(exc), field="preprocessing") from exc
        preprocessing = image_spec.to_json()
    capture = checked_capture(body.capture, runtime.settings.capture_max_samples_limit)
    record = ModelRecord(
        name=body.name,
        architecture=body.architecture,
        input_shape=list(body.input_shape),
        classes=list(spec.classes),
        options=dict(body.options),
        method=method,
        method_hparams=dict(body.method_hparams),
        created_by=caller.name,
        preprocessing=preprocessing,
        capture=None if capture is None else capture.to_json(),
    )
    runtime.store.create_model(record)
    runtime.capture.configure(record.name, capture)
    audit("model.created", actor=caller.name, model=record.name, architecture=record.architecture)
    return model_info(runtime.store, runtime.server, record, False, runtime.settings.policy_min_samples_per_new_class)


@router.get("", response_model=schemas.ModelList)
def list_models(runtime: RuntimeDep, _: PredictCaller) -> schemas.ModelList:
    return schemas.ModelList(
        models=[
            model_info(
                runtime.store,
                runtime.server,
                r,
                _updating(runtime, r.name),
                runtime.settings.policy_min_samples_per_new_class,
            )
            for r in runtime.store.list_models()
        ]
    )


@router.get("/{name}", response_model=schemas.ModelInfo, responses={404: {"model": schemas.ErrorBody}})
def get_model(name: ModelName, runtime: RuntimeDep, _: PredictCaller) -> schemas.ModelInfo:
    record = runtime.store.get_model(name)
    return model_info(
        runtime.store,
        runtime.server,
        record,
        _updating(runtime, name),
        runtime.settings.policy_min_samples_per_new_class,
    )


@router.patch("/{name}", response_model=schemas.ModelInfo, responses={404: {"model": schemas.ErrorBody}})
def patch_model(
    name: ModelName, body: schemas.ModelPatch, runtime: RuntimeDep, caller: AdminCaller
) -> schemas.ModelInfo:
    """Change a model's settings: only the fields given (now: ``capture``; null switches capture off and empties
    the capture reservoir, a smaller ``max_samples`` trims it)."""
    if "capture" not in body.model_fields_set:
        raise ApiError(422, "nothing to change: give at least one field (capture)", field="body")
    capture = checked_capture(body.capture, runtime.settings.capture_max_samples_limit)
    stored = None if capture is None else capture.to_json()
    record = runtime.store.update_model(name, lambda r: dataclasses.replace(r, capture=stored))
    runtime.capture.configure(name, capture)
    dropped = runtime.store.trim_captures(name, 0 if capture is None else capture.max_samples)
    audit("model.changed", actor=caller.name, model=name, capture=stored, captures_dropped=dropped)
    needed = runtime.settings.policy_min_samples_per_new_class
    return model_info(runtime.store, runtime.server, record, _updating(runtime, name), needed)


@router.put(
    "/{name}/weights",
    status_code=status.HTTP_201_CREATED,
    response_model=schemas.VersionInfo,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def import_model_weights(
    name: ModelName, request: Request, runtime: RuntimeDep, caller: AdminCaller
) -> schemas.VersionInfo:
    """Import pretrained weights (a safetensors file matching the architecture) as a new version."""
    await run_in_threadpool(runtime.store.get_model, name)
    data = await request.body()
    try:
        record = await run_in_threadpool(
            import_weights, runtime.store, name, data, by=caller.name, settings=runtime.settings
        )
    except ValueError as exc:
        raise ApiError(422, str(exc), field="body") from exc
    except LockLost as exc:
        raise ApiError(409, str(exc)) from exc
    audit("version.imported", actor=caller.name, model=name, version=record.version, status=record.status)
    promoted = await run_in_threadpool(
        lambda: auto_promote(
            runtime.store,
            record,
            runtime.settings,
            by=caller.name,
            expected=record.parent,
            on_live=runtime.server.refresh,
        )
    )
    if promoted is not None and promoted.promoted:
        live: int | None = record.version
    else:
        live = await run_in_threadpool(runtime.store.live_version, name)
    return version_info(await run_in_threadpool(runtime.store.get_version, name, record.version), live)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_model(name: ModelName, runtime: RuntimeDep, caller: AdminCaller) -> None:
    """Remove the model with its versions, samples, held-out data, exemplar memory and updates."""
    for update in runtime.store.active_updates(name):
        runtime.executor.cancel(name, update.update_id)
    runtime.store.delete_model(name)
    runtime.server.refresh(name)
    runtime.api_metrics.forget_model(name)
    runtime.capture.configure(name, None)
    runtime.capture.metrics.forget_model(name)
    audit("model.deleted", actor=caller.name, model=name)


@router.get(
    "/{name}/export",
    response_class=Response,
    responses={
        200: {"content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}},
        404: {"model": schemas.ErrorBody},
    },
)
def export(name: ModelName, runtime: RuntimeDep, caller: AdminCaller) -> Response:
    """The whole model as a zip archive (every version and method state, held-out data, pending samples), to
    import into another service, whatever its store."""
    data = export_model(runtime.store, name)
    audit("model.exported", actor=caller.name, model=name, bytes=len(data))
    return Response(
        data, media_type="application/zip", headers={"Content-Disposition": f'attachment; filename="{name}.zip"'}
    )


@router.post(
    "/import",
    status_code=status.HTTP_201_CREATED,
    response_model=schemas.ModelInfo,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def import_archive(
    request: Request,
    runtime: RuntimeDep,
    caller: AdminCaller,
    name: Annotated[str | None, Query(pattern=NAME_PATTERN, description="import under another name")] = None,
) -> schemas.ModelInfo:
    """Create a model from an archive that ``GET /v1/models/{name}/export`` produced."""
    data = await request.body()
    try:
        record = await run_in_threadpool(
            import_model, runtime.store, data, name=name, holdout_fraction=runtime.settings.holdout_fraction
        )
    except ValueError as exc:
        raise ApiError(422, str(exc), field="body") from exc
    await run_in_threadpool(runtime.server.refresh, record.name)
    audit("model.imported", actor=caller.name, model=record.name)
    return await run_in_threadpool(
        model_info, runtime.store, runtime.server, record, False, runtime.settings.policy_min_samples_per_new_class
    )
