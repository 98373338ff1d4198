"""The lean door for predictions (`service.predicting.LeanPredict`) answers exactly as the FastAPI route does.

Two applications with the same settings and the same imported weights, one with the lean door and one without,
get the same requests: every media type, every error, authentication, the rate limit, odd query strings and paths
(which the lean door leaves to FastAPI); status, the headers that matter and the body bytes must be equal.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from cl_core.models import ModelSpec, build_model
from registry import tensors
from service import schemas
from service.app import create_app
from service.predicting import encode_predictions, plain_predict
from service.settings import Settings

KEY = "p" * 20
TRAIN_KEY = "t" * 20
AUTH = {"Authorization": f"Bearer {KEY}"}
CLASSES = ["a", "b", "c"]
HEADERS = ("content-type", "content-length", "www-authenticate", "retry-after", "allow")


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def image(kind: str, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (4, 4), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format=kind)
    return buffer.getvalue()


def weights() -> bytes:
    spec = ModelSpec("mlp", (16,), CLASSES, {"hidden": [8]})
    return tensors.dumps(build_model(spec, seed=3).state_dict())


def prepared(tmp_path: Path, lean: bool, **overrides: Any) -> TestClient:
    """An application serving 'img' (takes 4×4 grey images) and 'plain' (no images), same weights, version 1 live;
    'idle' has no live version."""
    settings = Settings(
        data_dir=tmp_path / ("lean" if lean else "fastapi"), api_keys={KEY: "predict", TRAIN_KEY: "admin"}, **overrides
    )
    client = TestClient(create_app(settings, lean_predict=lean))
    client.__enter__()
    admin = {"Authorization": f"Bearer {TRAIN_KEY}"}
    for name, spec in (("img", {"mode": "L", "size": [4, 4]}), ("plain", None), ("idle", None)):
        body: dict[str, Any] = {"name": name, "architecture": "mlp", "input_shape": [16], "options": {"hidden": [8]}}
        body |= {"classes": CLASSES, "preprocessing": spec}
        assert client.post("/v1/models", json=body, headers=admin).status_code == 201
        if name != "idle":
            answer = client.put(
                f"/v1/models/{name}/weights",
                content=weights(),
                headers={**admin, "Content-Type": "application/octet-stream"},
            )
            assert answer.status_code in (200, 201), answer.text
    return client


@pytest.fixture
def doors(tmp_path: Path) -> Iterator[tuple[TestClient, TestClient]]:
    lean, full = prepared(tmp_path, True), prepared(tmp_path, False)
    yield lean, full
    for client in (lean, full):
        client.__exit__(None, None, None)


def same_answer(lean: TestClient, full: TestClient, method: str, path: str, **kwargs: Any) -> Any:
    a, b = lean.request(method, path, **kwargs), full.request(method, path, **kwargs)
    where = (method, path, a.text[:300], b.text[:300])
    assert a.status_code == b.status_code, where
    assert a.content == b.content, where
    for header in HEADERS:
        assert a.headers.get(header) == b.headers.get(header), (header, *where)
    return a


GOOD = [0.25] * 16
ONE = {"inputs": [GOOD]}
RAW = {"Content-Type": "application/json", **AUTH}
NPY = {"Content-Type": "application/x-npy", **AUTH}
CASES: list[tuple[str, str, dict[str, Any]]] = [
    # JSON: answers, top_k, and every kind of bad body
    ("POST", "/v1/models/plain/predict", {"json": {"inputs": [GOOD, [0.0] * 16]}}),
    ("POST", "/v1/models/plain/predict?top_k=2", {"json": {"inputs": [GOOD]}}),
    ("POST", "/v1/models/plain/predict?top_k=1000", {"json": {"inputs": [GOOD]}}),
    ("POST", "/v1/models/plain/predict", {"json": {"inputs": [GOOD, [0.5] * 15]}}),
    ("POST", "/v1/models/plain/predict", {"json": {"inputs": [GOOD, [*[0.5] * 15, "x"]]}}),
    ("POST", "/v1/models/plain/predict", {"json": {"inputs": [GOOD, [GOOD]]}}),
    ("POST", "/v1/models/plain/predict", {"json": {"inputs": []}}),
    ("POST", "/v1/models/plain/predict", {"json": {"input": [GOOD]}}),
    ("POST", "/v1/models/plain/predict", {"json": {"inputs": [GOOD], "extra": 1}}),
    ("POST", "/v1/models/plain/predict", {"json": {"inputs": [[1e39] * 16]}}),
    ("POST", "/v1/models/plain/predict", {"json": {"inputs": [[True] * 16]}}),
    ("POST", "/v1/models/plain/predict", {"json": {"inputs": [GOOD] * 5}}),  # over max_inputs_per_predict
    ("POST", "/v1/models/plain/predict", {"content": '{"inputs": [[NaN' + ", 0" * 15 + "]]}"}),
    ("POST", "/v1/models/plain/predict", {"content": "{"}),
    ("POST", "/v1/models/plain/predict", {"content": ""}),
    # models: unknown, without a live version; names and query strings the lean door leaves to FastAPI
    ("POST", "/v1/models/nobody/predict", {"json": {"inputs": [GOOD]}}),
    ("POST", "/v1/models/idle/predict", {"json": {"inputs": [GOOD]}}),
    ("POST", "/v1/models/Plain/predict", {"json": {"inputs": [GOOD]}}),
    ("POST", f"/v1/models/{'x' * 65}/predict", {"json": {"inputs": [GOOD]}}),
    ("POST", "/v1/models/plain/predict?top_k=0", {"json": {"inputs": [GOOD]}}),
    ("POST", "/v1/models/plain/predict?top_k=1001", {"json": {"inputs": [GOOD]}}),
    ("POST", "/v1/models/plain/predict?top_k=-1", {"json": {"inputs": [GOOD]}}),
    ("POST", "/v1/models/plain/predict?top_k=two", {"json": {"inputs": [GOOD]}}),
    ("POST", "/v1/models/plain/predict?top_k=02", {"json": {"inputs": [GOOD]}}),
    ("POST", "/v1/models/plain/predict?top_k=2&top_k=3", {"json": {"inputs": [GOOD]}}),
    ("POST", "/v1/models/plain/predict?other=1", {"json": {"inputs": [GOOD]}}),
    ("POST", "/v1/models/plain/predict?api_key=x", {"json": {"inputs": [GOOD]}}),
    ("POST", "/v1/models/plain/predict/", {"json": {"inputs": [GOOD]}}),
    ("GET", "/v1/models/plain/predict", {}),
    # .npy
    ("POST", "/v1/models/plain/predict", {"content": npy(np.full((2, 16), 0.25, np.float32)), "headers": NPY}),
    ("POST", "/v1/models/plain/predict", {"content": npy(np.full((2, 16), 7, np.uint8)), "headers": NPY}),
    ("POST", "/v1/models/plain/predict", {"content": npy(np.full((2, 15), 0.25, np.float32)), "headers": NPY}),
    ("POST", "/v1/models/plain/predict", {"content": npy(np.full((2, 16), np.nan)), "headers": NPY}),
    ("POST", "/v1/models/plain/predict", {"content": npy(np.full((5, 16), 0.25)), "headers": NPY}),
    ("POST", "/v1/models/plain/predict", {"content": npy(np.array(["x"] * 16)[None]), "headers": NPY}),
    ("POST", "/v1/models/plain/predict", {"content": npy(np.full((2, 16), 0.25))[:-8], "headers": NPY}),
    ("POST", "/v1/models/plain/predict", {"content": pickle.dumps([GOOD]), "headers": NPY}),
    # images and forms
    ("POST", "/v1/models/img/predict", {"content": image("PNG"), "headers": {"Content-Type": "image/png", **AUTH}}),
    ("POST", "/v1/models/img/predict", {"content": image("JPEG"), "headers": {"Content-Type": "image/jpeg", **AUTH}}),
    ("POST", "/v1/models/img/predict", {"content": b"\x89PNG junk", "headers": {"Content-Type": "image/png", **AUTH}}),
    ("POST", "/v1/models/plain/predict", {"content": image("PNG"), "headers": {"Content-Type": "image/png", **AUTH}}),
    ("POST", "/v1/models/img/predict", {"files": [("files", ("a.png", image("PNG", 1), "image/png"))] * 2}),
    ("POST", "/v1/models/img/predict", {"files": [("other", ("a.png", image("PNG", 1), "image/png"))]}),
    ("POST", "/v1/models/img/predict", {"data": {"labels": "a"}, "files": [("files", ("a.png", image("PNG"), ""))]}),
    # what the request guard answers before either door
    ("POST", "/v1/models/plain/predict", {"content": "x", "headers": {"Content-Type": "text/plain", **AUTH}}),
    ("POST", "/v1/models/plain/predict", {"content": "{" * 40_000, "headers": RAW}),
    ("POST", "/v1/models/plain/predict", {"json": {"inputs": [GOOD]}, "headers": {**AUTH, "Content-Encoding": "gzip"}}),
    # authentication
    ("POST", "/v1/models/plain/predict", {"json": {"inputs": [GOOD]}, "headers": {}}),
    ("POST", "/v1/models/plain/predict", {"json": ONE, "headers": {"Authorization": "Bearer " + "q" * 20}}),
    ("POST", "/v1/models/plain/predict", {"json": {"inputs": [GOOD]}, "headers": {"Authorization": f"Basic {KEY}"}}),
    ("POST", "/v1/models/plain/predict", {"json": {"inputs": [GOOD]}, "headers": {"Authorization": "Bearer "}}),
    ("POST", "/v1/models/plain/predict", {"json": ONE, "headers": {"Authorization": f"Bearer {TRAIN_KEY}"}}),
    ("POST", "/v1/models/nobody/predict", {"json": {"inputs": [GOOD]}, "headers": {}}),
    ("POST", "/v1/models/plain/predict?top_k=0", {"json": {"inputs": [GOOD]}, "headers": {}}),
]


def with_auth(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with the predict key unless the case sets its own headers."""
    return kwargs if "headers" in kwargs else {**kwargs, "headers": AUTH}


