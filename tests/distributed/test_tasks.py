"""The Celery tasks and the executor, in this process: task policy, idempotency, messages, recovery."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis
import torch

import worker.app as worker_app
from registry import ModelRecord, StoreUnavailable, UpdateRecord
from registry.redis_store import RedisStore
from tests.distributed.conftest import samples_tensor
from worker.app import create_app, task_id
from worker.celery_executor import RESEND_AFTER_S, CeleryExecutor
from worker.config import WorkerSettings
from worker.locking import update_owner
from worker.tasks import estimate_importance_task, evaluate_version_task, run_update_task


@pytest.fixture
def store(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisStore]:
    """A Redis store with model "m", and this process set up as a worker process on the same database."""
    for key, value in {"CL_REDIS_URL": redis_url, "CL_EPOCHS": "3", "CL_DEVICE": "cpu", "CL_LR": "0.01"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(worker_app, "_process", None)
    s = RedisStore(redis_url)
    s.create_model(ModelRecord(name="m", architecture="mlp", input_shape=[8], classes=[], options={"hidden": [16]}))
    yield s
    if worker_app._process is not None:
        worker_app._process.close()
    s.close()


def queued(store: RedisStore, update_id: str = "u1", age_s: float = 0.0) -> UpdateRecord:
    record = UpdateRecord(update_id=update_id, model="m", method="auto", created_at=time.time() - age_s)
    store.put_update(record)
    return record


def test_the_app_acknowledges_late_requeues_lost_work_and_speaks_json_only() -> None:
    conf = create_app(WorkerSettings(redis_url="redis://127.0.0.1:1/0", celery_visibility_timeout_s=7)).conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert conf.accept_content == ["json"] and conf.task_serializer == "json" and conf.result_serializer == "json"
    assert conf.broker_transport_options["visibility_timeout"] == 7 and conf.task_default_queue == "updates"
    assert conf.task_soft_time_limit < conf.task_time_limit and conf.worker_concurrency == 1
    assert run_update_task.acks_late and run_update_task.reject_on_worker_lost
    assert StoreUnavailable in run_update_task.autoretry_for


def test_the_update_task_runs_once_however_often_it_is_delivered(store: RedisStore) -> None:
    x, y = samples_tensor(["a", "b"], 20, seed=0)
    store.append_samples("m", x, y, 0.2)
    queued(store)
    assert run_update_task.apply(args=["m", "u1"]).get() == {"status": "succeeded", "version": 1}
    assert run_update_task.apply(args=["m", "u1"]).get() == {"status": "succeeded", "version": 1}  # a copy
    assert [v.version for v in store.list_versions("m")] == [1] and store.get_update("m", "u1").attempts == 1
    metrics = worker_app.current().metrics
    assert metrics.outcomes.labels("m", "succeeded")._value.get() == 1
    assert run_update_task.apply(args=["gone", "u1"]).get() == {"status": "gone"}


def test_an_update_whose_process_keeps_dying_is_failed_instead_of_looping(store: RedisStore) -> None:
    record = queued(store)
    record.status, record.attempts = "running", 5  # as five killed processes leave it
    store.put_update(record)
    assert run_update_task.apply(args=["m", "u1"]).get()["status"] == "failed"
    assert "died 5 times" in str(store.get_update("m", "u1").error)


def test_evaluation_and_importance_tasks_answer_in_json(store: RedisStore) -> None:
    x, y = samples_tensor(["a", "b"], 20, seed=0)
    store.append_samples("m", x, y, 0.2)
    queued(store)
    run_update_task.apply(args=["m", "u1"]).get()
    evaluated = evaluate_version_task.apply(args=["m", 1]).get()
    stored = store.get_version("m", 1).metrics
    assert evaluated["metrics"]["accuracy"] == stored["accuracy"]
    assert evaluated["metrics"]["held_out_samples"] == stored["held_out_samples"] == 8
    unlabeled, _ = samples_tensor(["a"], 6, seed=1)
    store.append_samples("m", unlabeled, [None] * 6, 0.2)
    importance = estimate_importance_task.apply(args=["m"], kwargs={"max_samples": 4}).get()
    assert importance["version"] == 1 and importance["samples"] == 4
    assert set(importance["parameters"]) >= {"head.weight"} and json.dumps(importance)
    assert store.pending_counts("m").unlabeled == 6  # measured, not consumed


def test_the_executor_sends_one_json_message_per_update_under_an_id_derived_from_it(store: RedisStore) -> None:
    executor = CeleryExecutor(store, WorkerSettings(redis_url=store.where))
    queued(store)
    executor.submit("m", "u1")
    [raw] = redis.Redis.from_url(store.where).lrange("updates", 0, -1)
    message = json.loads(raw)
    assert message["content-type"] == "application/json"
    assert message["headers"]["id"] == task_id("m", "u1") and message["headers"]["task"] == "cl.run_update"
    assert executor.queue_depth() == 1
    executor.shutdown()


def test_recovery_resends_updates_queued_long_enough_and_running_ones_nobody_holds(store: RedisStore) -> None:
    executor = CeleryExecutor(store, WorkerSettings(redis_url=store.where))
    queued(store, "fresh")
    queued(store, "old", age_s=RESEND_AFTER_S + 1)
    for update_id in ("busy", "orphan"):
        running = queued(store, update_id, age_s=RESEND_AFTER_S + 1)
        running.status = "running"
        store.put_update(running)
    assert store.acquire_update_lock("m", update_owner("busy", "w:1"), ttl_s=60) is not None  # its worker lives
    assert executor.recover(store) == ["old", "orphan"]
    assert store.get_update("m", "orphan").status == "queued" and store.get_update("m", "busy").status == "running"
    sent = [json.loads(raw)["headers"]["id"] for raw in redis.Redis.from_url(store.where).lrange("updates", 0, -1)]
    assert sorted(sent) == [task_id("m", "old"), task_id("m", "orphan")]
    executor.shutdown()


def test_a_redelivered_task_whose_samples_another_update_trained_is_skipped(store: RedisStore) -> None:
    x, y = samples_tensor(["a", "b"], 20, seed=0)
    store.append_samples("m", x, y, 0.2)
    queued(store, "u1")
    queued(store, "u2")
    assert run_update_task.apply(args=["m", "u1"]).get() == {"status": "succeeded", "version": 1}
    assert run_update_task.apply(args=["m", "u2"]).get() == {"status": "skipped", "version": None}
    metrics = worker_app.current().metrics
    assert metrics.outcomes.labels("m", "skipped")._value.get() == 1
    assert ("m", "failed") not in metrics.outcomes._metrics


def test_an_unreachable_broker_is_store_unavailable() -> None:
    settings = WorkerSettings(redis_url="redis://127.0.0.1:9/0")
    executor = CeleryExecutor(RedisStore(settings.redis_url or ""), settings)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="task queue"):
        executor.submit("m", "u1")
    assert time.monotonic() - started < 15
    executor.shutdown()


def test_samples_helper_shapes() -> None:
    x, y = samples_tensor(["a"], 2, seed=0)
    assert x.shape == (2, 8) and x.dtype == torch.float32 and y == ["a", "a"]
