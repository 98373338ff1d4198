"""Recovery that does not depend on the broker: a periodic sweep, run by every Celery worker (its main process) and
every API replica, re-queues a ``running`` update that nobody is running any more and sends it to run again.

An update is running only while its runner holds the model's update lock, refreshed every third of
``CL_UPDATE_LOCK_TTL_S``.  A worker that vanished (kill -9, a lost machine), or a task the broker dropped (Redis
went away while the task retried), leaves the record ``running`` and the lock expires one TTL later at most; the
sweep, every half TTL, then finds a running record whose lock has no live holder running it, takes the lock,
re-queues the update (or fails it after ``CL_UPDATE_MAX_ATTEMPTS`` attempts) and re-submits it: within about
1.5 lock lifetimes of the worker's end, whatever the broker's visibility timeout.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from registry import NotFound, Store, StoreError, UpdateRecord
from worker import lifecycle
from worker.config import WorkerSettings
from worker.locking import LockLost, runs_update, task_owner, update_lock

log = logging.getLogger(__name__)

Resubmit = Callable[[str, str], None]
"""Sends an update to run again: (model name, update id)."""


@dataclass
class SweepReport:
    """What one pass found and did."""

    abandoned: dict[str, int] = field(default_factory=dict)  # model → running updates nobody runs (as found)
    requeued: list[tuple[str, str]] = field(default_factory=list)  # (model, update id) re-queued and re-submitted
    failed: list[tuple[str, str]] = field(default_factory=list)  # given up after too many attempts
    unsent: list[tuple[str, str]] = field(default_factory=list)  # re-queued, but the re-submission failed


def abandoned(store: Store, name: str, updates: list[UpdateRecord] | None = None) -> list[UpdateRecord]:
    """The running updates of ``name`` (among ``updates``, default its queued and running ones) whose runner is
    gone: the lock is free, expired, or held for something else (only the holder of the lock can be running an
    update)."""
    running = [u for u in (store.active_updates(name) if updates is None else updates) if u.status == "running"]
    if not running:
        return []
    holder = store.update_lock_holder(name)
    return [u for u in running if holder is None or not runs_update(holder.owner, u.update_id)]


def sweep(store: Store, resubmit: Resubmit, settings: WorkerSettings) -> SweepReport:
    """One pass over every model (see the module's docstring)."""
    report = SweepReport()
    for model in store.list_models():
        try:
            found = abandoned(store, model.name)
        except NotFound:  # deleted meanwhile
            continue
        report.abandoned[model.name] = len(found)
        for record in found:
            try:
                _recover(store, model.name, record.update_id, resubmit, settings, report)
            except NotFound:
                continue
            except LockLost:  # someone took the lock meanwhile: the next pass looks again
                log.debug("update %s of %s: the lock was taken while recovering it", record.update_id, model.name)
    return report


def _recover(
    store: Store, name: str, update_id: str, resubmit: Resubmit, settings: WorkerSettings, report: SweepReport
) -> None:
    holder = store.update_lock_holder(name)
    if holder is not None:
        if holder.owner.startswith("update:") and not runs_update(holder.owner, update_id):
            _requeue(store, name, update_id, resubmit, settings, report)  # another update runs: this one cannot be
        return  # an import, a deletion scrub or another sweep: short, look again next pass
    with update_lock(store, name, task_owner("recovery"), settings.update_lock_ttl_s):
        _requeue(store, name, update_id, resubmit, settings, report)


def _requeue(
    store: Store, name: str, update_id: str, resubmit: Resubmit, settings: WorkerSettings, report: SweepReport
) -> None:
    record = store.get_update(name, update_id)  # read again now that nobody else can change it
    if record.status != "running":
        return
    if record.attempts >= settings.update_max_attempts:
        lifecycle.fail(store, record, f"its worker died {record.attempts} times while running it; not retried")
        report.failed.append((name, update_id))
        log.warning("update %s of %s failed: its worker died %d times", update_id, name, record.attempts)
        return
    lifecycle.requeue(store, record, "its worker stopped while running it (lock expired); it runs again")
    log.warning("update %s of %s was running with nobody holding its lock: re-queued", update_id, name)
    try:
        resubmit(name, update_id)
    except Exception:
        log.exception("update %s of %s is queued again but could not be sent; a later start sends it", update_id, name)
        report.unsent.append((name, update_id))
        return
    report.requeued.append((name, update_id))


class RecoveryLoop:
    """Runs `sweep` every ``settings.recovery_interval`` seconds in a daemon thread until stopped (a failed pass,
    e.g. while the store is unreachable, is logged and the next one runs on time)."""

    def __init__(
        self,
        store: Store,
        resubmit: Resubmit,
        settings: WorkerSettings,
        *,
        on_pass: Callable[[SweepReport], None] | None = None,
    ) -> None:
        self.store, self.resubmit, self.settings, self._on_pass = store, resubmit, settings, on_pass
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="update-recovery", daemon=True)

    def start(self) -> RecoveryLoop:
        self._thread.start()
        return self

    def run_once(self) -> SweepReport | None:
        try:
            report = sweep(self.store, self.resubmit, self.settings)
        except StoreError as exc:
            log.warning("the recovery sweep could not run this time: %s", exc)
            return None
        except Exception:
            log.exception("the recovery sweep failed; it runs again at the next interval")
            return None
        if self._on_pass is not None:
            self._on_pass(report)
        return report

    def _run(self) -> None:
        while not self._stop.wait(self.settings.recovery_interval):
            self.run_once()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