@pytest.fixture
def small_doors(tmp_path: Path) -> Iterator[tuple[TestClient, TestClient]]:
    limits = {"max_inputs_per_predict": 4, "max_body_bytes": 30_000}
    lean, full = prepared(tmp_path, True, **limits), prepared(tmp_path, False, **limits)
    yield lean, full
    for client in (lean, full):
        client.__exit__(None, None, None)


def test_both_doors_answer_every_request_alike(small_doors: tuple[TestClient, TestClient]) -> None:
    lean, full = small_doors
    statuses = set()
    for method, path, kwargs in CASES:
        statuses.add(same_answer(lean, full, method, path, **with_auth(kwargs)).status_code)
    assert {200, 401, 404, 405, 409, 413, 415, 422, 400} <= statuses  # the cases reach every kind of answer


def test_rate_limited_alike(tmp_path: Path) -> None:
    # a bucket of 5 per key (the set-up takes the admin key's 5); then Retry-After: 100 s, the same in both
    limits = {"rate_limit_per_s": 0.01, "rate_limit_burst": 5}
    lean, full = prepared(tmp_path, True, **limits), prepared(tmp_path, False, **limits)
    try:
        for _ in range(6):
            answer = same_answer(lean, full, "POST", "/v1/models/plain/predict", json={"inputs": [GOOD]}, headers=AUTH)
        assert answer.status_code == 429 and answer.headers["retry-after"] == "100"
    finally:
        for client in (lean, full):
            client.__exit__(None, None, None)


