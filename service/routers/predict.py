"""/v1/models/{name}/predict: micro-batched predictions from the live version (JSON, .npy or images:
`service.media`)."""

from __future__ import annotations

from typing import Annotated

import torch
from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from service import schemas
from service.bodies import documented
from service.deps import ModelName, PredictCaller, RuntimeDep
from service.errors import ApiError
from service.media import PREDICT_MEDIA, openapi_media, predict_inputs, read_predict

router = APIRouter(prefix="/v1/models", tags=["predict"])


@router.post(
    "/{name}/predict",
    response_model=schemas.PredictResponse,
    responses={404: {"model": schemas.ErrorBody}, 409: {"model": schemas.ErrorBody}, 422: {"model": schemas.ErrorBody}},
    openapi_extra=documented(schemas.PredictRequest, openapi_media(PREDICT_MEDIA)),
)
async def predict(
    name: ModelName,
    request: Request,
    runtime: RuntimeDep,
    _: PredictCaller,
    top_k: Annotated[int | None, Query(ge=1, le=1000, description="also return the k most probable labels")] = None,
) -> schemas.PredictResponse:
    body = await read_predict(request)
    live = runtime.server.current(name)
    if live is None:
        await run_in_threadpool(runtime.store.get_model, name)  # 404 for an unknown model
        raise ApiError(409, f"model {name!r} has no live version yet: post samples and run an update first")
    inputs = await predict_inputs(body, live, runtime.settings)
    live, probs = await runtime.batchers.get(name).infer(inputs)
    runtime.api_metrics.predictions.labels(name, str(live.version)).inc(len(inputs))
    best_p, best_i = probs.max(dim=1)
    classes = live.classes
    predictions = [
        schemas.Prediction(label=classes[i], probability=p)
        for i, p in zip(best_i.tolist(), best_p.tolist(), strict=True)
    ]
    captured = runtime.capture.offer(name, live.version, inputs, probs)  # sampled for capture: off the request path
    if captured is not None:
        for prediction, sample_id in zip(predictions, captured, strict=True):
            prediction.id = sample_id
    if top_k is not None:
        k = min(top_k, len(classes))
        top_p, top_i = torch.topk(probs, k, dim=1)
        for prediction, ps, idx in zip(predictions, top_p.tolist(), top_i.tolist(), strict=True):
            prediction.top_k = [
                schemas.LabelProbability(label=classes[i], probability=p) for i, p in zip(idx, ps, strict=True)
            ]
    answer = schemas.PredictResponse(model=name, version=live.version, predictions=predictions)
    # Serialised here, once: returning the model would make FastAPI validate and encode it a second time.
    return Response(answer.model_dump_json(exclude_none=True), media_type="application/json")  # type: ignore[return-value]
