"""Every metric name the Grafana dashboard and the alert rules use is exported by a real process after an update:
in distributed mode by exactly one of an API replica and a worker, in the embedded mode by the one process."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.client import Client
from tests.deploy.sources import PROMETHEUS_SERIES, ROOT, used_metric_names
from tests.distributed.processes import running, start_replica, start_worker, wait_for
from tests.e2e.conftest import clserve

# small and fast: three separable classes, a tiny MLP, two epochs
TRAINING = {
    "CL_DEVICE": "cpu",
    "CL_EPOCHS": "2",
    "CL_BATCH_SIZE": "16",
    "CL_LR": "0.01",
    "CL_POLICY_MIN_SAMPLES_PER_NEW_CLASS": "20",
}


def blobs(classes: list[str], n: int, dim: int = 8) -> tuple[list[list[float]], list[str]]:
    rng = np.random.default_rng(0)
    inputs = np.concatenate([np.eye(dim)[k] * 3 + rng.normal(0, 0.3, (n, dim)) for k in range(len(classes))])
    return inputs.astype(np.float32).tolist(), [label for label in classes for _ in range(n)]


def scrape(url: str) -> str:
    response = httpx.get(url, timeout=10)
    response.raise_for_status()
    return response.text


def scrape_when(url: str, needle: str) -> str | None:
    """The exposition once it contains ``needle``, else None."""
    text = scrape(url)
    return text if needle in text else None


def sample_names(exposition: str) -> set[str]:
    return {sample.name for family in text_string_to_metric_families(exposition) for sample in family.samples}


def train_first_version(client: Client, api_url: str) -> None:
    """Create a model that captures its traffic, post labeled samples (the update policy starts an update), wait
    until the API serves it, and predict once, so that every series of every metric exists."""
    client.create_model("m", "mlp", [8], options={"hidden": [16]}, capture={"rate": 1.0, "max_samples": 100})
    inputs, labels = blobs(["a", "b", "c"], 30)
    update_id = client.post_samples("m", inputs, labels)["update_id"]
    assert update_id, "the update policy started no update"
    status = client.wait_update("m", update_id, timeout=90)
    assert status["status"] == "succeeded", status
    wait_for(lambda: client.ready()["models"].get("m") == 1, timeout=30, what="the API serving version 1")
    client.predict("m", inputs[:3])
    wait_for(
        lambda: 'cl_model_live_version{model="m"}' in scrape(f"{api_url}/metrics"),
        timeout=30,
        what="the live version in the API's metrics",
    )
    wait_for(  # the predictions were captured, stored and watched for drift (off the request path)
        lambda: 'cl_prediction_class_share{class="a",model="m"}' in scrape(f"{api_url}/metrics"),
        timeout=30,
        what="the captured traffic in the API's metrics",
    )


def missing_report(missing: set[str], used: dict[str, set[str]]) -> str:
    return ", ".join(f"{name} (used by {', '.join(sorted(used[name]))})" for name in sorted(missing))


@pytest.mark.timeout(180)
def test_api_and_worker_each_export_their_own_share_of_the_metrics_in_use(tmp_path: Path, redis_url: str) -> None:
    assert (ROOT / "worker" / "app.py").is_file(), "worker/app.py (the distributed mode's Celery app) is missing"
    worker, metrics_port = start_worker(redis_url, log=tmp_path / "worker.log", env=TRAINING)
    replica, url = start_replica(redis_url, tmp_path / "data", log=tmp_path / "api.log", **TRAINING)
    with running(worker, replica), Client(url) as client:
        train_first_version(client, url)
        worker_text = wait_for(
            lambda: scrape_when(f"http://127.0.0.1:{metrics_port}/metrics", 'cl_updates_total{model="m"'),
            timeout=30,
            what="the update's outcome in the worker's metrics",
        )
        api_text = scrape(f"{url}/metrics")
    api, worker_names = sample_names(api_text), sample_names(worker_text)
    used = used_metric_names()
    missing = set(used) - PROMETHEUS_SERIES - api - worker_names
    assert not missing, f"used but exported by neither the API nor the worker: {missing_report(missing, used)}"
    both = set(used) & api & worker_names
    assert not both, f"exported by both the API and the worker (would be counted twice): {sorted(both)}"
    # the update metrics are measured where updates run: the worker
    assert {"cl_updates_total", "cl_update_duration_seconds_bucket", "cl_updates_running"} <= worker_names
    assert "cl_updates_total" not in api


@pytest.mark.timeout(120)
def test_the_embedded_process_exports_every_metric_in_use(tmp_path: Path) -> None:
    with clserve(tmp_path / "data", log=tmp_path / "api.log", **TRAINING) as url, Client(url) as client:
        train_first_version(client, url)
        exported = sample_names(scrape(f"{url}/metrics"))
    used = used_metric_names()
    missing = set(used) - PROMETHEUS_SERIES - exported
    assert not missing, f"used but not exported: {missing_report(missing, used)}"