def test_lean_answers_are_counted_under_the_route_template(doors: tuple[TestClient, TestClient]) -> None:
    lean, _ = doors
    assert lean.post("/v1/models/plain/predict", json={"inputs": [GOOD]}, headers=AUTH).status_code == 200
    assert lean.post("/v1/models/nobody/predict", json={"inputs": [GOOD]}, headers=AUTH).status_code == 404
    metrics = lean.get("/metrics", headers=AUTH).text
    route = 'route="/v1/models/{name}/predict"'
    assert f'cl_http_requests_total{{method="POST",{route},status="200"}} 1.0' in metrics
    assert f'cl_http_requests_total{{method="POST",{route},status="404"}} 1.0' in metrics
    assert 'cl_predictions_total{model="plain",version="1"} 1.0' in metrics


@pytest.mark.parametrize(
    ("path", "query", "method", "expected"),
    [
        ("/v1/models/m/predict", b"", "POST", ("m", None)),
        ("/v1/models/m-1_x/predict", b"top_k=7", "POST", ("m-1_x", 7)),
        ("/v1/models/m/predict", b"top_k=1000", "POST", ("m", 1000)),
        ("/v1/models/m/predict", b"top_k=1001", "POST", None),
        ("/v1/models/m/predict", b"top_k=0", "POST", None),
        ("/v1/models/m/predict", b"top_k=05", "POST", None),
        ("/v1/models/m/predict", b"top_k=5&x=1", "POST", None),
        ("/v1/models/m/predict", b"top_k=" + b"9" * 10_000, "POST", None),
        ("/v1/models/M/predict", b"", "POST", None),
        ("/v1/models/m\n/predict", b"", "POST", None),
        ("/v1/models/../predict", b"", "POST", None),
        ("/v1/models/m/predict/", b"", "POST", None),
        ("/v1/models/m/x/predict", b"", "POST", None),
        ("/v1/models/m/predict", b"", "GET", None),
    ],
)
def test_which_requests_the_lean_door_takes(
    path: str, query: bytes, method: str, expected: tuple[str, int | None] | None
) -> None:
    scope = {"type": "http", "method": method, "path": path, "query_string": query, "root_path": ""}
    assert plain_predict(scope) == expected
    assert plain_predict({**scope, "root_path": "/api"}) is None  # mounted elsewhere: FastAPI knows the path


