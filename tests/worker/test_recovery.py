"""The recovery sweep, in this process, against both stores: which running updates it re-queues and which it leaves."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry import LocalStore, ModelRecord, Store, UpdateRecord
from worker.config import WorkerSettings
from worker.locking import task_owner, update_owner
from worker.recovery import RecoveryLoop, SweepReport, abandoned, sweep

SETTINGS = WorkerSettings(update_lock_ttl_s=0.3, update_max_attempts=3)


@pytest.fixture(params=["local", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "local":
        s: Store = LocalStore(tmp_path / "store")
    else:
        from registry.redis_store import RedisStore

        s = RedisStore(request.getfixturevalue("redis_url"))
    for name in ("m", "n"):
        s.create_model(ModelRecord(name=name, architecture="mlp", input_shape=[3], classes=["a"]))
    yield s
    s.close()


def running(store: Store, update_id: str, model: str = "m", attempts: int = 1) -> UpdateRecord:
    record = UpdateRecord(update_id=update_id, model=model, method="auto", status="running", attempts=attempts)
    store.put_update(record)
    return record


class Sent:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def __call__(self, name: str, update_id: str) -> None:
        self.sent.append((name, update_id))


def test_a_running_update_whose_lock_expired_is_requeued_and_sent_again(store: Store) -> None:
    running(store, "u1")
    token = store.acquire_update_lock("m", update_owner("u1", "gone:1"), ttl_s=0.3)  # its worker, then it dies
    assert token is not None
    sent = Sent()
    report = sweep(store, sent, SETTINGS)
    assert report.abandoned == {"m": 0, "n": 0} and sent.sent == []  # the lock is live: its worker may be alive
    assert store.get_update("m", "u1").status == "running"
    time.sleep(0.4)  # the worker never refreshed it
    assert [u.update_id for u in abandoned(store, "m")] == ["u1"]
    report = sweep(store, sent, SETTINGS)
    assert report.abandoned == {"m": 1, "n": 0} and report.requeued == [("m", "u1")] and sent.sent == [("m", "u1")]
    record = store.get_update("m", "u1")
    assert (record.status, record.progress, record.attempts) == ("queued", 0.0, 1) and "lock expired" in str(
        record.error
    )
    assert store.update_lock_holder("m") is None  # the sweep released its own lock
    assert sweep(store, sent, SETTINGS).requeued == []  # queued now: nothing more to do


def test_what_the_sweep_leaves_alone(store: Store) -> None:
    running(store, "live")
    token = store.acquire_update_lock("m", update_owner("live", "w:1"), ttl_s=30)
    running(store, "blocked", model="n")
    store.acquire_update_lock("n", task_owner("forget"), ttl_s=30)  # a short job holds n's lock: look again later
    for status in ("queued", "succeeded", "skipped"):
        store.put_update(UpdateRecord(update_id=status, model="m", method="auto", status=status))
    sent = Sent()
    report = sweep(store, sent, SETTINGS)
    assert report.abandoned == {"m": 0, "n": 1} and report.requeued == [] and sent.sent == []
    assert store.get_update("m", "live").status == "running" and store.get_update("n", "blocked").status == "running"
    assert token is not None


def test_a_running_update_while_another_update_holds_the_lock_is_requeued(store: Store) -> None:
    running(store, "dead")
    running(store, "alive")
    store.acquire_update_lock("m", update_owner("alive", "w:2"), ttl_s=30)
    sent = Sent()
    report = sweep(store, sent, SETTINGS)
    assert report.requeued == [("m", "dead")] and store.get_update("m", "alive").status == "running"
    assert store.get_update("m", "dead").status == "queued"


def test_an_update_whose_worker_keeps_dying_is_failed(store: Store) -> None:
    running(store, "u1", attempts=3)
    sent = Sent()
    report = sweep(store, sent, SETTINGS)
    assert report.failed == [("m", "u1")] and sent.sent == []
    record = store.get_update("m", "u1")
    assert record.status == "failed" and "died 3 times" in str(record.error)


def test_a_failed_resubmission_leaves_the_update_queued(store: Store) -> None:
    running(store, "u1")

    def broker_down(name: str, update_id: str) -> None:
        raise ConnectionError("the broker is unreachable")

    report = sweep(store, broker_down, SETTINGS)
    assert report.unsent == [("m", "u1")] and store.get_update("m", "u1").status == "queued"


class Broken(LocalStore):
    def list_models(self) -> list[ModelRecord]:
        raise RuntimeError("boom")


def test_the_loop_sweeps_on_its_interval_and_survives_a_failing_pass(tmp_path: Path) -> None:
    assert RecoveryLoop(Broken(tmp_path / "broken"), Sent(), SETTINGS).run_once() is None
    store = LocalStore(tmp_path / "store")
    store.create_model(ModelRecord(name="m", architecture="mlp", input_shape=[3], classes=["a"]))
    running(store, "u1")
    sent, passes = Sent(), list[SweepReport]()
    loop = RecoveryLoop(store, sent, WorkerSettings(recovery_interval_s=0.05), on_pass=passes.append).start()
    deadline = time.monotonic() + 5
    while len(passes) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    loop.stop()
    assert sent.sent == [("m", "u1")] and store.get_update("m", "u1").status == "queued"
