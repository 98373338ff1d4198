"""/v1/models/{name}/versions: lineage, metrics, promotion and rollback."""

from __future__ import annotations

from fastapi import APIRouter

from service import schemas
from service.deps import (
    DEFAULT_PAGE,
    AdminCaller,
    ModelName,
    PageCursor,
    PageLimit,
    PredictCaller,
    RuntimeDep,
    VersionNumber,
    page_position,
)
from service.errors import ApiError
from service.views import version_info
from worker.audit import audit
from worker.promotion import RejectedByGate
from worker.promotion import promote as promote_version

router = APIRouter(prefix="/v1/models", tags=["versions"])


@router.get("/{name}/versions", response_model=schemas.VersionList)
def list_versions(
    name: ModelName,
    runtime: RuntimeDep,
    _: PredictCaller,
    limit: PageLimit = DEFAULT_PAGE,
    cursor: PageCursor = None,
) -> schemas.VersionList:
    """Versions with lineage, metrics and promotions, newest first, one page at a time (``next_cursor`` leads to
    the older ones)."""
    page = runtime.store.versions_page(name, limit=limit, before=page_position(cursor))
    live = runtime.store.live_version(name)
    return schemas.VersionList(
        versions=[version_info(v, live) for v in page.items],
        next_cursor=None if page.next is None else str(page.next),
    )


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


@router.post(
    "/{name}/versions/{version}/pin", response_model=schemas.VersionInfo, responses={404: {"model": schemas.ErrorBody}}
)
def pin(name: ModelName, version: VersionNumber, runtime: RuntimeDep, caller: AdminCaller) -> schemas.VersionInfo:
    """Pin a version: version retention keeps it whatever its age (idempotent)."""
    return _pinned(name, version, True, runtime, caller.name)


@router.delete(
    "/{name}/versions/{version}/pin", response_model=schemas.VersionInfo, responses={404: {"model": schemas.ErrorBody}}
)
def unpin(name: ModelName, version: VersionNumber, runtime: RuntimeDep, caller: AdminCaller) -> schemas.VersionInfo:
    """Unpin a version: retention treats it like any other from the next update on (idempotent)."""
    return _pinned(name, version, False, runtime, caller.name)


def _pinned(name: str, version: int, pinned: bool, runtime: RuntimeDep, actor: str | None) -> schemas.VersionInfo:
    record = runtime.store.pin_version(name, version, pinned)
    audit("version.pinned" if pinned else "version.unpinned", actor=actor, model=name, version=version)
    return version_info(record, runtime.store.live_version(name))
