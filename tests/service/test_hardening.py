"""Idempotency, deletion and retention, backpressure and quotas, export/import, audit (embedded mode)."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from service.runtime import enforce_retention
from tests.service.conftest import blobs, create, post_samples, trained, wait_update


def samples_body(classes: list[str], n: int, seed: int = 0) -> dict[str, object]:
    x, y = blobs(classes, n, seed=seed)
    return {"samples": [{"input": v, "label": t} for v, t in zip(x, y, strict=True)]}


def test_retried_samples_with_an_idempotency_key_are_stored_once(client: TestClient) -> None:
    create(client)
    body, headers = samples_body(["a"], 5), {"Idempotency-Key": "req-1"}
    first = client.post("/v1/models/m/samples", json=body, headers=headers)
    again = client.post("/v1/models/m/samples", json=body, headers=headers)
    assert first.status_code == again.status_code == 202 and first.json() == again.json()
    assert client.get("/v1/models/m").json()["pending"]["per_class"] == {"a": 5}
    other = client.post("/v1/models/m/samples", json=samples_body(["a"], 5, seed=1), headers=headers)
    assert other.status_code == 422 and other.json()["field"] == "Idempotency-Key"
    assert client.post("/v1/models/m/samples", json=body).json()["ids"] != first.json()["ids"]  # no key: stored


def test_retried_update_requests_start_one_update(client: TestClient) -> None:
    create(client)
    post_samples(client, "m", *blobs(["a"], 5))
    headers = {"Idempotency-Key": "upd-1"}
    first = client.post("/v1/models/m/updates", json={}, headers=headers).json()
    again = client.post("/v1/models/m/updates", json={}, headers=headers).json()
    assert first["update_id"] == again["update_id"]
    wait_update(client, "m", first["update_id"])
    after = client.post("/v1/models/m/updates", json={}, headers=headers)  # pending is empty now, yet same answer
    assert after.status_code == 202 and after.json()["update_id"] == first["update_id"]
    assert len(client.get("/v1/models/m/updates").json()["updates"]) == 1


def test_deleting_samples_removes_them_from_training_and_exemplar_memory(client: TestClient) -> None:
    trained(client)
    versions = client.get("/v1/models/m/versions").json()["versions"]
    assert versions[0]["hyperparameters"]["memory"] is not None
    posted = post_samples(client, "m", *blobs(["a"], 4, seed=5))
    store = client.app.state.runtime.store  # type: ignore[attr-defined]
    from worker.pipeline import load_version

    in_memory = [str(int(i)) for i in load_version(store, "m", 1).learner_state["memory.ids"].tolist()[:3]]
    answer = client.post("/v1/models/m/samples/delete", json={"ids": [*posted["ids"][:2], *in_memory]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["exemplars_removed"] == 3 and answer.json()["versions_scrubbed"] == 1
    assert client.get("/v1/models/m").json()["pending"]["labeled"] == 4 - 2 - posted["held_out"]
    kept = set(load_version(store, "m", 1).learner_state["memory.ids"].tolist())
    assert not kept & {int(i) for i in in_memory}
    assert 'cl_samples_dropped_total{model="m",reason="deleted"}' in client.get("/metrics").text


def test_deleting_a_model_leaves_nothing_behind(client: TestClient, tmp_path) -> None:  # type: ignore[no-untyped-def]
    trained(client)
    root = client.app.state.runtime.store.root  # type: ignore[attr-defined]
    assert (root / "models" / "m").exists()
    assert client.delete("/v1/models/m").status_code == 204
    assert not any(p.name.endswith("m") or "-m-" in p.name for p in (root / "models").iterdir())
    assert client.post("/v1/models/m/predict", json={"inputs": [[0.0] * 8]}).status_code == 404


def test_retention_bounds_raw_data_and_counts_what_it_drops(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(retention_max_samples=10)
    trained(client)
    runtime = client.app.state.runtime
    dropped = enforce_retention(runtime)
    # the 18 held-out samples (6 per class) are in the held-out store, which retention never touches; of the other
    # 72, the newest 10 survive
    assert dropped == {"m": 90 - 18 - 10}
    assert 'cl_samples_dropped_total{model="m",reason="retention"} 62.0' in client.get("/metrics").text
    assert len(runtime.store.experience_samples("m", 1)) == 18


def test_queues_and_buffers_are_bounded(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(
        max_pending_samples=10, max_queued_updates=1, epochs=1000, policy_min_samples_per_new_class=1000
    )
    create(client)
    too_many = client.post("/v1/models/m/samples", json=samples_body(["a"], 11))
    assert too_many.status_code == 429 and "Retry-After" in too_many.headers
    assert client.get("/v1/models/m").json()["pending"]["per_class"] == {}
    post_samples(client, "m", *blobs(["a", "b"], 5))
    running = client.post("/v1/models/m/updates", json={}).json()["update_id"]
    deadline = time.monotonic() + 30
    while client.get(f"/v1/models/m/updates/{running}").json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    waiting = client.post("/v1/models/m/updates", json={})  # queued behind it
    assert waiting.status_code == 202
    full = client.post("/v1/models/m/updates", json={})
    assert full.status_code == 429 and full.headers["Retry-After"]
    client.delete(f"/v1/models/m/updates/{waiting.json()['update_id']}")  # the queue drains…
    again = client.post("/v1/models/m/updates", json={})  # …and requests are accepted again
    assert again.status_code == 202
    for update_id in (running, again.json()["update_id"]):
        client.delete(f"/v1/models/m/updates/{update_id}")


@pytest.mark.parametrize("backend", ["local", "redis"])
def test_parallel_update_requests_never_exceed_the_queue_limit(make_client, request, backend) -> None:  # type: ignore[no-untyped-def]
    """20 POST /updates at once with a limit of 8: exactly 8 are queued, the other 12 get 429 with Retry-After."""
    extra = {"redis_url": request.getfixturevalue("redis_url")} if backend == "redis" else {}
    client = make_client(max_queued_updates=8, policy_min_samples_per_new_class=1000, **extra)
    create(client)
    post_samples(client, "m", *blobs(["a", "b"], 5))
    store = client.app.state.runtime.store
    token = store.acquire_update_lock("m", "test", ttl_s=600)  # no update starts: every accepted one stays queued
    assert token is not None
    barrier = threading.Barrier(20)

    def post(_: int) -> tuple[int, str | None]:
        barrier.wait()
        response = client.post("/v1/models/m/updates", json={})
        return response.status_code, response.headers.get("Retry-After")

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(post, range(20)))
    assert sorted(code for code, _ in answers) == [202] * 8 + [429] * 12
    assert all(retry for code, retry in answers if code == 429)
    statuses = [u["status"] for u in client.get("/v1/models/m/updates").json()["updates"]]
    assert statuses == ["queued"] * 8
    store.release_update_lock("m", token)


def test_per_key_rate_limit(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(rate_limit_per_s=0.5, rate_limit_burst=2)
    assert client.get("/v1/models").status_code == 200
    assert client.get("/v1/models").status_code == 200
    limited = client.get("/v1/models")
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert client.get("/healthz").status_code == 200  # open endpoints are not limited


def test_export_then_import_serves_the_same_predictions(make_client) -> None:  # type: ignore[no-untyped-def]
    source, target = make_client(), make_client()
    trained(source)
    archive = source.get("/v1/models/m/export")
    assert archive.status_code == 200 and archive.headers["content-type"] == "application/zip"
    imported = target.post(
        "/v1/models/import?name=copy", content=archive.content, headers={"Content-Type": "application/zip"}
    )
    assert imported.status_code == 201, imported.text
    assert imported.json()["live_version"] == 1
    probe = {"inputs": blobs(["a", "b", "c"], 3, seed=7)[0]}
    assert (
        source.post("/v1/models/m/predict", json=probe).json()["predictions"]
        == target.post("/v1/models/copy/predict", json=probe).json()["predictions"]
    )
    assert (
        target.get("/v1/models/copy/metrics").json()["held_out_samples"]
        == source.get("/v1/models/m/metrics").json()["held_out_samples"]
    )
    bad = target.post("/v1/models/import", content=b"not a zip", headers={"Content-Type": "application/zip"})
    assert bad.status_code == 422


def test_state_changes_are_audited_with_key_names_never_keys(make_client, caplog) -> None:  # type: ignore[no-untyped-def]
    key = "k" * 24
    client = make_client(api_keys={key: "admin"})
    headers = {"Authorization": f"Bearer {key}"}
    with caplog.at_level(logging.INFO, logger="cl.audit"):
        body = {"name": "m", "architecture": "mlp", "input_shape": [8], "options": {"hidden": [8]}}
        assert client.post("/v1/models", json=body, headers=headers).status_code == 201
        client.post("/v1/models/m/samples", json=samples_body(["a"], 25), headers=headers)
        client.delete("/v1/models/m", headers=headers)
    events = [json.loads(r.getMessage()) for r in caplog.records if r.name == "cl.audit"]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "model.created" and "samples.accepted" in kinds and kinds[-1] == "model.deleted"
    assert all(e["actor"] is None or not str(e["actor"]).startswith(key[:8]) for e in events)
    assert any(str(e["actor"]).startswith("key-") for e in events)
    assert key not in io.StringIO(caplog.text).getvalue()


@pytest.mark.parametrize("path", ["/v1/models/m/samples", "/v1/models/m/updates"])
def test_idempotency_keys_are_validated(client: TestClient, path: str) -> None:
    create(client)
    body = samples_body(["a"], 1) if path.endswith("samples") else {}
    response = client.post(path, json=body, headers={"Idempotency-Key": "x" * 201})
    assert response.status_code == 422 and response.json()["field"] == "Idempotency-Key"
