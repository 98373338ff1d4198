"""Metrics of updates, exported by the process that runs them: the API process in the embedded mode, each Celery
worker (its own HTTP endpoint) in distributed mode, so durations and failures are measured where they happen."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from registry import UpdateRecord

UPDATE_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class UpdateMetrics:
    """What a process that runs updates measures."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.outcomes = Counter(
            "cl_updates_total", "finished updates by outcome", ["model", "outcome"], registry=registry
        )
        self.duration = Histogram(
            "cl_update_duration_seconds",
            "wall time of an update, start to finish",
            ["model"],
            buckets=UPDATE_BUCKETS,
            registry=registry,
        )
        # livesum: with Prometheus' multiprocess mode, a pool process killed mid-update stops counting
        self.running = Gauge(
            "cl_updates_running", "updates running now", ["model"], registry=registry, multiprocess_mode="livesum"
        )

        self.quarantined = Counter(
            "cl_samples_quarantined",
            "samples label screening set aside (systematic label flips), by the updates that screened them",
            ["model"],
            registry=registry,
        )

        # how updates trained (worker.selection): the compute the training budget and the choice spend
        self.candidates = Counter(
            "cl_update_candidates", "candidates trained to choose λ and the replay share", ["model"], registry=registry
        )
        self.training_steps = Counter(
            "cl_update_training_steps", "optimiser steps of updates, candidates included", ["model"], registry=registry
        )
        self.training_seconds = Counter(
            "cl_update_training_seconds",
            "wall time of updates' training, candidates included",
            ["model"],
            registry=registry,
        )
        self.chosen_lambda = Gauge(
            "cl_update_chosen_lambda",
            "the penalty strength the latest update chose (or was given)",
            ["model"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )

    def observe(self, record: UpdateRecord) -> None:
        self.outcomes.labels(record.model, record.status).inc()
        screening = record.metrics.get("screening") or {}
        self.quarantined.labels(record.model).inc(int(screening.get("quarantined", 0)))
        training = record.metrics.get("training") or {}
        if training:
            self.candidates.labels(record.model).inc(int(training.get("candidates", 0)))
            self.training_steps.labels(record.model).inc(int(training.get("total_steps", 0)))
            seconds = float(training.get("selection_seconds", 0.0)) + float(training.get("training_seconds", 0.0))
            self.training_seconds.labels(record.model).inc(seconds)
            if isinstance(training.get("lam"), int | float):
                self.chosen_lambda.labels(record.model).set(training["lam"])
        if record.started_at is not None and record.finished_at is not None:
            self.duration.labels(record.model).observe(max(0.0, record.finished_at - record.started_at))
