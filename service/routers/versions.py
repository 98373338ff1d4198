"""/v1/models/{name}/versions: lineage, metrics, promotion and rollback."""

from __future__ import annotations

from fastapi import APIRouter

from service import schemas
from service.deps import AdminCaller, ModelName, PredictCaller, RuntimeDep
from service.errors import ApiError
from service.views import version_info
from worker.audit import audit
from worker.evaluation import describe_gate

router = APIRouter(prefix="/v1/models", tags=["versions"])


@router.get("/{name}/versions", response_model=schemas.VersionList)
def list_versions(name: ModelName, runtime: RuntimeDep, _: PredictCaller) -> schemas.VersionList:
    live = runtime.store.live_version(name)
    return schemas.VersionList(versions=[version_info(v, live) for v in runtime.store.list_versions(name)])


@router.get(
    "/{name}/versions/{version}", response_model=schemas.VersionInfo, responses={404: {"model": schemas.ErrorBody}}
)
def get_version(name: ModelName, version: int, runtime: RuntimeDep, _: PredictCaller) -> schemas.VersionInfo:
    return version_info(runtime.store.get_version(name, version), runtime.store.live_version(name))


@router.post(
    "/{name}/versions/{version}/promote",
    response_model=schemas.Promoted,
    responses={404: {"model": schemas.ErrorBody}, 409: {"model": schemas.ErrorBody}},
)
def promote(
    name: ModelName,
    version: int,
    runtime: RuntimeDep,
    caller: AdminCaller,
    body: schemas.PromoteRequest | None = None,
) -> schemas.Promoted:
    """Serve ``version`` (rolling back is promoting an older one).  In-flight requests finish on the old version.
    A version the forgetting gate rejected is promoted only with ``{"force": true}`` (audited)."""
    record = runtime.store.get_version(name, version)
    force = body is not None and body.force
    forced = record.status == "rejected"
    if forced and not force:
        raise ApiError(
            409,
            f"version {version} was rejected by the forgetting gate ({describe_gate(record.metrics)}); "
            'promote it with {"force": true} if you mean it',
        )
    previous = runtime.store.live_version(name)
    runtime.store.promote(name, version, by=caller.name)
    runtime.server.refresh(name)
    event = "version.rollback" if previous is not None and version < previous else "version.promoted"
    finding = describe_gate(record.metrics) if forced else None
    extra = {"forced": True, "gate": finding} if forced else {}
    audit(event, actor=caller.name, model=name, version=version, previous=previous, **extra)
    return schemas.Promoted(model=name, live_version=version, previous=previous, forced=forced, gate=finding)