def test_answers_encode_as_the_response_model_does() -> None:
    """`encode_predictions` gives the bytes of ``PredictResponse.model_dump_json(exclude_none=True)``, for
    probabilities of every magnitude (tiny ones print with an exponent) and with top_k."""
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(0, 12, (40, 5)).astype(np.float32))
    probs = torch.softmax(logits, dim=1)
    classes = ("zero", "1", "two", "drei", 'quote"d')
    for top_k in (None, 1, 3, 7):
        best_p, best_i = probs.max(dim=1)
        predictions = []
        for row, (i, p) in enumerate(zip(best_i.tolist(), best_p.tolist(), strict=True)):
            prediction = schemas.Prediction(label=classes[i], probability=p)
            if top_k is not None:
                top_p, top_i = torch.topk(probs[row], min(top_k, len(classes)))
                prediction.top_k = [
                    schemas.LabelProbability(label=classes[j], probability=q)
                    for j, q in zip(top_i.tolist(), top_p.tolist(), strict=True)
                ]
            predictions.append(prediction)
        model = schemas.PredictResponse(model="m", version=3, predictions=predictions)
        assert encode_predictions("m", 3, classes, probs, top_k) == model.model_dump_json(exclude_none=True).encode()


def test_plain_predictions_never_reach_the_fastapi_route(
    doors: tuple[TestClient, TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    lean, _ = doors

    async def route_called(*_: Any) -> bytes:
        raise AssertionError("the FastAPI route answered a plain prediction")

    monkeypatch.setattr("service.routers.predict.answer_predict", route_called)
    for query in ("", "?top_k=2"):
        answer = lean.post(f"/v1/models/plain/predict{query}", json={"inputs": [GOOD]}, headers=AUTH)
        assert answer.status_code == 200, answer.text
    assert lean.post("/v1/models/plain/predict?top_k=0", json={"inputs": [GOOD]}, headers=AUTH).status_code == 422
    with pytest.raises(AssertionError, match="the FastAPI route"):  # not plain: FastAPI's route answers it
        lean.post("/v1/models/plain/predict?x=1", json={"inputs": [GOOD]}, headers=AUTH)
