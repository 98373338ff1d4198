"""Issue 13 through the API: label screening and the quarantine, the relabel flag, class growth bounds, waiting
classes, forced promotion, imported weights judged by the gate (embedded mode, separable synthetic data)."""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import torch
from fastapi.testclient import TestClient

from cl_core.models import ModelSpec, build_model
from registry import tensors as st
from tests.service.conftest import blobs, create, post_samples, wait_update

TRAIN, ADMIN = "t" * 16, "a" * 16
KEYS = {TRAIN: "train", ADMIN: "admin"}
AS_TRAIN = {"Authorization": f"Bearer {TRAIN}"}
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}


def body(inputs: list[Any], labels: list[Any], **extra: Any) -> dict[str, Any]:
    return {"samples": [{"input": x, "label": y} for x, y in zip(inputs, labels, strict=True)], **extra}


def live_with(client: TestClient, classes: tuple[str, ...] = ("a", "b", "c"), n: int = 60) -> None:
    """A model "m" serving a first version of ``classes`` (n per class: 12 held out each, enough to screen).  The
    client sends the admin key unless a request names another."""
    client.headers.update(AS_ADMIN)
    client.post(
        "/v1/models",
        json={"name": "m", "architecture": "mlp", "input_shape": [8], "options": {"hidden": [16]}},
        headers=AS_ADMIN,
    ).raise_for_status()
    x, y = blobs(list(classes), n)
    answer = client.post("/v1/models/m/samples", json=body(x, y), headers=AS_TRAIN).json()
    status = wait_update(client, "m", answer["update_id"])
    assert status["status"] == "succeeded", status


def test_class_growth_is_bounded_and_a_rejected_request_stores_nothing(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(max_classes=6, max_new_classes_per_request=3)
    too_many = {"name": "x", "architecture": "mlp", "input_shape": [8], "classes": [str(i) for i in range(7)]}
    refused = client.post("/v1/models", json=too_many)
    assert refused.status_code == 422 and refused.json()["field"] == "classes"
    create(client, classes=["a"])
    x, _ = blobs(["a"], 4)
    four_new = client.post("/v1/models/m/samples", json=body(x, ["b", "c", "d", "e"]))
    assert four_new.status_code == 422 and "at most 3" in four_new.json()["detail"]
    post_samples(client, "m", x[:3], ["b", "c", "d"])  # 4 classes: a known, 3 pending
    beyond = client.post("/v1/models/m/samples", json=body(x[:3], ["e", "f", "g"]))  # 7 > 6
    assert beyond.status_code == 422 and "CL_MAX_CLASSES" in beyond.json()["detail"]
    assert client.get("/v1/models/m").json()["pending"]["per_class"] == {"b": 1, "c": 1, "d": 1}
    post_samples(client, "m", x[:2], ["e", "f"])  # exactly 6: accepted


def test_ten_thousand_new_labels_in_one_post_are_refused(client: TestClient) -> None:
    create(client)
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(10_000, 8)).astype(np.float32).tolist()
    refused = client.post("/v1/models/m/samples", json=body(inputs, [f"c{i}" for i in range(10_000)]))
    assert refused.status_code == 422, refused.text
    assert client.get("/v1/models/m").json()["pending"]["labeled"] == 0


def test_a_stray_label_waits_without_stalling_the_ready_classes(client: TestClient) -> None:
    create(client)
    x, y = blobs(["a", "b"], 30)
    stray_x, _ = blobs(["c"], 20, seed=1)
    answer = post_samples(client, "m", [*x, stray_x[0]], [*y, "-5"])
    assert answer["update_id"], "the ready classes start an update"
    status = wait_update(client, "m", answer["update_id"])
    assert status["status"] == "succeeded", status
    info = client.get("/v1/models/m").json()
    assert info["classes"] == ["a", "b"]
    assert info["waiting_classes"] == [{"label": "-5", "samples": 1, "needed": 20}]
    assert info["pending"]["per_class"] == {"-5": 1}
    assert client.get(f"/v1/models/m/versions/{status['version']}").json()["samples"]["waiting_classes"] == [
        {"label": "-5", "samples": 1, "needed": 20}
    ]
    later = post_samples(client, "m", stray_x[1:], ["-5"] * 19)  # now it has 20: learned
    assert wait_update(client, "m", later["update_id"])["status"] in ("succeeded", "rejected")
    info = client.get("/v1/models/m").json()
    assert info["waiting_classes"] == [] and info["pending"]["per_class"] == {}


