"""The Celery app of the distributed mode, and what each worker process holds.

Start a worker (one update at a time per process; scale with processes, one per GPU)::

    CL_REDIS_URL=redis://… celery -A worker.app worker -Q updates --concurrency 1

Configuration is the API's: the same ``CL_*`` variables (`WorkerSettings`).  Messages are JSON only (nothing is
ever pickled); an update task is acknowledged only when it has finished (``acks_late``) and goes back to the queue
at once when its pool process dies (``reject_on_worker_lost``).  When the whole worker vanished, or the broker lost
the task (Redis went away while it retried), the recovery sweep that every worker's main process runs
(`worker.recovery`) re-queues and re-sends the update once its lock has expired, within about two lock lifetimes;
the broker's visibility timeout, sized past the longest allowed update, only brings back a stale copy.  The store's
update lock (with fencing) and the update record make a task that runs twice harmless: the second run waits for
the lock, then finds the update finished.

Metrics: the worker's main process serves ``/metrics`` (``CL_WORKER_METRICS_PORT``) for the updates its pool
processes run, through prometheus_client's multiprocess mode (each pool process writes its values to a file in
``PROMETHEUS_MULTIPROC_DIR``; the main process sums them up).
"""

from __future__ import annotations

import glob
import logging
import os
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Any

from celery import Celery, signals
from prometheus_client import CollectorRegistry, Gauge, multiprocess, start_http_server, values

from cl_core.trainer import resolve_device
from registry import Store, UpdateRecord, open_store
from worker.config import WorkerSettings
from worker.metrics import UpdateMetrics
from worker.pipeline import run_update
from worker.recovery import RecoveryLoop

log = logging.getLogger(__name__)

QUEUE = "updates"
RUN_UPDATE = "cl.run_update"
ESTIMATE_IMPORTANCE = "cl.estimate_importance"
EVALUATE_VERSION = "cl.evaluate_version"


def task_id(name: str, update_id: str) -> str:
    """The Celery task id of an update: derived from the update id, so every copy of it carries the same id."""
    return f"update-{name}-{update_id}"


def send_update(app: Celery, name: str, update_id: str) -> None:
    """Send an update's task (the one way it is sent: by the API's executor and by the recovery sweep)."""
    app.send_task(
        RUN_UPDATE,
        args=[name, update_id],
        task_id=task_id(name, update_id),
        queue=QUEUE,
        ignore_result=True,  # the update's record in the store is its result: no result subscription
    )


def create_app(settings: WorkerSettings) -> Celery:
    """A Celery app configured from ``settings`` (the broker is the store's Redis unless set apart)."""
    broker = settings.broker_url or "memory://"  # no URL: an app that can be imported, not used
    app = Celery("continual_serve", broker=broker, backend=settings.broker_url, include=["worker.tasks"])
    visibility = settings.visibility_timeout
    if visibility <= settings.celery_time_limit_s:
        log.warning(
            "CL_CELERY_VISIBILITY_TIMEOUT_S (%s s) is not longer than an update may run (%s s): the broker hands "
            "out copies of running updates (harmless, they wait for the lock, but they occupy workers)",
            visibility,
            settings.celery_time_limit_s,
        )
    transport = {
        "visibility_timeout": visibility,
        "unacked_restore_interval": settings.celery_restore_interval_s,
        "unacked_restore_throttle": 1,  # the interval alone decides how soon a vanished worker's task returns
    }
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        event_serializer="json",
        task_default_queue=QUEUE,
        task_routes={"cl.*": {"queue": QUEUE}},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,  # one update per process (CPU) or per GPU: scale with processes
        task_soft_time_limit=settings.celery_soft_time_limit_s,
        task_time_limit=settings.celery_time_limit_s,
        broker_transport_options=transport,
        result_backend_transport_options={"visibility_timeout": visibility},
        result_expires=24 * 3600,
        broker_connection_retry_on_startup=True,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5},
        worker_hijack_root_logger=False,
    )
    return app


app = create_app(WorkerSettings())


# -- each pool process ---------------------------------------------------------------------------------------------


