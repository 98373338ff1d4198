"""The FastAPI application: routers by resource, one error shape, offline docs, the operator's console (`service.ui`),
runtime built in the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry
from starlette.concurrency import run_in_threadpool

from service import schemas, ui
from service.bodies import add_documented_schemas
from service.errors import install_error_handlers
from service.observability import ApiMetrics, RequestGuard
from service.predicting import PREDICT_ROUTE, LeanPredict
from service.routers import health, models, predict, quarantine, reports, samples, traffic, updates, versions
from service.runtime import build_runtime, start
from service.settings import Settings

DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"
ERRORS = {code: {"model": schemas.ErrorBody} for code in (400, 401, 403, 404, 409, 413, 415, 422, 429, 503)}


def create_app(
    settings: Settings | None = None, *, on_started: Callable[[], None] | None = None, lean_predict: bool = True
) -> FastAPI:
    """A new application; nothing is loaded until its lifespan starts (``on_started`` runs once it has: `clserve`
    tunes garbage collection there).  ``lean_predict=False`` leaves every prediction to the FastAPI route (the
    tests compare both doors)."""
    settings = settings or Settings()
    registry = CollectorRegistry()
    api_metrics = ApiMetrics(registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await run_in_threadpool(build_runtime, settings, registry, api_metrics)
        app.state.runtime = runtime
        await run_in_threadpool(start, runtime)
        if on_started is not None:
            on_started()
        try:
            yield
        finally:
            await runtime.close()

    app = FastAPI(
        title="continual-serve",
        version="1",
        summary="PyTorch models that keep learning from production data without forgetting.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        responses=ERRORS,  # type: ignore[arg-type]
    )
    install_error_handlers(app)
    for router in (
        models.router,
        predict.router,
        samples.router,
        quarantine.router,
        updates.router,
        versions.router,
        reports.router,
        traffic.router,
        health.router,
    ):
        app.include_router(router)
    app.mount("/docs-assets", StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = add_documented_schemas(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/docs", include_in_schema=False)
    def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="continual-serve API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title="continual-serve API",
            redoc_js_url="/docs-assets/redoc.standalone.js",
            redoc_favicon_url="/docs-assets/favicon.png",
            with_google_fonts=False,
        )

    if lean_predict:  # inside RequestGuard: its limits and metrics apply to both doors
        app.add_middleware(LeanPredict, route=_route(predict.router, PREDICT_ROUTE, "POST"))
    app.add_middleware(
        RequestGuard,
        max_body_bytes=settings.max_body_bytes,
        max_upload_bytes=settings.max_upload_bytes,
        metrics=api_metrics,
    )
    ui.install(app)  # the operator's console at /ui; its headers wrap everything, RequestGuard's refusals included
    return app


def _route(router: APIRouter, path: str, method: str) -> APIRoute:
    return next(r for r in router.routes if isinstance(r, APIRoute) and r.path == path and method in (r.methods or ()))
