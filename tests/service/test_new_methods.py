"""POST /updates accepts every registered method by name, runs LwF, SI and DER++, and refuses the hostile spellings."""

import pytest
from fastapi.testclient import TestClient

from tests.service.conftest import blobs, create, post_samples, wait_update


@pytest.mark.parametrize("method", ["lwf", "si+wa", "derpp"])
def test_updates_run_the_new_methods(client: TestClient, method: str) -> None:
    create(client)
    post_samples(client, "m", *blobs(["a", "b"], 8))
    accepted = client.post("/v1/models/m/updates", json={"method": method})
    assert accepted.status_code == 202, accepted.text
    status = wait_update(client, "m", accepted.json()["update_id"])
    assert status["status"] == "succeeded", status
    [listed] = client.get("/v1/models/m/updates").json()["updates"]
    assert listed["method"] == method


def test_hostile_method_names_are_refused(client: TestClient) -> None:
    create(client)
    post_samples(client, "m", *blobs(["a"], 3))
    for method in ("derpp+replay", "si+si", "lwf+replay+wa+wa", "derpp" * 30, "../derpp", "combined"):
        response = client.post("/v1/models/m/updates", json={"method": method})
        assert response.status_code == 422 and response.json()["field"] == "method", (method, response.json())
    assert client.get("/v1/models/m/updates").json()["updates"] == []


def test_derpp_is_refused_without_an_exemplar_memory(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(exemplar_memory=False)
    create(client)
    post_samples(client, "m", *blobs(["a"], 3))
    response = client.post("/v1/models/m/updates", json={"method": "derpp"})
    assert response.status_code == 422 and "CL_EXEMPLAR_MEMORY" in response.json()["detail"]
