"""Fixtures and API helpers of the distributed tests: replicas, workers and a store on the suite's redis-server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import torch

from cl_core.models import ModelSpec, build_model
from registry import tensors as st
from registry.redis_store import RedisStore
from tests.distributed.processes import Process, RedisServer, running, start_replica, start_worker, wait_for
from tests.service.conftest import blobs

# updates long enough to overlap and to be caught running, short enough for the suite; one batch per update
WORKER_ENV = {"CL_EPOCHS": "150", "CL_BATCH_SIZE": "16", "CL_LR": "0.01", "CL_MAX_SAMPLES_PER_UPDATE": "1"}
# updates only when asked; the pointer re-read is slow on purpose, so a fast swap proves pub/sub delivered it
REPLICA_ENV = {"CL_POLICY_MIN_SAMPLES_PER_NEW_CLASS": "1000000", "CL_RELOAD_INTERVAL_S": "60", "CL_DEVICE": "cpu"}
SWAP_BOUND_S = 3.0
"""A replica serves a new live version within this many seconds of its promotion (pub/sub; CPU contention)."""


@dataclass
class Cluster:
    redis_url: str
    a: str  # replica A
    b: str  # replica B
    worker: Process
    metrics_port: int
    store: RedisStore


@pytest.fixture(scope="module")
def cluster(session_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two API replicas and one worker process with two pool processes, on a database of their own."""
    url = session_redis.fresh_url()
    logs = tmp_path_factory.mktemp("cluster")
    a, a_url = start_replica(url, logs / "a", log=logs / "a.log", **REPLICA_ENV)
    b, b_url = start_replica(url, logs / "b", log=logs / "b.log", **REPLICA_ENV)
    worker, port = start_worker(url, log=logs / "worker.log", concurrency=2, env=WORKER_ENV)
    store = RedisStore(url)
    try:
        with running(a, b, worker):
            yield Cluster(url, a_url, b_url, worker, port, store)
    finally:
        store.close()


# -- the API, as a client uses it -----------------------------------------------------------------------------------


def create_model(url: str, name: str, classes: tuple[str, ...] = ()) -> None:
    body = {"name": name, "architecture": "mlp", "input_shape": [8], "options": {"hidden": [16]}, "classes": classes}
    response = httpx.post(f"{url}/v1/models", json=body, timeout=30)
    assert response.status_code == 201, response.text


def import_weights(url: str, name: str, classes: list[str]) -> int:
    """A first live version without training: weights of a fresh model of the right shape."""
    model = build_model(ModelSpec("mlp", (8,), classes, {"hidden": [16]}), seed=0)
    body, headers = st.dumps(model.state_dict()), {"content-type": "application/octet-stream"}
    response = httpx.put(f"{url}/v1/models/{name}/weights", content=body, headers=headers, timeout=30)
    assert response.status_code == 201, response.text
    version: int = response.json()["version"]
    return version


def post_samples(url: str, name: str, classes: list[str], n: int = 30, seed: int = 0) -> dict[str, Any]:
    x, y = blobs(classes, n, seed=seed)
    samples = [{"input": xi, "label": yi} for xi, yi in zip(x, y, strict=True)]
    response = httpx.post(f"{url}/v1/models/{name}/samples", json={"samples": samples}, timeout=30)
    assert response.status_code == 202, response.text
    answer: dict[str, Any] = response.json()
    return answer


def request_update(url: str, name: str) -> str:
    response = httpx.post(f"{url}/v1/models/{name}/updates", json={}, timeout=30)
    assert response.status_code == 202, response.text
    update_id: str = response.json()["update_id"]
    return update_id


def update_status(url: str, name: str, update_id: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/v1/models/{name}/updates/{update_id}", timeout=30)
    assert response.status_code == 200, response.text
    status: dict[str, Any] = response.json()
    return status


def wait_update(url: str, name: str, update_id: str, timeout: float = 120) -> dict[str, Any]:
    status: dict[str, Any] = wait_for(
        lambda: (
            (s := update_status(url, name, update_id))["status"]
            in ("succeeded", "failed", "rejected", "cancelled", "skipped")
            and s
        ),
        timeout=timeout,
        what=f"update {update_id} of {name}",
        interval=0.1,
    )
    return status


def served(url: str, name: str) -> int | None:
    """The version a replica serves now (from its /readyz)."""
    try:
        response = httpx.get(f"{url}/readyz", timeout=5)
    except httpx.HTTPError:
        return None
    version = response.json().get("models", {}).get(name) if response.status_code == 200 else None
    return None if version is None else int(version)


def wait_served(url: str, name: str, version: int, timeout: float = SWAP_BOUND_S) -> float:
    """Seconds until ``url`` serves ``version`` of ``name`` (AssertionError after ``timeout``)."""
    started = time.monotonic()
    wait_for(lambda: served(url, name) == version, timeout=timeout, what=f"{url} serving {name} v{version}")
    return time.monotonic() - started


def predict(url: str, name: str) -> httpx.Response:
    x, _ = blobs(["a"], 1, seed=99)
    return httpx.post(f"{url}/v1/models/{name}/predict", json={"inputs": x}, timeout=10)


def metrics(url: str) -> str:
    return httpx.get(f"{url}/metrics", timeout=10).text


def samples_tensor(classes: list[str], n: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    x, y = blobs(classes, n, seed=seed)
    return torch.tensor(x), list(y)
