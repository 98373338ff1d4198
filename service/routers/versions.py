"""/v1/models/{name}/versions: lineage, metrics, promotion and rollback."""

from __future__ import annotations

from fastapi import APIRouter

from service import schemas
from service.deps import AdminCaller, ModelName, PredictCaller, RuntimeDep, VersionNumber
from service.errors import ApiError
from service.views import version_info
from worker.promotion import RejectedByGate
from worker.promotion import promote as promote_version

router = APIRouter(prefix="/v1/models", tags=["versions"])


@router.get("/{name}/versions", response_model=schemas.VersionList)
def list_versions(name: ModelName, runtime: RuntimeDep, _: PredictCaller) -> schemas.VersionList:
    live = runtime.store.live_version(name)
    return schemas.VersionList(versions=[version_info(v, live) for v in runtime.store.list_versions(name)])


@router.get(
    "/{name}/versions/{version}", response_model=schemas.VersionInfo, responses={404: {"model": schemas.ErrorBody}}
)
def get_version(name: ModelName, version: VersionNumber, runtime: RuntimeDep, _: PredictCaller) -> schemas.VersionInfo:
    return version_info(runtime.store.get_version(name, version), runtime.store.live_version(name))


@router.post(
    "/{name}/versions/{version}/promote",
    response_model=schemas.Promoted,
    responses={404: {"model": schemas.ErrorBody}, 409: {"model": schemas.ErrorBody}},
)
def promote(
    name: ModelName,
    version: VersionNumber,
    runtime: RuntimeDep,
    caller: AdminCaller,
    body: schemas.PromoteRequest | None = None,
) -> schemas.Promoted:
    """Serve ``version`` (rolling back is promoting an older one).  In-flight requests finish on the old version.
    A version the forgetting gate rejected is promoted only with ``{"force": true}`` (audited)."""
    force = body is not None and body.force
    try:
        result = promote_version(
            runtime.store, name, version, by=caller.name, on_live=runtime.server.refresh, force=force
        )
    except RejectedByGate as exc:
        raise ApiError(409, str(exc)) from exc
    if not result.promoted:
        raise ApiError(409, f"the live version of {name!r} changed while promoting (now {result.previous}); retry")
    return schemas.Promoted(
        model=name, live_version=version, previous=result.previous, forced=result.forced, gate=result.gate
    )
