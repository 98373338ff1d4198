"""/v1/models/{name}/predict: micro-batched predictions from the live version (JSON, .npy or images:
`service.media`).

Plain predictions are answered before they reach this route (`service.predicting.LeanPredict`, the same work
without FastAPI's per-request machinery); this route answers the others and describes both in the OpenAPI
document."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from service import schemas
from service.bodies import documented
from service.deps import ModelName, PredictCaller, RuntimeDep
from service.media import PREDICT_MEDIA, openapi_media
from service.predicting import MAX_TOP_K, PREDICT_ROUTE, answer_predict

router = APIRouter(tags=["predict"])


@router.post(
    PREDICT_ROUTE,
    response_model=schemas.PredictResponse,
    responses={404: {"model": schemas.ErrorBody}, 409: {"model": schemas.ErrorBody}, 422: {"model": schemas.ErrorBody}},
    openapi_extra=documented(schemas.PredictRequest, openapi_media(PREDICT_MEDIA)),
)
async def predict(
    name: ModelName,
    request: Request,
    runtime: RuntimeDep,
    _: PredictCaller,
    top_k: Annotated[
        int | None, Query(ge=1, le=MAX_TOP_K, description="also return the k most probable labels")
    ] = None,
) -> schemas.PredictResponse:
    # Encoded once, by `answer_predict`: returning the model would make FastAPI validate and encode it again.
    answer = await answer_predict(runtime, name, request, top_k)
    return Response(answer, media_type="application/json")  # type: ignore[return-value]
