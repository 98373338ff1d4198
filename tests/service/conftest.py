"""A real application (lifespan, store, executor) per test, driven in-process through TestClient."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

FAST = {"epochs": 10, "batch_size": 16, "lr": 0.01, "device": "cpu", "policy_min_samples_per_new_class": 20}


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        settings = Settings(data_dir=tmp_path / f"store{len(clients)}", **{**FAST, **overrides})
        client = TestClient(create_app(settings))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def app_at(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    """Clients on a data folder of the test's choosing (a store the test filled first, or the same folder again to
    start the service anew)."""
    clients: list[TestClient] = []

    def make(data_dir: Path, **overrides: Any) -> TestClient:
        client = TestClient(create_app(Settings(data_dir=data_dir, **{**FAST, **overrides})))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def blobs(classes: list[str], n: int, dim: int = 8, seed: int = 0) -> tuple[list[list[float]], list[str]]:
    """Separable synthetic data: class k is a blob around the k-th basis direction."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for k, label in enumerate(classes):
        center = np.zeros(dim)
        center[k % dim] = 3.0
        xs.append(center + rng.normal(0, 0.3, (n, dim)))
        ys += [label] * n
    return np.concatenate(xs).astype(np.float32).tolist(), ys


def create(client: TestClient, name: str = "m", dim: int = 8, **fields: Any) -> dict[str, Any]:
    body = {"name": name, "architecture": "mlp", "input_shape": [dim], "options": {"hidden": [16]}, **fields}
    response = client.post("/v1/models", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def post_samples(client: TestClient, name: str, inputs: list[Any], labels: list[Any]) -> dict[str, Any]:
    samples = [{"input": x, "label": y} for x, y in zip(inputs, labels, strict=True)]
    response = client.post(f"/v1/models/{name}/samples", json={"samples": samples})
    assert response.status_code == 202, response.text
    return response.json()


def wait_update(client: TestClient, name: str, update_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status = client.get(f"/v1/models/{name}/updates/{update_id}").json()
        if status["status"] in ("succeeded", "failed", "rejected", "cancelled", "skipped"):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.05)


def trained(client: TestClient, name: str = "m", classes: tuple[str, ...] = ("a", "b", "c")) -> dict[str, Any]:
    """A model with a live first version (trained on blobs of ``classes``)."""
    create(client, name)
    x, y = blobs(list(classes), 30)
    answer = post_samples(client, name, x, y)
    assert answer["update_id"], answer
    status = wait_update(client, name, answer["update_id"])
    assert status["status"] == "succeeded", status
    return status
