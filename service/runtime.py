"""Everything a running service holds: built in the lifespan (never at import), torn down at shutdown."""

from __future__ import annotations

import importlib
import logging
import threading
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from cl_core.models import register_architecture
from registry import Store, StoreError, open_store
from registry.signing import Verifier
from service.batching import Batchers
from service.capture import CaptureMetrics, TrafficCapture
from service.drift import DriftMetrics, DriftMonitor, DriftWindow
from service.observability import ApiMetrics
from service.quotas import RateLimiter
from service.serving import LiveModel, ModelServer
from service.settings import Settings
from worker.audit import audit
from worker.deletion import repair_deletion_records
from worker.executor import Executor, InProcessExecutor
from worker.metrics import UpdateMetrics
from worker.recovery import RecoveryLoop
from worker.scheduling import UpdatePolicy

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    store: Store
    server: ModelServer
    executor: Executor
    batchers: Batchers
    policy: UpdatePolicy
    registry: CollectorRegistry
    api_metrics: ApiMetrics
    update_metrics: UpdateMetrics | None
    limiter: RateLimiter
    recovery: RecoveryLoop
    stopping: threading.Event = field(default_factory=threading.Event)
    capture: TrafficCapture = field(kw_only=True)  # prediction traffic kept as unlabeled samples
    drift: DriftMonitor = field(kw_only=True)  # input drift of the captured traffic

    async def close(self) -> None:
        self.stopping.set()
        self.recovery.stop()
        self.executor.shutdown(wait=True)
        self.server.stop()
        await self.batchers.close()
        self.capture.stop()
        self.drift.stop()
        self.store.close()


def register_operator_architectures(settings: Settings) -> None:
    """Import the operator's own body factories (``{"name": "package.module:factory"}``)."""
    for name, target in settings.architectures.items():
        module_name, _, attribute = target.partition(":")
        factory = getattr(importlib.import_module(module_name), attribute)
        register_architecture(name, factory)


def build_runtime(settings: Settings, registry: CollectorRegistry, api_metrics: ApiMetrics) -> Runtime:
    settings.apply_threads()
    register_operator_architectures(settings)
    signer = settings.signer()
    store = open_store(
        settings.data_dir,
        settings.redis_url,
        redis_chunk_bytes=settings.redis_chunk_bytes,
        signer=signer,
        heldout_capacity=settings.heldout_per_class,
    )
    store.on_listener_error(lambda name, _: api_metrics.listener_errors.labels(name).inc())
    update_metrics: UpdateMetrics | None = None
    executor: Executor
    if settings.redis_url:
        from worker.celery_executor import CeleryExecutor  # distributed mode only

        executor = CeleryExecutor(store, settings)
    else:
        update_metrics = UpdateMetrics(registry)  # updates run in this process: measure them here
        executor = InProcessExecutor(
            store, settings, max_parallel=settings.update_workers, on_finish=update_metrics.observe
        )
    server = ModelServer(
        store,
        device=settings.device,
        reload_interval_s=settings.reload_interval_s,
        verifier=None if signer is None else Verifier(signer),
    )
    server.on_refusal(lambda name, reason: api_metrics.promotions_rejected.labels(name, reason).inc())

    def export(name: str, live: LiveModel | None) -> None:
        api_metrics.observe_live(
            name,
            None if live is None else live.version,
            {} if live is None else live.metrics,
            settings.max_class_labels,
        )

    server.on_swap(export)
    batchers = Batchers(
        server,
        max_batch=settings.max_batch_size,
        max_wait_s=settings.max_wait_ms / 1000,
        queue_limit=settings.predict_queue_limit,
        on_batch=lambda name, inputs: api_metrics.batch_size.labels(name).observe(inputs),
    )
    policy = UpdatePolicy(
        min_samples_per_new_class=settings.policy_min_samples_per_new_class,
        after_labeled=settings.policy_after_labeled,
        method=settings.policy_method,
        after_drift_feedback=settings.policy_drift_feedback,
    )
    limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
    recovery = RecoveryLoop(store, executor.submit, settings)  # re-queues running updates nobody holds
    capture, drift = build_traffic(settings, registry, store, server)
    runtime = Runtime(
        settings,
        store,
        server,
        executor,
        batchers,
        policy,
        registry,
        api_metrics,
        update_metrics,
        limiter,
        recovery,
        capture=capture,
        drift=drift,
    )
    drift.on_drift = lambda name, window: _drifted(runtime, name, window)
    return runtime


