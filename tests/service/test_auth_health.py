"""API keys and scopes; health, readiness, Prometheus metrics and offline docs."""

from fastapi.testclient import TestClient

from tests.service.conftest import blobs, create, post_samples, trained

KEYS = {"p" * 20: "predict", "t" * 20: "train", "a" * 20: "admin"}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_scopes(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(api_keys=KEYS)
    body = {"name": "m", "architecture": "mlp", "input_shape": [8], "options": {"hidden": [8]}}
    assert client.post("/v1/models", json=body).status_code == 401
    assert client.post("/v1/models", json=body, headers=auth("x" * 20)).status_code == 401
    assert client.post("/v1/models", json=body, headers={"Authorization": "Basic abc"}).status_code == 401
    assert client.post("/v1/models", json=body, headers=auth("t" * 20)).status_code == 403
    assert client.post("/v1/models", json=body, headers=auth("a" * 20)).status_code == 201
    assert client.get("/v1/models", headers=auth("p" * 20)).status_code == 200
    x, y = blobs(["a"], 2)
    samples = {"samples": [{"input": v, "label": t} for v, t in zip(x, y, strict=True)]}
    assert client.post("/v1/models/m/samples", json=samples, headers=auth("p" * 20)).status_code == 403
    assert client.post("/v1/models/m/samples", json=samples, headers=auth("t" * 20)).status_code == 202
    assert client.post("/v1/models/m/versions/1/promote", headers=auth("t" * 20)).status_code == 403
    for open_path in ("/healthz", "/readyz", "/metrics"):
        assert client.get(open_path).status_code == 200


def test_health_readiness_and_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    trained(client)
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["models"] == {"m": 1}
    client.post("/v1/models/m/predict", json={"inputs": [[0.0] * 8]})
    text = client.get("/metrics").text
    for name in (
        "cl_http_requests_total",
        "cl_http_request_duration_seconds_bucket",
        'cl_predictions_total{model="m",version="1"}',
        'cl_model_live_version{model="m"} 1.0',
        "cl_model_heldout_accuracy_ratio",
        'cl_model_heldout_class_accuracy_ratio{class="a",model="m"}',
        "cl_updates_total",
        "cl_update_duration_seconds_bucket",
        "cl_update_queue_depth",
        "cl_samples_ingested_total",
        'cl_predict_batch_inputs_count{model="m"} 1.0',
    ):
        assert name in text, name
    assert 'route="/v1/models/{name}/predict"' in text  # route templates, not raw paths


def test_docs_work_offline(client: TestClient) -> None:
    page = client.get("/docs").text
    assert "/docs-assets/swagger-ui-bundle.js" in page and "cdn" not in page.lower()
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    assert client.get("/docs-assets/swagger-ui.css").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "/v1/models/{name}/predict" in spec["paths"]
    predict = spec["components"]["schemas"]["PredictResponse"]["properties"]
    assert set(predict) == {"model", "version", "predictions"}
    body = spec["paths"]["/v1/models/{name}/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/PredictRequest"}
    assert "inputs" in spec["components"]["schemas"]["PredictRequest"]["properties"]
    assert "Sample" in spec["components"]["schemas"] and "Tensorish" in spec["components"]["schemas"]


def test_unknown_routes_and_methods_use_the_error_shape(client: TestClient) -> None:
    response = client.get("/v2/nothing")
    assert response.status_code == 404 and set(response.json()) == {"detail", "field", "index"}
    create(client)
    post_samples(client, "m", *blobs(["a"], 1))
