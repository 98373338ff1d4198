"""The update state machine, the update lock and the promotion decision: the three owners of the update lifecycle."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path
from typing import get_args

import pytest

from registry import LocalStore, ModelRecord, UpdateRecord, VersionRecord
from registry import tensors as st
from registry.records import FINISHED, UpdateStatus
from worker import lifecycle
from worker.config import WorkerSettings
from worker.lifecycle import IllegalTransition, Outcome
from worker.locking import LockLost, runs_update, task_owner, update_lock, update_owner
from worker.promotion import RejectedByGate, auto_promote, promote, wants_promotion

STATUSES: tuple[UpdateStatus, ...] = get_args(UpdateStatus)
ALLOWED = {
    ("queued", "running"),
    ("queued", "cancelled"),
    ("running", "succeeded"),
    ("running", "rejected"),
    ("running", "failed"),
    ("running", "cancelled"),
    ("running", "skipped"),
    ("running", "queued"),
}


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    s = LocalStore(tmp_path / "store")
    s.create_model(ModelRecord(name="m", architecture="mlp", input_shape=[3], classes=["a"]))
    return s


def record(store: LocalStore, status: UpdateStatus = "queued", **fields: object) -> UpdateRecord:
    r = UpdateRecord(update_id="u1", model="m", method="auto", status=status, **fields)  # type: ignore[arg-type]
    store.put_update(r)
    return r


# -- the state machine ---------------------------------------------------------------------------------------------


def test_only_the_documented_transitions_are_allowed() -> None:
    assert set(STATUSES) == {"queued", "running", *FINISHED} and "skipped" in FINISHED
    for current, target in itertools.product(STATUSES, STATUSES):
        assert lifecycle.allowed(current, target) == ((current, target) in ALLOWED), (current, target)
        if (current, target) not in ALLOWED:
            with pytest.raises(IllegalTransition, match=f"from {current!r} to {target!r}"):
                lifecycle.check(current, target)


def test_a_run_starts_reports_and_finishes_through_the_machine(store: LocalStore) -> None:
    r = lifecycle.start(store, record(store))
    assert (r.status, r.attempts, r.progress) == ("running", 1, 0.0) and r.started_at is not None
    lifecycle.progress(store, r, 1.7)
    assert store.get_update("m", "u1").progress == 1.0  # clamped
    lifecycle.finish(store, r, Outcome("succeeded", 3, {"accuracy": 0.9}))
    stored = store.get_update("m", "u1")
    assert (stored.status, stored.version, stored.metrics, stored.progress) == ("succeeded", 3, {"accuracy": 0.9}, 1.0)
    assert stored.finished and stored.finished_at is not None
    for change in (
        lambda: lifecycle.start(store, stored),
        lambda: lifecycle.fail(store, stored, "x"),
        lambda: lifecycle.cancel(store, stored, "x"),
        lambda: lifecycle.requeue(store, stored, "x"),
        lambda: lifecycle.finish(store, stored, Outcome("skipped")),
        lambda: lifecycle.progress(store, stored, 0.5),
    ):
        with pytest.raises(IllegalTransition):
            change()
    assert store.get_update("m", "u1").status == "succeeded"  # a finished update never changes again


def test_a_record_left_running_by_a_dead_attempt_starts_again_as_a_new_attempt(store: LocalStore) -> None:
    r = lifecycle.start(store, record(store, "running", attempts=1, progress=0.4, error="x"))
    assert (r.status, r.attempts, r.progress, r.error) == ("running", 2, 0.0, None)


def test_skipped_requeued_cancelled_and_failed_keep_their_reason(store: LocalStore) -> None:
    r = lifecycle.requeue(store, lifecycle.start(store, record(store)), "interrupted")
    assert (r.status, r.error, r.started_at) == ("queued", "interrupted", None)
    r = lifecycle.finish(store, lifecycle.start(store, r), Outcome("skipped", note="nothing left to learn"))
    assert (r.status, r.version, r.error) == ("skipped", None, "nothing left to learn")
    other = UpdateRecord(update_id="u2", model="m", method="auto")
    store.put_update(other)
    assert lifecycle.cancel(store, other, "cancelled before it started").status == "cancelled"
    third = UpdateRecord(update_id="u3", model="m", method="auto")
    store.put_update(third)
    with pytest.raises(IllegalTransition):
        lifecycle.fail(store, third, "a queued update cannot fail without running")
    assert lifecycle.fail(store, lifecycle.start(store, third), "boom").error == "boom"


# -- the lock ------------------------------------------------------------------------------------------------------


def test_the_lock_is_kept_alive_exposes_its_token_and_is_released(store: LocalStore) -> None:
    with update_lock(store, "m", update_owner("u1", "here:1"), ttl_s=0.3) as lock:
        holder = store.update_lock_holder("m")
        assert holder is not None and holder.token == lock.token and runs_update(holder.owner, "u1")
        time.sleep(1.0)  # three lifetimes: the background refresh keeps it
        assert lock.still_held() and not lock.lost.is_set()
        with (
            pytest.raises(LockLost, match="busy elsewhere"),
            update_lock(store, "m", task_owner("import"), ttl_s=30, busy="busy elsewhere"),
        ):
            pass
    assert store.update_lock_holder("m") is None


def test_a_lock_taken_over_is_noticed(store: LocalStore) -> None:
    with update_lock(store, "m", task_owner("forget"), ttl_s=0.3) as lock:
        store.release_update_lock("m", lock.token)
        assert store.acquire_update_lock("m", "update:u9 there:2", 60) is not None
        deadline = time.monotonic() + 5
        while not lock.lost.is_set():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with pytest.raises(LockLost):
            lock.check()
        assert not lock.still_held()
    assert runs_update(store.update_lock_holder("m").owner, "u9")  # type: ignore[union-attr]  # not released


def test_waiting_for_the_lock(store: LocalStore) -> None:
    token = store.acquire_update_lock("m", "update:u1 a:1", 60)
    assert token is not None
    threading.Timer(0.3, store.release_update_lock, args=("m", token)).start()
    with update_lock(store, "m", task_owner("forget"), ttl_s=30, wait_s=10) as lock:
        assert lock.token > token
    assert not runs_update("forget-12345678 host:1", "u1") and not runs_update("update:u10 host:1", "u1")


# -- promotion -----------------------------------------------------------------------------------------------------


def commit(store: LocalStore, status: str = "candidate", parent: int | None = None) -> VersionRecord:
    version = VersionRecord(model="m", version=0, parent=parent, spec={}, learner={}, method="x", status=status)  # type: ignore[arg-type]
    return store.commit_version(version, st.dumps({}), st.dumps({}))


def test_promotion_is_compare_and_set_and_reactions_never_undo_it(store: LocalStore) -> None:
    first, second = commit(store), commit(store, parent=1)
    errors: list[str] = []
    store.on_listener_error(lambda name, exc: errors.append(str(exc)))

    def reload(name: str) -> None:
        raise MemoryError("CUDA out of memory")

    result = promote(store, "m", first.version, by="alice", on_live=reload)
    assert (result.promoted, result.previous, result.event) == (True, None, "version.promoted")
    assert store.live_version("m") == 1 and errors == ["CUDA out of memory"]
    stale = promote(store, "m", second.version, by="bob", expected=None)
    assert (stale.promoted, stale.previous, stale.event) == (False, 1, "none") and store.live_version("m") == 1
    assert promote(store, "m", 2, by="bob").event == "version.promoted"
    assert promote(store, "m", 1, by="carol").event == "version.rollback"


def test_a_rejected_version_goes_live_only_when_forced(store: LocalStore) -> None:
    rejected = commit(store, "rejected")
    with pytest.raises(RejectedByGate, match="forgetting gate"):
        promote(store, "m", rejected.version, by="alice")
    assert store.live_version("m") is None
    result = promote(store, "m", rejected.version, by="alice", force=True)
    assert result.promoted and result.forced and result.gate and store.live_version("m") == rejected.version
    plain = promote(store, "m", commit(store).version, by="alice", force=True)  # force changes nothing for others
    assert plain.promoted and not plain.forced and plain.gate is None


def test_the_automatic_decision(store: LocalStore) -> None:
    on, off = WorkerSettings(auto_promote=True), WorkerSettings(auto_promote=False)
    rejected, candidate = commit(store, "rejected"), commit(store)
    assert not wants_promotion(rejected, on) and not wants_promotion(candidate, off)
    assert wants_promotion(candidate, on) and wants_promotion(commit(store, "imported"), on)
    assert auto_promote(store, rejected, on, by="x", expected=None) is None
    assert auto_promote(store, candidate, off, by="x", expected=None) is None
    assert store.live_version("m") is None
    result = auto_promote(store, candidate, on, by="x", expected=None)
    assert result is not None and result.promoted and store.live_version("m") == candidate.version


def test_the_visibility_timeout_outlasts_the_longest_update() -> None:
    settings = WorkerSettings()
    assert settings.visibility_timeout > settings.celery_time_limit_s >= settings.celery_soft_time_limit_s
    longer = WorkerSettings(celery_soft_time_limit_s=10 * 3600, celery_time_limit_s=11 * 3600)
    assert longer.visibility_timeout > 11 * 3600
    assert WorkerSettings(celery_visibility_timeout_s=7).visibility_timeout == 7  # explicit wins (tests use it)
    assert WorkerSettings(update_lock_ttl_s=3).recovery_interval == 1.5
    assert WorkerSettings(recovery_interval_s=0.5).recovery_interval == 0.5
    for hostile in ("-1", "0", "nan", "inf", "1e400", "soon"):
        with pytest.raises(ValueError):
            WorkerSettings(recovery_interval_s=hostile)
        with pytest.raises(ValueError):
            WorkerSettings(celery_visibility_timeout_s=hostile)
