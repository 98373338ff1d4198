"""/v1/models/{name}/predict."""

from fastapi.testclient import TestClient

from tests.service.conftest import blobs, create, trained


def test_predict_needs_a_live_version(client: TestClient) -> None:
    assert client.post("/v1/models/none/predict", json={"inputs": [[0.0] * 8]}).status_code == 404
    create(client)
    response = client.post("/v1/models/m/predict", json={"inputs": [[0.0] * 8]})
    assert response.status_code == 409 and "no live version" in response.json()["detail"]


def test_predictions_labels_probabilities_and_top_k(client: TestClient) -> None:
    trained(client)
    x, y = blobs(["a", "b", "c"], 5, seed=9)
    answer = client.post("/v1/models/m/predict", json={"inputs": x}).json()
    assert answer["model"] == "m" and answer["version"] == 1
    assert [p["label"] for p in answer["predictions"]] == y
    assert all(0.0 <= p["probability"] <= 1.0 for p in answer["predictions"])
    top = client.post("/v1/models/m/predict?top_k=5", json={"inputs": x[:2]}).json()["predictions"]
    assert len(top[0]["top_k"]) == 3 and top[0]["top_k"][0]["label"] == top[0]["label"]
    assert abs(sum(t["probability"] for t in top[0]["top_k"]) - 1.0) < 1e-5


def test_bad_inputs_name_the_field_and_index(client: TestClient) -> None:
    trained(client)
    good = [0.5] * 8
    cases = [
        ({"inputs": [good, [0.5] * 7]}, 422, "inputs", 1),
        ({"inputs": [good, good, [0.5] * 7 + ["x"]]}, 422, "inputs", 2),
        ({"inputs": [good, [[0.5] * 8]]}, 422, "inputs", 1),
        ({"inputs": []}, 422, "inputs", None),
        ({"input": [good]}, 422, "inputs", None),
        ({"inputs": [[1e39] * 8]}, 422, "inputs", 0),
    ]
    for body, status, field, index in cases:
        response = client.post("/v1/models/m/predict", json=body)
        assert response.status_code == status, (body, response.text)
        assert (response.json()["field"], response.json()["index"]) == (field, index), (body, response.json())
    raw = '{"inputs": [[0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, NaN]]}'
    response = client.post("/v1/models/m/predict", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and response.json()["index"] == 0 and "finite" in response.json()["detail"]
    assert (
        client.post("/v1/models/m/predict", content="{", headers={"Content-Type": "application/json"}).status_code
        == 422
    )
    assert client.post("/v1/models/m/predict", content="x", headers={"Content-Type": "text/plain"}).status_code == 415


def test_limits(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(max_inputs_per_predict=4, max_body_bytes=30_000)
    trained(client)
    response = client.post("/v1/models/m/predict", json={"inputs": [[0.0] * 8] * 5})
    assert response.status_code == 413 and response.json()["field"] == "inputs"
    response = client.post("/v1/models/m/predict", json={"inputs": [[0.123456789] * 8] * 400})
    assert response.status_code == 413 and "30000 bytes" in response.json()["detail"]