def test_relabel_needs_the_admin_scope(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(api_keys=KEYS, policy_min_samples_per_new_class=1000)
    client.post(
        "/v1/models", json={"name": "m", "architecture": "mlp", "input_shape": [8]}, headers=AS_ADMIN
    ).raise_for_status()
    x, y = blobs(["a"], 3)
    refused = client.post("/v1/models/m/samples", json=body(x, y, relabel=True), headers=AS_TRAIN)
    assert refused.status_code == 403 and refused.json()["field"] == "relabel"
    assert client.get("/v1/models/m", headers=AS_TRAIN).json()["pending"]["labeled"] == 0
    assert client.post("/v1/models/m/samples", json=body(x, y, relabel=True), headers=AS_ADMIN).status_code == 202
    wrong_type = client.post("/v1/models/m/samples", json=body(x, y, relabel="yes"), headers=AS_ADMIN)
    assert wrong_type.status_code == 422


def test_flips_are_quarantined_listed_released_by_an_admin_and_deletable(make_client, caplog) -> None:  # type: ignore[no-untyped-def]
    client = make_client(api_keys=KEYS, epochs=40)  # a confident live model
    live_with(client)
    more, more_y = blobs(["a", "b", "c"], 50, seed=2)
    flipped = more[:50]  # inputs of "a", posted as "b"
    clean, clean_y = more[100:140], more_y[100:140]  # inputs of "c", posted as "c"
    with caplog.at_level(logging.INFO, logger="cl.audit"):
        answer = client.post(
            "/v1/models/m/samples", json=body([*flipped, *clean], ["b"] * 50 + clean_y), headers=AS_TRAIN
        ).json()
        update_id = (
            answer["update_id"] or client.post("/v1/models/m/updates", json={}, headers=AS_TRAIN).json()["update_id"]
        )
        status = wait_update(client, "m", update_id)
    assert status["status"] in ("succeeded", "rejected"), status
    screening = status["metrics"]["screening"]
    assert screening["quarantined"] == 50, screening
    [pair] = [p for p in screening["pairs"] if p["systematic"]]
    assert (pair["given"], pair["predicted"]) == ("b", "a")
    listed = client.get("/v1/models/m/quarantine", headers=AS_TRAIN).json()["samples"]
    assert len(listed) == 50 and {(s["label"], s["predicted"]) for s in listed} == {("b", "a")}
    assert client.get("/v1/models/m", headers=AS_TRAIN).json()["quarantined"] == 50
    events = [json.loads(r.getMessage()) for r in caplog.records if r.name == "cl.audit"]
    assert any(e["event"] == "samples.quarantined" and e["count"] == 50 for e in events)
    assert 'cl_samples_quarantined_total{model="m"} 50.0' in client.get("/metrics").text

    ids = [s["id"] for s in listed]
    refused = client.post("/v1/models/m/quarantine/release", json={"ids": ids[:2]}, headers=AS_TRAIN)
    assert refused.status_code == 403
    released = client.post(
        "/v1/models/m/quarantine/release", json={"ids": [*ids[:2], "999999"]}, headers=AS_ADMIN
    ).json()
    assert released["released"] == ids[:2]
    assert client.get("/v1/models/m", headers=AS_TRAIN).json()["pending"]["per_class"] == {"b": 2}
    deleted = client.post("/v1/models/m/samples/delete", json={"ids": ids[2:]}, headers=AS_TRAIN).json()
    assert deleted["deleted"] == 48
    assert client.get("/v1/models/m/quarantine", headers=AS_TRAIN).json()["samples"] == []
    assert client.post("/v1/models/m/quarantine/release", json={"ids": []}, headers=AS_ADMIN).status_code == 422


def test_a_rejected_version_is_promoted_only_by_force_and_audited(make_client, caplog) -> None:  # type: ignore[no-untyped-def]
    client = make_client(api_keys=KEYS, max_forgetting=0.0, max_class_drop=0.0, screening=False)
    live_with(client)
    x, y = blobs(["a", "b", "c"], 40, seed=5)
    shifted = {"a": "b", "b": "c", "c": "a"}
    answer = client.post("/v1/models/m/samples", json=body(x, [shifted[v] for v in y]), headers=AS_TRAIN).json()
    update_id = (
        answer["update_id"] or client.post("/v1/models/m/updates", json={}, headers=AS_TRAIN).json()["update_id"]
    )
    status = wait_update(client, "m", update_id)
    assert status["status"] == "rejected", status
    version = status["version"]
    promote = f"/v1/models/m/versions/{version}/promote"
    refused = client.post(promote, headers=AS_ADMIN)
    assert refused.status_code == 409 and "forgetting gate" in refused.json()["detail"]
    assert client.post(promote, json={"force": True}, headers=AS_TRAIN).status_code == 403
    with caplog.at_level(logging.INFO, logger="cl.audit"):
        forced = client.post(promote, json={"force": True}, headers=AS_ADMIN).json()
    assert forced["forced"] and forced["live_version"] == version and "gate failed" in forced["gate"]
    [event] = [json.loads(r.getMessage()) for r in caplog.records if r.name == "cl.audit"]
    assert event["event"] == "version.promoted" and event["forced"] is True and "gate failed" in event["gate"]
    assert client.post(promote, json={"force": "yes"}, headers=AS_ADMIN).status_code == 422


def test_imported_weights_are_judged_by_the_gate_before_going_live(client: TestClient) -> None:
    create(client)
    x, y = blobs(["a", "b", "c"], 60)
    status = wait_update(client, "m", post_samples(client, "m", x, y)["update_id"])
    assert status["status"] == "succeeded"
    spec = ModelSpec("mlp", (8,), ["a", "b", "c"], {"hidden": [16]})
    untrained = st.dumps(build_model(spec, seed=123).state_dict())
    answer = client.put(
        "/v1/models/m/weights", content=untrained, headers={"Content-Type": "application/octet-stream"}
    ).json()
    assert answer["status"] == "rejected" and not answer["live"], answer
    assert answer["metrics"]["gate"]["passed"] is False
    assert client.get("/v1/models/m").json()["live_version"] == 1
    good = st.dumps({k: v + 0 * torch.rand_like(v) for k, v in _weights(client, 1).items()})
    same = client.put("/v1/models/m/weights", content=good, headers={"Content-Type": "application/octet-stream"})
    assert same.json()["live"] and same.json()["status"] == "live"


def _weights(client: TestClient, version: int) -> dict[str, torch.Tensor]:
    store = client.app.state.runtime.store  # type: ignore[attr-defined]
    return st.loads(store.read_weights("m", version))
