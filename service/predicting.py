"""A prediction, answered: one implementation behind two doors.

`answer_predict` does a prediction's work (read the body in any accepted form, find the live version, infer through
the micro-batcher, encode the answer).  The FastAPI route (`service.routers.predict`) calls it, and so does
`LeanPredict`, a pure ASGI layer that answers ``POST /v1/models/{name}/predict`` itself when the request is plain
(a valid name, no query string or only ``top_k=<1..1000>``): FastAPI's per-request routing over every route,
dependency resolution and parameter validation cost several times the rest of a prediction (profiled under load).
Everything else of the request is the same: the same authentication, rate limit and scope check, the same body
reading and checks, and errors answered by the application's own exception handlers, so bodies and statuses are
the same whichever door a request takes.  A request that is not plain goes to FastAPI untouched (before any byte of
its body is read), which then answers it (e.g. a 422 for ``top_k=0``) exactly as before.  The route stays in the
OpenAPI document, which describes both.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import pydantic_core
import torch
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from service.auth import authenticate, authorize
from service.errors import ApiError
from service.media import predict_inputs, read_predict
from service.runtime import Runtime
from service.schemas import NAME_PATTERN

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PREDICT_ROUTE = "/v1/models/{name}/predict"
MAX_TOP_K = 1000
_PATH = re.compile(r"/v1/models/([^/]+)/predict")
_NAME = re.compile(NAME_PATTERN)
_TOP_K = re.compile(rb"top_k=([1-9][0-9]{0,3})")


async def answer_predict(runtime: Runtime, name: str, request: Request, top_k: int | None) -> bytes:
    """The JSON answer to a prediction of the authorised caller's ``request`` (errors raised as `ApiError`,
    `InvalidData`, ... for the application's handlers)."""
    body = await read_predict(request)
    live = runtime.server.current(name)
    if live is None:
        await run_in_threadpool(runtime.store.get_model, name)  # 404 for an unknown model
        raise ApiError(409, f"model {name!r} has no live version yet: post samples and run an update first")
    inputs = await predict_inputs(body, live, runtime.settings)
    live, probs = await runtime.batchers.get(name).infer(inputs)
    runtime.api_metrics.count_predictions(name, live.version, len(inputs))
    captured = runtime.capture.offer(name, live.version, inputs, probs)  # sampled for capture: off the request path
    return encode_predictions(name, live.version, live.classes, probs, top_k, captured)


def encode_predictions(
    name: str,
    version: int,
    classes: tuple[str, ...],
    probs: torch.Tensor,
    top_k: int | None,
    ids: Sequence[str | None] | None = None,
) -> bytes:
    """``schemas.PredictResponse`` as JSON (``exclude_none``), built from plain dicts by pydantic-core's encoder:
    the same bytes as the model's ``model_dump_json`` (a test compares them) without building a model per
    prediction."""
    best_p, best_i = probs.max(dim=1)
    predictions: list[dict[str, Any]] = [
        {"label": classes[i], "probability": p} for i, p in zip(best_i.tolist(), best_p.tolist(), strict=True)
    ]
    if top_k is not None:
        k = min(top_k, len(classes))
        top_p, top_i = torch.topk(probs, k, dim=1)
        for prediction, ps, idx in zip(predictions, top_p.tolist(), top_i.tolist(), strict=True):
            prediction["top_k"] = [{"label": classes[i], "probability": p} for i, p in zip(idx, ps, strict=True)]
    if ids is not None:  # the captured inputs' sample ids, in the schema's field order (after top_k)
        for prediction, sample_id in zip(predictions, ids, strict=True):
            if sample_id is not None:  # absent, as exclude_none leaves it, for an input not captured
                prediction["id"] = sample_id
    return pydantic_core.to_json({"model": name, "version": version, "predictions": predictions})


def plain_predict(scope: Scope) -> tuple[str, int | None] | None:
    """(model name, top_k) when ``scope`` is a prediction `LeanPredict` answers itself; None for anything else."""
    if scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
        return None
    path = _PATH.fullmatch(scope["path"])
    if path is None or _NAME.fullmatch(path[1]) is None:
        return None
    query: bytes = scope.get("query_string", b"")
    if not query:
        return path[1], None
    top_k = _TOP_K.fullmatch(query)
    if top_k is None or int(top_k[1]) > MAX_TOP_K:
        return None
    return path[1], int(top_k[1])


class LeanPredict:
    """Pure ASGI: plain predictions answered by `answer_predict` directly; every other request passes on.

    ``route`` is the FastAPI route of predictions: set as the request's route, as FastAPI's router would, so that
    request metrics name the same route template."""

    def __init__(self, app: ASGIApp, *, route: object) -> None:
        self.app, self.route = app, route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        plain = plain_predict(scope)
        if plain is None:
            await self.app(scope, receive, send)
            return
        name, top_k = plain
        scope["route"] = self.route
        request = Request(scope, receive)
        try:
            runtime: Runtime = request.app.state.runtime
            principal = authenticate(runtime.settings, _header(scope, b"authorization"))
            runtime.limiter.take(principal.name)
            authorize(principal, "predict")
            response = Response(await answer_predict(runtime, name, request, top_k), media_type="application/json")
        except Exception as exc:
            response = await _handled(request, exc)
        await response(scope, receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    """The first value of a header, as Starlette's ``Headers.get`` reads it (which FastAPI's ``Header()`` uses)."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def _handled(request: Request, exc: Exception) -> Response:
    """The answer of the application's handler for ``exc`` (looked up along its class hierarchy, as Starlette
    does); an exception no handler takes is raised on."""
    handlers = request.app.exception_handlers
    for cls in type(exc).__mro__:
        handler = handlers.get(cls)
        if handler is not None:
            response: Response = await handler(request, exc)
            return response
    raise exc
