"""Redis stopped: predictions go on from memory, ingestion and updates answer 503 with a clear message, and after
Redis returns everything continues in the same processes (no restart)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.distributed.conftest import (
    REPLICA_ENV,
    WORKER_ENV,
    create_model,
    import_weights,
    post_samples,
    predict,
    request_update,
    wait_served,
    wait_update,
)
from tests.distributed.processes import redis_server, running, start_replica, start_worker, wait_for

pytestmark = pytest.mark.slow


def test_a_redis_outage_degrades_to_serving_from_memory_and_heals_by_itself(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis", appendonly=True) as server:  # its own server: this test stops it
        url = f"{server.url}/0"
        replica, api = start_replica(url, tmp_path / "api", log=tmp_path / "api.log", **REPLICA_ENV)
        worker, _ = start_worker(url, log=tmp_path / "worker.log", env=WORKER_ENV)
        with running(replica, worker):
            create_model(api, "m", ("a", "b", "c"))
            assert import_weights(api, "m", ["a", "b", "c"]) == 1
            wait_served(api, "m", 1)

            server.stop()
            for _ in range(5):
                answer = predict(api, "m")
                assert answer.status_code == 200 and answer.json()["version"] == 1
            samples = {"samples": [{"input": [0.0] * 8, "label": "a"}]}
            for response in (
                httpx.post(f"{api}/v1/models/m/samples", json=samples, timeout=30),
                httpx.post(f"{api}/v1/models/m/updates", json={}, timeout=30),
                httpx.get(f"{api}/readyz", timeout=30),
            ):
                assert response.status_code == 503, response.text
                assert response.headers["retry-after"]
                assert "unreachable" in response.json()["detail"], response.text

            server.start()  # same port, same append-only file
            wait_for(lambda: httpx.get(f"{api}/readyz", timeout=5).status_code == 200, timeout=30, what="ready again")
            post_samples(api, "m", ["a", "b", "c"])
            update_id = request_update(api, "m")
            assert wait_update(api, "m", update_id)["status"] == "succeeded"  # the worker reconnected by itself
            wait_served(api, "m", 2)
            assert predict(api, "m").json()["version"] == 2
