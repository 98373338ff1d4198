"""/v1/models."""

from fastapi.testclient import TestClient

from registry import tensors as st
from tests.service.conftest import create, trained


def test_create_list_get_delete(client: TestClient) -> None:
    info = create(client, "digits", classes=["0", 1])
    assert info["classes"] == ["0", "1"] and info["live_version"] is None and info["state"] == "no live version"
    assert (
        client.post("/v1/models", json={"name": "digits", "architecture": "mlp", "input_shape": [8]}).status_code == 409
    )
    assert [m["name"] for m in client.get("/v1/models").json()["models"]] == ["digits"]
    assert client.get("/v1/models/digits").json()["pending"]["labeled"] == 0
    assert client.delete("/v1/models/digits").status_code == 204
    response = client.get("/v1/models/digits")
    assert response.status_code == 404 and response.json() == {
        "detail": "model 'digits' does not exist",
        "field": None,
        "index": None,
    }


def test_invalid_models_are_rejected_with_the_field(client: TestClient) -> None:
    cases = [
        ({"name": "Bad Name", "architecture": "mlp", "input_shape": [8]}, "name"),
        ({"name": "ok", "architecture": "transformer", "input_shape": [8]}, "architecture"),
        ({"name": "ok", "architecture": "mlp", "input_shape": [8], "options": {"depth": 3}}, "options"),
        ({"name": "ok", "architecture": "mlp", "input_shape": [8], "method": "magic"}, "method"),
        ({"name": "ok", "architecture": "mlp", "input_shape": [0]}, "input_shape"),
        ({"name": "ok", "architecture": "mlp", "input_shape": [8], "classes": ["a", "a"]}, "classes"),
        ({"name": "ok", "architecture": "mlp"}, "input_shape"),
    ]
    for body, field in cases:
        response = client.post("/v1/models", json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["field"] == field, (body, response.json())
    assert client.get("/v1/models").json()["models"] == []


def test_weight_import_creates_a_live_version(client: TestClient) -> None:
    trained(client)
    source = client.get("/v1/models/m/versions/1").json()
    assert source["live"]
    from worker.pipeline import load_version

    store = client.app.state.runtime.store  # type: ignore[attr-defined]
    weights = st.dumps(load_version(store, "m", 1).model.state_dict())
    response = client.put("/v1/models/m/weights", content=weights, headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 201, response.text
    assert response.json()["version"] == 2 and response.json()["live"]
    bad = client.put("/v1/models/m/weights", content=b"junk", headers={"Content-Type": "application/octet-stream"})
    assert bad.status_code == 422 and "safetensors" in bad.json()["detail"]
    wrong_type = client.put("/v1/models/m/weights", content=weights, headers={"Content-Type": "application/json"})
    assert wrong_type.status_code == 415
    assert client.get("/v1/models/m").json()["live_version"] == 2
