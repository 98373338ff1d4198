"""kill -9 in the middle of an update: of the pool process running it, and of the whole worker.

Each time the update completes once, exactly one new version results, every accepted sample is accounted for
(trained into that version, or still pending) and the live version is served throughout.  The visibility timeout is
test-sized (4 s) and shorter than the update, so the broker also hands out copies of the task while it still runs:
the update lock and the update record make those copies harmless.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from registry.redis_store import RedisStore
from tests.distributed.conftest import REPLICA_ENV, create_model, import_weights, post_samples, predict, request_update
from tests.distributed.processes import RedisServer, running, start_replica, start_worker, wait_for

pytestmark = pytest.mark.slow

# one batch per update; ~3-8 s of training (2 busy cores); copies of a task return after 4 s unacknowledged
CRASH_ENV = {
    "CL_EPOCHS": "400",
    "CL_BATCH_SIZE": "8",
    "CL_LR": "0.01",
    "CL_MAX_SAMPLES_PER_UPDATE": "1",
    "CL_CELERY_VISIBILITY_TIMEOUT_S": "4",
}


@dataclass
class Site:
    redis_url: str
    api: str
    store: RedisStore
    logs: Path


@pytest.fixture(scope="module")
def site(session_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    url = session_redis.fresh_url()
    logs = tmp_path_factory.mktemp("crashes")
    # the replica's own recovery sweep runs at its start only: the workers' sweeps are what these tests see
    env = {**REPLICA_ENV, "CL_RELOAD_INTERVAL_S": "1", "CL_RECOVERY_INTERVAL_S": "3600"}
    replica, api = start_replica(url, logs / "api", log=logs / "api.log", **env)
    store = RedisStore(url)
    try:
        with running(replica):
            yield Site(url, api, store, logs)
    finally:
        store.close()


class Predictions:
    """Predicts against the replica every 50 ms until stopped; remembers every answer."""

    def __init__(self, api: str, name: str) -> None:
        self.answers: list[tuple[int, int | None]] = []
        self._stop = threading.Event()

        def loop() -> None:
            while not self._stop.wait(0.05):
                response = predict(api, name)
                version = response.json().get("version") if response.status_code == 200 else None
                self.answers.append((response.status_code, version))

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self) -> list[tuple[int, int | None]]:
        self._stop.set()
        self._thread.join()
        return self.answers


def prepare(site: Site, name: str) -> tuple[str, Predictions, list[str]]:
    """A model serving an imported version 1, an update requested on one batch, a second batch left pending."""
    create_model(site.api, name, ("a", "b", "c"))
    assert import_weights(site.api, name, ["a", "b", "c"]) == 1
    wait_for(lambda: predict(site.api, name).status_code == 200, timeout=10, what="version 1 served")
    trained = post_samples(site.api, name, ["a", "b", "c"], seed=5)
    update_id = request_update(site.api, name)
    post_samples(site.api, name, ["a", "b"], n=10, seed=6)  # a later batch: the update must not take it
    return update_id, Predictions(site.api, name), trained["ids"]


def wait_running(site: Site, name: str, update_id: str) -> None:
    wait_for(
        lambda: (r := site.store.get_update(name, update_id)).status == "running" and r.progress > 0.1,
        timeout=120,
        what="the update running with progress",
    )


def check_outcome(site: Site, name: str, update_id: str, trained_ids: list[str], predictions: Predictions) -> None:
    record = wait_for(
        lambda: (r := site.store.get_update(name, update_id)).finished and r, timeout=120, what="the update finishing"
    )
    answers = predictions.stop()
    assert record.status == "succeeded", record
    assert record.attempts == 2, f"the update ran {record.attempts} times"
    versions = site.store.list_versions(name)
    assert [v.version for v in versions] == [1, 2]  # exactly one new version
    assert versions[1].update_id == update_id
    [experience] = site.store.experiences(name)
    assert experience.version == 2
    assert experience.labeled + experience.unlabeled + experience.held_out == len(trained_ids)
    held = site.store.experience_samples(name, 2).ids
    claim = site.store.claim(name)  # what is still pending: exactly the later batch
    assert not set(claim.train.ids + claim.held_out.ids) & set(trained_ids)
    assert len(claim.train) + len(claim.held_out) == 20
    assert set(held) <= set(trained_ids) and len(held) == experience.held_out
    assert answers and all(status == 200 for status, _ in answers), answers
    assert {version for _, version in answers} <= {1, 2}


def test_killing_the_pool_process_requeues_the_update_at_once(site: Site) -> None:
    name = "pool"
    worker, _ = start_worker(site.redis_url, log=site.logs / "pool-worker.log", env=CRASH_ENV)
    with running(worker):
        update_id, predictions, trained_ids = prepare(site, name)
        wait_running(site, name, update_id)
        [pool] = worker.children()
        os.kill(pool, signal.SIGKILL)
        check_outcome(site, name, update_id, trained_ids, predictions)
    assert b"WorkerLostError" in worker.log.read_bytes()  # requeued through task_reject_on_worker_lost


def test_killing_the_whole_worker_hands_the_update_to_another_one(site: Site) -> None:
    name = "whole"
    first, _ = start_worker(site.redis_url, log=site.logs / "w1.log", env=CRASH_ENV)
    second, _ = start_worker(site.redis_url, log=site.logs / "w2.log", env=CRASH_ENV)
    with running(first, second):
        update_id, predictions, trained_ids = prepare(site, name)
        wait_running(site, name, update_id)
        holder = site.store._redis.get(f"cl:{{{name}}}:lock")
        assert isinstance(holder, bytes)
        owner_pid = int(holder.decode().rsplit(":", 1)[1])
        [running_it] = [w for w in (first, second) if owner_pid in w.children()]  # the lock names its holder
        running_it.kill_all()
        check_outcome(site, name, update_id, trained_ids, predictions)


def test_a_whole_worker_killed_is_finished_by_the_next_worker_within_the_sweep_bound(site: Site) -> None:
    """Failure 2 of issue 12: with the default visibility timeout (hours), a fresh worker left the update of a
    worker killed outright `running` until the timeout.  The fresh worker's recovery sweep re-queues it as soon as
    the dead worker's lock has expired (3 s here) and runs it."""
    name = "sweep"
    env = {k: v for k, v in CRASH_ENV.items() if k != "CL_CELERY_VISIBILITY_TIMEOUT_S"}  # the default: hours
    first, _ = start_worker(site.redis_url, log=site.logs / "s1.log", env=env)
    with running(first):
        update_id, predictions, trained_ids = prepare(site, name)
        wait_running(site, name, update_id)
        first.kill_all()  # kill -9 of the whole worker: main process and pool
    second, _ = start_worker(site.redis_url, log=site.logs / "s2.log", env=env)
    with running(second):
        record = wait_for(
            lambda: (r := site.store.get_update(name, update_id)).finished and r,
            timeout=90,  # the sweep's bound (two lock lifetimes, 6 s) plus the update itself, on a busy machine
            what="the update finished by the second worker",
        )
        check_outcome(site, name, update_id, trained_ids, predictions)
    assert record.status == "succeeded"
    assert b"re-queued" in second.log.read_bytes()  # the second worker's recovery sweep did it
