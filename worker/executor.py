"""Executors run queued updates: in-process threads (embedded default) or Celery workers (distributed mode).

The service only calls `submit` and `cancel`; where the update runs is configuration, as with Airflow's
Sequential/Celery executors.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable

from registry import Store, StoreUnavailable, UpdateRecord
from worker import lifecycle
from worker.config import WorkerSettings
from worker.locking import LockLost
from worker.pipeline import run_update
from worker.recovery import sweep

log = logging.getLogger(__name__)

FinishListener = Callable[[UpdateRecord], None]


class Executor(ABC):
    """Runs updates stored as queued; one at a time per model."""

    store: Store
    settings: WorkerSettings

    @abstractmethod
    def submit(self, name: str, update_id: str) -> None:
        """Schedule a stored, queued update."""

    def cancel(self, name: str, update_id: str) -> None:
        """Cancel a queued update at once; ask a running one to stop between batches (via the store, so that it
        works wherever the update runs)."""
        record = self.store.get_update(name, update_id)
        if record.finished:
            return
        self.store.request_cancel(name, update_id)
        if record.status == "queued":
            lifecycle.cancel(self.store, record, "cancelled before it started")

    @abstractmethod
    def queue_depth(self) -> int:
        """Updates waiting to start (this process's view)."""

    def start(self) -> None:
        """Begin executing (threads, connections)."""

    def shutdown(self, wait: bool = True) -> None:
        """Stop taking work; running updates stop at their next batch and go back to the queue."""

    def recover(self, store: Store) -> list[str]:
        """Submit again the updates a stop left queued, and re-queue (through the recovery sweep) the running ones
        that nobody runs any more; returns their ids."""
        resumed = []
        for model in store.list_models():
            for record in store.active_updates(model.name):
                if record.status == "queued":
                    self.submit(model.name, record.update_id)
                    resumed.append(record.update_id)
        report = sweep(store, self.submit, self.settings)
        return resumed + [update_id for _, update_id in report.requeued]


class InProcessExecutor(Executor):
    """Worker threads in the API process: one update at a time per model, ``max_parallel`` models at once."""

    def __init__(
        self,
        store: Store,
        settings: WorkerSettings,
        *,
        max_parallel: int = 1,
        on_finish: FinishListener | None = None,
    ) -> None:
        self.store, self.settings = store, settings
        self._queues: dict[str, deque[str]] = {}
        self._running: dict[str, str] = {}  # model → update id
        self._cond = threading.Condition()
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._work, name=f"update-worker-{i}", daemon=True) for i in range(max_parallel)
        ]
        self._on_finish = on_finish

    def start(self) -> None:
        for thread in self._threads:
            if not thread.is_alive():
                thread.start()

    def submit(self, name: str, update_id: str) -> None:
        with self._cond:
            queue = self._queues.setdefault(name, deque())
            if update_id not in queue and self._running.get(name) != update_id:
                queue.append(update_id)
            self._cond.notify_all()

    def cancel(self, name: str, update_id: str) -> None:
        with self._cond:
            queue = self._queues.get(name)
            if queue is not None and update_id in queue:
                queue.remove(update_id)
        super().cancel(name, update_id)

    def queue_depth(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._queues.values())

    def shutdown(self, wait: bool = True) -> None:
        """Take no new work; running updates stop at their next batch and are re-queued (run again at the next
        start, see `recover`).  With ``wait``, return once they have stopped."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if wait:
            for thread in self._threads:
                if thread.is_alive():
                    thread.join()

    def _next(self) -> tuple[str, str] | None:
        """The next (model, update) whose model is idle; waits for one.  None when shutting down."""
        with self._cond:
            while True:
                if self._stopping:
                    return None
                for name, queue in self._queues.items():
                    if queue and name not in self._running:
                        update_id = queue.popleft()
                        self._running[name] = update_id
                        return name, update_id
                self._cond.wait()

    def _work(self) -> None:
        while (job := self._next()) is not None:
            name, update_id = job
            try:
                record = run_update(self.store, name, update_id, self.settings, preempted=lambda: self._stopping)
                if self._on_finish is not None and record.finished:
                    self._on_finish(record)
            except LockLost:
                log.warning("update %s of %s waits: another worker holds the lock", update_id, name)
                self._requeue_later(name, update_id)
            except StoreUnavailable:
                log.warning("update %s of %s waits: the store is unreachable", update_id, name)
                self._requeue_later(name, update_id, delay_s=5.0)
            except Exception:
                log.exception("update %s of %s could not run", update_id, name)
            finally:
                with self._cond:
                    self._running.pop(name, None)
                    self._cond.notify_all()

    def _requeue_later(self, name: str, update_id: str, delay_s: float = 1.0) -> None:
        timer = threading.Timer(delay_s, self.submit, args=(name, update_id))
        timer.daemon = True
        timer.start()
