"""Dependencies as `Annotated` aliases: the runtime's parts and the caller's scope."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Path, Request

from registry.names import MAX_ID, UPDATE_ID_PATTERN
from service.auth import Principal, authenticate, authorize
from service.runtime import Runtime
from service.schemas import NAME_PATTERN

# Dependencies are `async def` although they never await: FastAPI runs a sync dependency in the thread pool, and a
# thread hop per dependency per request would cost more than everything else a prediction does.


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def _caller(runtime: RuntimeDep, authorization: Annotated[str | None, Header()] = None) -> Principal:
    principal = authenticate(runtime.settings, authorization)
    runtime.limiter.take(principal.name)
    return principal


def _needs(scope: str):  # type: ignore[no-untyped-def]
    async def dependency(caller: Annotated[Principal, Depends(_caller)]) -> Principal:
        return authorize(caller, scope)

    return dependency


PredictCaller = Annotated[Principal, Depends(_needs("predict"))]
TrainCaller = Annotated[Principal, Depends(_needs("train"))]
AdminCaller = Annotated[Principal, Depends(_needs("admin"))]

ModelName = Annotated[str, Path(pattern=NAME_PATTERN, description="the model's name")]
UpdateId = Annotated[str, Path(pattern=UPDATE_ID_PATTERN, description="the update's id")]
VersionNumber = Annotated[int, Path(ge=1, le=MAX_ID, description="the version's number")]