def build_traffic(
    settings: Settings, registry: CollectorRegistry, store: Store, server: ModelServer
) -> tuple[TrafficCapture, DriftMonitor]:
    """The capture queue and the drift monitor that watches what it captures."""
    capture = TrafficCapture(
        store,
        CaptureMetrics(registry),
        queue_limit=settings.capture_queue_limit,
        flush_s=settings.capture_flush_ms / 1000,
        id_block=settings.capture_id_block,
        reload_s=settings.reload_interval_s,
        max_samples_limit=settings.capture_max_samples_limit,
    )
    drift = DriftMonitor(
        store,
        server,
        DriftMetrics(registry),
        window=settings.drift_window,
        every=settings.drift_every,
        reference=settings.drift_reference,
        permutations=settings.drift_permutations,
        alpha=settings.drift_alpha,
        kept=settings.drift_windows_kept,
        interval_s=settings.drift_interval_s,
        max_class_labels=settings.max_class_labels,
    )
    capture.add_observer(drift.observe)
    server.on_swap(lambda name, live: drift.forget(name) if live is None else None)
    return capture, drift


def _drifted(runtime: Runtime, name: str, window: DriftWindow) -> None:
    """The policy may start an update now that the traffic drifted (``CL_POLICY_DRIFT_FEEDBACK``)."""
    from service.policy_updates import start_drift_update  # imports this module

    try:
        update_id = start_drift_update(runtime, name, "drift monitor")
    except StoreError:
        log.warning("could not start the drift update of %s", name, exc_info=True)
        return
    if update_id is not None:
        log.info("input drift of %s (score %.2f): update %s", name, window.score, update_id)


def enforce_retention(runtime: Runtime) -> dict[str, int]:
    """Apply the retention settings to every model once; returns samples dropped per model (also counted in
    /metrics)."""
    settings = runtime.settings
    dropped: dict[str, int] = {}
    for model in runtime.store.list_models():
        # held-out data is not raw data: the held-out store keeps it (CL_HELDOUT_PER_CLASS per class), so the gate
        # and the forgetting report keep their data whatever retention drops
        result = runtime.store.apply_retention(
            model.name, max_age_s=settings.retention_max_age_s, max_samples=settings.retention_max_samples
        )
        total = sum(result.values())
        if total:
            runtime.api_metrics.samples_dropped.labels(model.name, "retention").inc(total)
            audit("samples.dropped", actor="retention", model=model.name, **result)
        dropped[model.name] = total
    if settings.retention_max_age_s is not None:  # observed captures, like consumed raw samples, by age
        for name, captures in runtime.capture.apply_retention(settings.retention_max_age_s).items():
            if captures:
                audit("captures.dropped", actor="retention", model=name, captures=captures)
    return dropped


def _retention_loop(runtime: Runtime) -> None:
    while not runtime.stopping.wait(runtime.settings.retention_interval_s):
        try:
            enforce_retention(runtime)
        except StoreError:
            log.warning("retention could not run this time", exc_info=True)


def start(runtime: Runtime) -> None:
    try:
        repair_deletion_records(runtime.store)
    except StoreError:  # the store is unreachable now: reading a record ignores invalid entries all the same
        log.warning("the deletion records could not be checked at start", exc_info=True)
    runtime.server.start()
    runtime.capture.start()
    runtime.drift.start()
    runtime.executor.start()
    if runtime.settings.retention_max_age_s is not None or runtime.settings.retention_max_samples is not None:
        threading.Thread(target=_retention_loop, args=(runtime,), name="retention", daemon=True).start()
    # embedded: re-queue what the last stop interrupted; distributed: send again tasks that may have been lost
    resumed = runtime.executor.recover(runtime.store)
    if resumed:
        log.info("re-queued %d update(s) interrupted or lost before this start", len(resumed))
    runtime.recovery.start()  # from now on, every half lock TTL
