"""/v1/models/{name}/samples."""

from fastapi.testclient import TestClient

from tests.service.conftest import blobs, create, post_samples, trained


def test_samples_are_counted_held_out_and_trigger_the_policy(client: TestClient) -> None:
    create(client)
    x, y = blobs(["a", "b"], 10)
    first = post_samples(client, "m", x, y)
    assert first["accepted"] == 20 and first["labeled"] == 20 and first["held_out"] == 4
    assert first["new_classes"] == ["a", "b"] and first["update_id"] is None and len(first["ids"]) == 20
    unlabeled = post_samples(client, "m", x[:3], [None, None, None])
    assert unlabeled["unlabeled"] == 3 and unlabeled["update_id"] is None
    second = post_samples(client, "m", x, y)  # now every new class has ≥ 20 samples
    assert second["update_id"] is not None
    numbers = post_samples(client, "m", x[:2], [7, 7])
    assert numbers["new_classes"] == ["7"]


def test_bad_samples_store_nothing(client: TestClient) -> None:
    create(client)
    x, _ = blobs(["a"], 4)
    cases = [
        ([{"input": x[0], "label": "a"}, {"input": x[1][:5], "label": "a"}], "input", 1),
        ([{"input": x[0], "label": "a"}, {"input": x[1], "label": True}], "label", 1),
        ([{"input": x[0], "label": ""}], "label", 0),
        ([{"input": x[0], "label": "a", "weight": 2}], "weight", 0),
        ([{"label": "a"}], "input", 0),
        ([{"input": x[0], "label": 1.5}], "label", 0),
    ]
    for samples, field, index in cases:
        response = client.post("/v1/models/m/samples", json={"samples": samples})
        assert response.status_code == 422, (samples, response.text)
        assert (response.json()["field"], response.json()["index"]) == (field, index), response.json()
    assert client.get("/v1/models/m").json()["pending"] == {
        "labeled": 0,
        "unlabeled": 0,
        "held_out": 0,
        "per_class": {},
    }
    assert client.post("/v1/models/zz/samples", json={"samples": [{"input": x[0]}]}).status_code == 404


def test_sample_limits(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(max_samples_per_request=3)
    create(client)
    x, _ = blobs(["a"], 4)
    response = client.post("/v1/models/m/samples", json={"samples": [{"input": v, "label": "a"} for v in x]})
    assert response.status_code == 413 and response.json()["field"] == "samples"


def test_known_classes_are_not_new(client: TestClient) -> None:
    trained(client)
    x, y = blobs(["a", "d"], 2)
    assert post_samples(client, "m", x, y)["new_classes"] == ["d"]
