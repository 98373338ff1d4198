"""/v1/models/{name}/samples."""

from fastapi.testclient import TestClient

from tests.service.conftest import blobs, create, post_samples, trained, wait_update


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


def test_defer_update_leaves_the_policy_to_the_last_request(client: TestClient) -> None:
    create(client)
    x, y = blobs(["a", "b"], 30)
    samples = [{"input": xi, "label": yi} for xi, yi in zip(x, y, strict=True)]
    # each part alone has enough samples of every new class for the policy; deferred, none starts an update
    for part in (samples[:20] + samples[30:50], samples[20:30] + samples[50:55]):
        response = client.post("/v1/models/m/samples", params={"defer_update": "true"}, json={"samples": part})
        assert response.status_code == 202, response.text
        assert response.json()["update_id"] is None
    assert client.get("/v1/models/m/updates").json()["updates"] == []
    last = client.post("/v1/models/m/samples", params={"defer_update": "false"}, json={"samples": samples[55:]})
    assert last.status_code == 202 and last.json()["update_id"] is not None
    status = wait_update(client, "m", last.json()["update_id"])
    assert status["status"] == "succeeded", status
    (update,) = client.get("/v1/models/m/updates").json()["updates"]
    assert update["update_id"] == last.json()["update_id"]
    version = client.get(f"/v1/models/m/versions/{status['version']}").json()
    assert version["samples"]["labeled"] + version["samples"]["held_out"] == 60  # all three requests, one update


def test_a_bad_defer_flag_stores_nothing(client: TestClient) -> None:
    create(client)
    x, y = blobs(["a"], 2)
    body = {"samples": [{"input": xi, "label": yi} for xi, yi in zip(x, y, strict=True)]}
    for value in ("maybe", "", "2", "[true]", "true" * 1000):
        response = client.post("/v1/models/m/samples", params={"defer_update": value}, json=body)
        assert response.status_code == 422, (value, response.text)
        assert response.json()["field"] == "defer_update", response.json()
    assert client.get("/v1/models/m").json()["pending"]["labeled"] == 0


def test_an_idempotency_key_reused_with_another_defer_flag_is_refused(client: TestClient) -> None:
    create(client)
    x, y = blobs(["a"], 2)
    body = {"samples": [{"input": xi, "label": yi} for xi, yi in zip(x, y, strict=True)]}
    headers = {"Idempotency-Key": "batch-1"}
    first = client.post("/v1/models/m/samples", params={"defer_update": "true"}, json=body, headers=headers)
    assert first.status_code == 202, first.text
    again = client.post("/v1/models/m/samples", params={"defer_update": "true"}, json=body, headers=headers)
    assert again.json() == first.json()
    other = client.post("/v1/models/m/samples", json=body, headers=headers)
    assert other.status_code == 422 and other.json()["field"] == "Idempotency-Key", other.text
    pending = client.get("/v1/models/m").json()["pending"]
    assert pending["labeled"] + pending["held_out"] == 2  # stored once


def test_classes_are_listed_in_natural_order(client: TestClient) -> None:
    create(client, dim=11)
    labels = [10, 3, 0, 7, 1, 9, 2, 8, 4, 6, 5]  # arrival order: the head grows in natural order regardless
    x, y = blobs([str(label) for label in labels], 25, dim=11)
    answer = post_samples(client, "m", x, y)
    natural = [str(i) for i in range(11)]
    assert answer["new_classes"] == natural
    assert client.get("/v1/models/m").json()["pending_new_classes"] == natural
    status = wait_update(client, "m", answer["update_id"])
    assert status["status"] == "succeeded", status
    assert client.get("/v1/models/m").json()["classes"] == natural
    assert client.get("/v1/models").json()["models"][0]["classes"] == natural
    assert client.get("/v1/models/m/versions/1").json()["classes"] == natural
    assert list(client.get("/v1/models/m/metrics").json()["per_class_accuracy"]) == natural
