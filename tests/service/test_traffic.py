"""The production data loop through the API: captured predictions, feedback, MAS from traffic, deletion, drift."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from cl_core.importance import mas_importance
from cl_core.learner import Learner
from registry import LocalStore, ModelRecord
from registry import tensors as st
from registry.captures import CaptureConfig
from service.capture import CaptureMetrics, TrafficCapture
from service.runtime import Runtime
from service.settings import Settings
from tests.service.conftest import blobs, create, post_samples, wait_update
from worker.pipeline import run_update

CLASSES = ("a", "b", "c")
CAPTURE_ALL = {"rate": 1.0, "max_samples": 1000}


@pytest.fixture(params=["local", "redis"])
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    return {"redis_url": request.getfixturevalue("redis_url")} if request.param == "redis" else {}


def runtime_of(client: TestClient) -> Runtime:
    runtime: Runtime = client.app.state.runtime  # type: ignore[attr-defined]
    return runtime


def finish(client: TestClient, update_id: str) -> dict[str, Any]:
    """The update's end: run by the embedded executor, or here when the executor is Celery (no worker runs in
    these tests: the Redis backend is exercised through the same pipeline, in this process)."""
    runtime = runtime_of(client)
    if runtime.settings.redis_url:
        run_update(runtime.store, "m", update_id, runtime.settings)
        runtime.server.refresh("m")
    status = wait_update(client, "m", update_id)
    runtime.server.refresh("m")
    return status


def update(client: TestClient) -> dict[str, Any]:
    response = client.post("/v1/models/m/updates", json={})
    assert response.status_code == 202, response.text
    return finish(client, response.json()["update_id"])


def serving(client: TestClient, per_class: int = 60, **fields: Any) -> None:
    """Model "m" with a live first version trained on blobs of three classes (a fifth of them held out)."""
    create(client, "m", **fields)
    answer = post_samples(client, "m", *blobs(list(CLASSES), per_class))
    status = finish(client, answer["update_id"]) if answer["update_id"] else update(client)
    assert status["status"] == "succeeded", status


def predict(client: TestClient, inputs: list[list[float]]) -> list[dict[str, Any]]:
    response = client.post("/v1/models/m/predict", json={"inputs": inputs})
    assert response.status_code == 200, response.text
    runtime_of(client).capture.flush()
    predictions: list[dict[str, Any]] = response.json()["predictions"]
    return predictions


def capture_on(client: TestClient, setting: dict[str, Any] = CAPTURE_ALL) -> dict[str, Any]:
    response = client.patch("/v1/models/m", json={"capture": setting})
    assert response.status_code == 200, response.text
    info: dict[str, Any] = response.json()
    return info


def test_capture_off_stores_nothing_and_answers_no_ids(make_client: Callable[..., TestClient], backend: dict) -> None:
    client = make_client(**backend)
    serving(client)
    x, _ = blobs(list(CLASSES), 5, seed=1)
    assert all("id" not in p for p in predict(client, x))
    capture_on(client, {"rate": 0, "max_samples": 10})  # rate 0: nothing new is captured either
    assert all("id" not in p for p in predict(client, x))
    info = client.get("/v1/models/m").json()
    assert info["captured"] == {"stored": 0, "pending": 0} and info["pending"]["unlabeled"] == 0
    assert runtime_of(client).store.capture_counts("m").offered == 0


def test_captured_predictions_carry_ids_and_show_as_unlabeled_pending_samples(
    make_client: Callable[..., TestClient], backend: dict
) -> None:
    client = make_client(**backend)
    serving(client)
    info = capture_on(client)
    assert info["capture"] == CAPTURE_ALL
    x, _ = blobs(list(CLASSES), 4, seed=1)
    ids = [p["id"] for p in predict(client, x)]
    assert len(set(ids)) == 12 and all(i.isdigit() for i in ids)
    info = client.get("/v1/models/m").json()
    assert info["captured"] == {"stored": 12, "pending": 12}
    assert (info["pending"]["unlabeled"], info["pending"]["labeled"]) == (12, 0)
    deleted = client.post("/v1/models/m/samples/delete", json={"ids": ids[:2]}).json()
    assert deleted["deleted"] == 2
    assert client.get("/v1/models/m").json()["captured"]["stored"] == 10
    # capture off: the reservoir is emptied, new predictions carry no id
    assert client.patch("/v1/models/m", json={"capture": None}).json()["captured"] == {"stored": 0, "pending": 0}
    assert all("id" not in p for p in predict(client, x))


def test_captured_inputs_are_the_mas_importance_of_the_next_update(
    make_client: Callable[..., TestClient], backend: dict
) -> None:
    client = make_client(**backend)
    serving(client)
    store = runtime_of(client).store
    parent = store.live_version("m")
    assert parent is not None
    capture_on(client)
    x, _ = blobs(list(CLASSES), 10, seed=2)
    predict(client, x)
    status = update(client)
    assert status["status"] == "succeeded", status
    child = store.get_version("m", status["version"])
    assert (child.samples["captured"], child.samples["unlabeled"], child.samples["labeled"]) == (30, 30, 0)
    assert store.capture_counts("m").pending == 0 and store.capture_counts("m").stored == 30

    def companion(version: int) -> Learner:
        learner = Learner.from_hparams(store.get_version("m", version).learner)
        learner.load_state_dict(st.loads(store.read_state("m", version)))
        return learner

    before, after = companion(parent).unlabeled, companion(child.version).unlabeled
    assert before is not None and after is not None
    assert (before.seen_samples, after.seen_samples) == (0, 30)
    # the weights did not change (nothing labeled), so the importance is exactly MAS on the captured inputs
    model = runtime_of(client).server.current("m")
    assert model is not None and model.version == child.version
    expected = mas_importance(model.model, torch.tensor(x))
    for name, omega in expected.items():
        torch.testing.assert_close(after.importance[name], omega, rtol=1e-4, atol=1e-8)


def test_feedback_labels_captures_once_and_reports_each_item(
    make_client: Callable[..., TestClient], backend: dict
) -> None:
    client = make_client(policy_min_samples_per_new_class=1000, **backend)
    serving(client)
    capture_on(client)
    x, y = blobs(list(CLASSES), 3, seed=3)
    ids = [p["id"] for p in predict(client, x)]
    items = [{"id": i, "label": label} for i, label in zip(ids, y, strict=True)]
    answer = client.post("/v1/models/m/feedback", json={"items": [*items[:5], {"id": "999999999", "label": "a"}]})
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["accepted"] == 5 and body["new_classes"] == []
    assert [r["status"] for r in body["results"]] == ["accepted"] * 5 + ["unknown"]
    assert body["results"][-1]["detail"].startswith("no captured input")
    again = client.post("/v1/models/m/feedback", json={"items": [items[0], items[5]]}).json()
    assert [r["status"] for r in again["results"]] == ["answered", "accepted"]
    info = client.get("/v1/models/m").json()
    assert info["pending"]["labeled"] + info["pending"]["held_out"] == 6
    assert info["captured"] == {"stored": 3, "pending": 3}
    claim = runtime_of(client).store.claim("m")
    assert sorted(claim.ids, key=int) == sorted(ids[:6], key=int)
    assert np.allclose(claim.train.inputs.numpy(), np.array([x[ids.index(i)] for i in claim.train.ids]), atol=1e-6)


def test_feedback_is_screened_like_any_labeled_data(make_client: Callable[..., TestClient]) -> None:
    client = make_client(policy_min_samples_per_new_class=1000)
    serving(client)
    capture_on(client)
    x, _ = blobs(["a"], 30, seed=4)  # 30 inputs of class a…
    ids = [p["id"] for p in predict(client, x)]
    flipped = client.post("/v1/models/m/feedback", json={"items": [{"id": i, "label": "b"} for i in ids]})
    assert flipped.json()["accepted"] == 30  # …labeled b by the feedback: a systematic flip
    status = update(client)
    quarantined = {s["id"] for s in client.get("/v1/models/m/quarantine").json()["samples"]}
    assert quarantined <= set(ids) and len(quarantined) == 30, (len(quarantined), status)
    assert status["status"] == "rejected" and "flip" in status["error"], status  # nothing else to learn


def test_deleting_a_captured_sample_after_feedback_and_an_update_scrubs_the_exemplar_memory(
    make_client: Callable[..., TestClient], backend: dict
) -> None:
    client = make_client(policy_min_samples_per_new_class=1000, **backend)
    serving(client)
    capture_on(client)
    x, y = blobs(list(CLASSES), 10, seed=5)
    ids = [p["id"] for p in predict(client, x)]
    client.post("/v1/models/m/feedback", json={"items": [{"id": i, "label": c} for i, c in zip(ids, y, strict=True)]})
    status = update(client)
    assert status["status"] == "succeeded", status
    store = runtime_of(client).store

    def memory_ids() -> set[str]:
        version = store.live_version("m")
        assert version is not None
        learner = Learner.from_hparams(store.get_version("m", version).learner)
        learner.load_state_dict(st.loads(store.read_state("m", version)))
        assert learner.memory is not None
        return {str(int(i)) for i in learner.memory.ids.tolist()}

    remembered = sorted(memory_ids() & set(ids), key=int)
    assert remembered, "the update put none of the labeled captures in the exemplar memory"
    deleted = client.post("/v1/models/m/samples/delete", json={"ids": remembered}).json()
    assert deleted["exemplars_removed"] >= len(remembered)
    assert not memory_ids() & set(remembered)


def test_the_drift_report_and_metrics_follow_the_traffic(make_client: Callable[..., TestClient]) -> None:
    client = make_client(drift_window=60, drift_every=60, drift_interval_s=0)
    serving(client, per_class=100)  # 60 held-out samples: the reference
    assert client.get("/v1/models/m/drift").json()["status"] == "off"
    capture_on(client)
    runtime = runtime_of(client)
    x, _ = blobs(list(CLASSES), 20, seed=6)
    predict(client, x)
    runtime.drift.settle()
    report = client.get("/v1/models/m/drift").json()
    assert report["status"] == "monitoring" and report["reference_samples"] == 60, report
    [first] = report["windows"]
    assert first["inputs"] == 60 and not first["detected"], first
    assert set(first["class_shares"]) == set(CLASSES)
    rng = np.random.default_rng(7)
    shifted = (np.array(x) + rng.normal(0, 3, (60, 8))).astype(np.float32)  # noise of ten times the spread
    predict(client, shifted.tolist())
    runtime.drift.settle()
    report = client.get("/v1/models/m/drift").json()
    assert len(report["windows"]) == 2 and report["windows"][0]["detected"], report["windows"][0]
    metrics = client.get("/metrics").text
    assert 'cl_input_drift_detected{model="m"} 1.0' in metrics
    assert 'cl_input_drift_score{model="m"}' in metrics and 'cl_prediction_class_share{class="a",model="m"}' in metrics


def test_drift_with_enough_feedback_starts_an_update_when_the_policy_says_so(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(
        drift_window=60,
        drift_every=60,
        drift_interval_s=0,
        policy_drift_feedback=5,
        policy_min_samples_per_new_class=1000,
    )
    serving(client, per_class=100)
    capture_on(client)
    runtime = runtime_of(client)
    x, y = blobs(list(CLASSES), 20, seed=8)
    shifted = (np.array(x) + np.random.default_rng(9).normal(0, 3, (60, 8))).astype(np.float32).tolist()
    ids = [p["id"] for p in predict(client, shifted)]
    runtime.drift.settle()
    assert runtime.drift.drifting("m")
    items = [{"id": i, "label": c} for i, c in zip(ids[:4], y[:4], strict=True)]
    assert client.post("/v1/models/m/feedback", json={"items": items}).json()["update_id"] is None  # 4 < 5
    more = [{"id": i, "label": c} for i, c in zip(ids[4:6], y[4:6], strict=True)]
    update_id = client.post("/v1/models/m/feedback", json={"items": more}).json()["update_id"]
    assert update_id is not None
    assert "input drift" in client.get(f"/v1/models/m/updates/{update_id}").json()["reason"]


# -- hostile input ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "capture",
    [
        {"rate": -0.1, "max_samples": 10},
        {"rate": 1.01, "max_samples": 10},
        {"rate": "0.5", "max_samples": 10},
        {"rate": True, "max_samples": 10},
        {"rate": 0.5, "max_samples": 0},
        {"rate": 0.5, "max_samples": -5},
        {"rate": 0.5, "max_samples": 10**30},
        {"rate": 0.5, "max_samples": 100_001},
        {"rate": 0.5, "max_samples": 2.5},
        {"rate": 0.5},
        {"rate": 0.5, "max_samples": 10, "extra": 1},
        [0.5, 10],
        "on",
    ],
)
def test_hostile_capture_settings_are_refused_and_change_nothing(client: TestClient, capture: object) -> None:
    create(client, "m")
    assert client.patch("/v1/models/m", json={"capture": capture}).status_code == 422
    assert client.get("/v1/models/m").json()["capture"] is None
    body = {"name": "n", "architecture": "mlp", "input_shape": [8], "capture": capture}
    assert client.post("/v1/models", json=body).status_code == 422
    assert client.get("/v1/models/n").status_code == 404


def test_hostile_patches_are_refused(make_client: Callable[..., TestClient]) -> None:
    keys = {"admin-key-0123456789": "admin", "train-key-0123456789": "train"}
    client = make_client(api_keys=keys)
    admin = {"Authorization": "Bearer admin-key-0123456789"}
    train = {"Authorization": "Bearer train-key-0123456789"}
    create_body = {"name": "m", "architecture": "mlp", "input_shape": [8]}
    assert client.post("/v1/models", json=create_body, headers=admin).status_code == 201
    assert client.patch("/v1/models/m", json={"capture": CAPTURE_ALL}, headers=train).status_code == 403
    assert client.patch("/v1/models/m", json={}, headers=admin).status_code == 422
    assert client.patch("/v1/models/m", json={"name": "x"}, headers=admin).status_code == 422
    assert client.patch("/v1/models/nope", json={"capture": CAPTURE_ALL}, headers=admin).status_code == 404
    assert client.patch("/v1/models/..%2Fetc", json={"capture": CAPTURE_ALL}, headers=admin).status_code in (404, 422)
    nan = b'{"capture": {"rate": NaN, "max_samples": 10}}'
    response = client.patch("/v1/models/m", content=nan, headers={**admin, "Content-Type": "application/json"})
    assert response.status_code == 422
    assert client.get("/v1/models/m", headers=admin).json()["capture"] is None


@pytest.mark.parametrize(
    ("items", "status"),
    [
        ([], 422),
        ([{"id": "../../etc/passwd", "label": "a"}], 422),
        ([{"id": "0", "label": "a"}], 422),
        ([{"id": "-1", "label": "a"}], 422),
        ([{"id": str(2**63), "label": "a"}], 422),
        ([{"id": 5, "label": "a"}], 422),
        ([{"id": "1" * 300, "label": "a"}], 422),
        ([{"id": "5", "label": None}], 422),
        ([{"id": "5", "label": True}], 422),
        ([{"id": "5", "label": "x" * 65}], 422),
        ([{"id": "5", "label": {"a": 1}}], 422),
        ([{"id": "5", "label": "a", "extra": 1}], 422),
        ([{"id": "5", "label": "a"}, {"id": "5", "label": "b"}], 422),
        ([{"id": "5"}], 422),
    ],
)
def test_hostile_feedback_is_refused_and_stores_nothing(client: TestClient, items: list[Any], status: int) -> None:
    create(client, "m")
    response = client.post("/v1/models/m/feedback", json={"items": items})
    assert response.status_code == status, response.text
    assert len(response.json()["detail"]) <= 1000
    info = client.get("/v1/models/m").json()
    assert info["pending"]["labeled"] == 0 and info["pending"]["held_out"] == 0


def test_feedback_beyond_the_request_limit_or_for_an_unknown_model_is_refused(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(max_samples_per_request=3)
    create(client, "m")
    items = [{"id": str(i), "label": "a"} for i in range(1, 5)]
    assert client.post("/v1/models/m/feedback", json={"items": items}).status_code == 413
    assert client.post("/v1/models/nope/feedback", json={"items": items[:1]}).status_code == 404
    assert client.get("/v1/models/nope/drift").status_code == 404
    assert client.get("/v1/models/BAD/drift").status_code == 422


def test_a_full_queue_or_no_reserved_id_drops_captures_without_touching_the_store(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.create_model(ModelRecord(name="m", architecture="mlp", input_shape=[3], classes=["a"]))
    registry = CollectorRegistry()
    capture = TrafficCapture(store, CaptureMetrics(registry), queue_limit=5, id_block=8)  # no writer thread
    capture.configure("m", CaptureConfig(1.0, 100))  # reserves a block of 8 ids now
    inputs, probs = torch.rand(3, 3), torch.rand(3, 1)
    first = capture.offer("m", 1, inputs, probs)
    assert first is not None and all(first)
    assert capture.offer("m", 1, inputs, probs) == [None] * 3  # 3 + 3 > 5 queued: dropped
    assert registry.get_sample_value("cl_captures_total", {"model": "m", "outcome": "queue_full"}) == 3
    capture.drain()  # what the writer does: one store call for the model
    assert store.capture_counts("m").stored == 3
    second = capture.offer("m", 1, inputs, probs)
    assert second is not None and sum(i is not None for i in second) == 3
    capture.drain()
    third = capture.offer("m", 1, inputs, probs)  # 8 ids reserved, 6 used: 2 left (the writer would refill)
    assert third is not None and sum(i is not None for i in third) == 2
    assert registry.get_sample_value("cl_captures_total", {"model": "m", "outcome": "no_ids"}) == 1
    assert capture.offer("other", 1, inputs, probs) is None  # capture off: nothing at all


@pytest.mark.parametrize(
    "settings",
    [
        {"drift_permutations": 99},  # 1/100 > CL_DRIFT_ALPHA / 2: could never detect
        {"drift_alpha": 0.0},
        {"drift_alpha": 1.5},
        {"drift_window": 5},
        {"capture_max_samples_limit": 0},
        {"capture_queue_limit": -1},
        {"policy_drift_feedback": -1},
    ],
)
def test_settings_out_of_range_are_refused(tmp_path: Path, settings: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Settings(data_dir=tmp_path, **settings)