@dataclass
class WorkerProcess:
    """A pool process's store connection and metrics (made after the fork: connections are not shared)."""

    settings: WorkerSettings
    store: Store
    metrics: UpdateMetrics
    progress: Gauge
    pid: int = field(default_factory=os.getpid)

    @classmethod
    def start(cls) -> WorkerProcess:
        settings = WorkerSettings()
        settings.apply_threads()
        store = open_store(
            settings.data_dir,
            settings.redis_url,
            redis_chunk_bytes=settings.redis_chunk_bytes,
            signer=settings.signer(),
            heldout_capacity=settings.heldout_per_class,
        )
        registry = CollectorRegistry()  # exported by the main process (multiprocess mode), not from here
        progress = Gauge(
            "cl_update_progress_ratio",
            "progress of the update a worker process is running (0 when idle)",
            ["model"],
            registry=registry,
            multiprocess_mode="liveall",
        )
        log.info("worker process %d: device %s, store %s", os.getpid(), resolve_device(settings.device), store)
        return cls(settings, store, UpdateMetrics(registry), progress)

    def run_update(self, name: str, update_id: str, where: str) -> UpdateRecord:
        """Run an update here, measured (LockLost when another process holds the model's lock).  An update whose
        process keeps dying is failed by the pipeline after ``CL_UPDATE_MAX_ATTEMPTS`` attempts."""
        record = self.store.get_update(name, update_id)
        if record.finished:
            return record  # a copy of a task that already ran
        self.metrics.running.labels(name).inc()
        watcher = _ProgressWatcher(self.store, name, update_id, self.progress.labels(name))
        try:
            record = run_update(self.store, name, update_id, self.settings, where=where)
        finally:
            watcher.stop()
            self.metrics.running.labels(name).dec()
        if record.finished:
            self.metrics.observe(record)
        return record

    def close(self) -> None:
        self.store.close()


class _ProgressWatcher:
    """Mirrors the running update's progress (which the pipeline writes to the store) into a gauge."""

    def __init__(self, store: Store, name: str, update_id: str, gauge: Any, interval_s: float = 1.0) -> None:
        self._stop = threading.Event()
        gauge.set(0.0)

        def watch() -> None:
            while not self._stop.wait(interval_s):
                try:
                    gauge.set(store.get_update(name, update_id).progress)
                except Exception:  # a store hiccup: the next tick reads it again
                    log.debug("could not read the progress of %s", update_id, exc_info=True)
            gauge.set(0.0)

        self._thread = threading.Thread(target=watch, name=f"progress-{update_id}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


_process: WorkerProcess | None = None
_process_guard = threading.Lock()


def current() -> WorkerProcess:
    """This process's `WorkerProcess` (made on first use after a fork)."""
    global _process
    with _process_guard:
        if _process is None or _process.pid != os.getpid():
            _process = WorkerProcess.start()
        return _process


@signals.worker_process_init.connect
def _on_process_start(**_: Any) -> None:
    current()  # connect and pin threads before the first task, not during it


@signals.worker_process_shutdown.connect
def _on_process_stop(pid: int | None = None, **_: Any) -> None:
    if _process is not None:
        _process.close()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid or os.getpid())


# -- the main process: serve the pool's metrics ---------------------------------------------------------------------


@signals.worker_init.connect
def _on_worker_start(**_: Any) -> None:
    settings = WorkerSettings()
    if settings.worker_metrics_port:
        serve_metrics(settings.worker_metrics_host, settings.worker_metrics_port)


_recovery: RecoveryLoop | None = None


@signals.worker_ready.connect
def _on_worker_ready(**_: Any) -> None:
    """Start the recovery sweep in the main process, once the pool has been forked (so no pool process inherits
    the sweep's thread or connections)."""
    global _recovery
    settings = WorkerSettings()
    if settings.broker_url is None:
        return
    _recovery = start_recovery(settings)


@signals.worker_shutdown.connect
def _on_worker_stop(**_: Any) -> None:
    if _recovery is not None:
        _recovery.stop()
        _recovery.store.close()


def start_recovery(settings: WorkerSettings) -> RecoveryLoop:
    """A running recovery sweep with its own store connection and Celery app (it re-sends what it re-queues)."""
    store = open_store(
        settings.data_dir,
        settings.redis_url,
        redis_chunk_bytes=settings.redis_chunk_bytes,
        heldout_capacity=settings.heldout_per_class,
    )
    sender = create_app(settings)
    loop = RecoveryLoop(store, lambda name, update_id: send_update(sender, name, update_id), settings)
    log.info("recovery sweep every %.1f s (lock TTL %.1f s)", settings.recovery_interval, settings.update_lock_ttl_s)
    return loop.start()


def serve_metrics(host: str, port: int) -> None:
    """Switch this process (and the pool processes it forks) to multiprocess metrics and serve their sum.

    Runs in the main process before the pool starts: metrics made afterwards write to per-process files."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="cl-worker-metrics-")
    for stale in glob.glob(os.path.join(directory, "*.db")):  # values of an earlier run must not add up
        os.unlink(stale)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    values.ValueClass = values.MultiProcessValue()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    start_http_server(port, addr=host, registry=registry)
    log.info("worker metrics on http://%s:%d/metrics (files in %s)", host, port, directory)
