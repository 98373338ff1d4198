"""Dependencies as `Annotated` aliases: the runtime's parts and the caller's scope."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, Header, Path, Query, Request

from cl_core.validation import shown
from registry.names import MAX_ID, UPDATE_ID_PATTERN
from service.auth import Principal, authenticate, authorize
from service.errors import ApiError
from service.runtime import Runtime
from service.schemas import NAME_PATTERN

# Dependencies are `async def` although they never await: FastAPI runs a sync dependency in the thread pool, and a
# thread hop per dependency per request would cost more than everything else a prediction does.


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def _needs(scope: str):  # type: ignore[no-untyped-def]
    """The caller, authenticated, rate-limited and authorised for ``scope``: one flat dependency (FastAPI resolves
    every nested dependency per request in Python: on the predict path each level cost more than JSON parsing)."""

    async def dependency(request: Request, authorization: Annotated[str | None, Header()] = None) -> Principal:
        runtime: Runtime = request.app.state.runtime
        principal = authenticate(runtime.settings, authorization)
        runtime.limiter.take(principal.name)
        return authorize(principal, scope)

    return dependency


PredictCaller = Annotated[Principal, Depends(_needs("predict"))]
TrainCaller = Annotated[Principal, Depends(_needs("train"))]
AdminCaller = Annotated[Principal, Depends(_needs("admin"))]

ModelName = Annotated[str, Path(pattern=NAME_PATTERN, description="the model's name")]
UpdateId = Annotated[str, Path(pattern=UPDATE_ID_PATTERN, description="the update's id")]
VersionNumber = Annotated[int, Path(ge=1, le=MAX_ID, description="the version's number")]

DEFAULT_PAGE = 20  # a page of records with their figures stays well under 100 KB (clbench soak)
MAX_PAGE = 500
PageLimit = Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"records per page, newest first (at most {MAX_PAGE})")]
PageCursor = Annotated[
    str | None, Query(max_length=64, description="the next_cursor of the previous page (absent: the newest records)")
]
_CURSOR = re.compile(r"[1-9][0-9]{0,18}")


def page_position(cursor: str | None) -> int | None:
    """The store position a cursor names (a decimal from 1 to 2⁶³−1, as ``next_cursor`` gave it), else 422."""
    if cursor is None:
        return None
    if _CURSOR.fullmatch(cursor) is None or int(cursor) > MAX_ID:
        raise ApiError(
            422, f"invalid cursor {shown(cursor)}: pass the next_cursor of the previous page, unchanged", field="cursor"
        )
    return int(cursor)
