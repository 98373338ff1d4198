"""/healthz (process up), /readyz (store reachable, models loaded), /metrics (Prometheus).  No key needed."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from registry import NotFound, StoreError
from service.deps import RuntimeDep
from service.errors import ApiError
from worker.recovery import abandoned

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(runtime: RuntimeDep) -> dict[str, object]:
    try:
        runtime.store.ping()
    except StoreError as exc:
        raise ApiError(503, f"the store is unreachable: {exc}", headers={"Retry-After": "5"}) from exc
    if not runtime.server.ready:
        raise ApiError(503, "models are still loading", headers={"Retry-After": "1"})
    return {"status": "ready", "models": runtime.server.served()}


@router.get("/metrics", response_class=Response)
def metrics(runtime: RuntimeDep) -> Response:
    depth: dict[str, int] = {}
    running: dict[str, int] = {}
    stuck: dict[str, int] = {}
    try:
        for model in runtime.store.list_models():
            try:
                updates = runtime.store.active_updates(model.name)  # queued and running: not the history
                stuck[model.name] = len(abandoned(runtime.store, model.name, updates))
            except NotFound:  # deleted meanwhile
                continue
            depth[model.name] = sum(u.status == "queued" for u in updates)
            running[model.name] = sum(u.status == "running" for u in updates)
    except StoreError:
        pass  # keep exporting what the process knows
    for name, value in depth.items():
        runtime.api_metrics.queue_depth.labels(name).set(value)
        runtime.api_metrics.stuck.labels(name).set(stuck[name])
        runtime.api_metrics.serving.labels(name).set(runtime.server.current(name) is not None)
        runtime.api_metrics.track_model(name)
    if runtime.update_metrics is not None:  # embedded mode: this process runs the updates
        for name, value in running.items():
            runtime.update_metrics.running.labels(name).set(value)
    return Response(generate_latest(runtime.registry), media_type=CONTENT_TYPE_LATEST)
