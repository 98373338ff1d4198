"""Redis stopped: predictions go on from memory, ingestion and updates answer 503 with a clear message, and after
Redis returns everything continues in the same processes (no restart)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from registry.redis_store import RedisStore
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

# one batch per update, long enough (~3-8 s) to stop Redis in the middle of it; the lock lives 3 s
OUTAGE_ENV = {"CL_EPOCHS": "400", "CL_BATCH_SIZE": "8", "CL_LR": "0.01", "CL_MAX_SAMPLES_PER_UPDATE": "1"}


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


def test_redis_stopped_during_a_running_update_and_restarted_finishes_it_exactly_once(tmp_path: Path) -> None:
    """Failure 1 of issue 12: Redis (store and broker) stopped while an update trains and restarted with its
    append-only file: the task's retry could not reach the broker and the update stayed `running` for good.  The
    workers' recovery sweep re-queues it once its lock has expired; it ends with one new version, every sample
    of its batch trained once and nothing left pending."""
    with redis_server(tmp_path / "redis", appendonly=True) as server:
        url = f"{server.url}/0"
        replica, api = start_replica(url, tmp_path / "api", log=tmp_path / "api.log", **REPLICA_ENV)
        worker, _ = start_worker(url, log=tmp_path / "worker.log", env=OUTAGE_ENV)
        with running(replica, worker):
            create_model(api, "m", ("a", "b", "c"))
            assert import_weights(api, "m", ["a", "b", "c"]) == 1
            wait_served(api, "m", 1)
            trained = post_samples(api, "m", ["a", "b", "c"], seed=5)["ids"]
            update_id = request_update(api, "m")
            store = RedisStore(url)
            try:
                wait_for(
                    lambda: (r := store.get_update("m", update_id)).status == "running" and r.progress > 0.1,
                    timeout=120,
                    what="the update training",
                )
            finally:
                store.close()

            server.stop()  # SIGTERM: everything acknowledged is in the append-only file
            time.sleep(5)  # longer than the lock's lifetime (3 s): it has expired when Redis is back
            server.start()

            record = wait_update(api, "m", update_id, timeout=90)
            assert record["status"] == "succeeded" and record["version"] == 2, record
            store = RedisStore(url)
            try:
                assert [v.version for v in store.list_versions("m")] == [1, 2]  # exactly one new version
                [experience] = store.experiences("m")
                assert experience.version == 2
                assert experience.labeled + experience.unlabeled + experience.held_out == len(trained)
                claim = store.claim("m")
                assert len(claim.train) + len(claim.held_out) == 0  # nothing lost, nothing left pending
                assert store.get_update("m", update_id).attempts >= 2
            finally:
                store.close()
            wait_served(api, "m", 2, timeout=30)
