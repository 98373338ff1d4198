"""Watching the captured traffic of each model for input drift, in a background thread of the API process.

For the live version of a model, the **reference** is the held-out data of its lineage (what the forgetting gate
calls trusted: data from the distribution the version was trained on, never trained on itself, so its features look
like those of unseen traffic from that distribution; training samples would not: the network fits them), at most
``CL_DRIFT_REFERENCE`` inputs drawn at random, in the model's feature space (the head's input,
`Classifier.features`) with the classes the model predicts for them.  The **window** is the features and predicted
classes of the last ``CL_DRIFT_WINDOW`` captured inputs; after every ``CL_DRIFT_EVERY`` new ones it is tested against
the reference (`cl_core.drift.two_sample_test`: MMD and the predicted-class mix, permutation p-values, false-positive
rate ``CL_DRIFT_ALPHA`` per window), at most once every ``CL_DRIFT_INTERVAL_S``: under heavy traffic the window still
slides over the newest inputs, the test just runs less often (its cost is bounded in time, not in traffic).  The
window keeps the captured inputs and their predicted classes; features are computed for the window being tested.
A new live version starts a new reference and an empty window.

Each replica tests the traffic it serves (its gauges carry its instance label; the alert sums the replicas' windows).  A
model without capture has no window; a lineage with fewer than `MIN_REFERENCE` held-out samples has no reference
(the report says so).  The monitor's queue is bounded: when tests fall behind, captured batches are skipped.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge
from torch import Tensor

from cl_core.drift import class_shares, two_sample_test
from registry import SampleSet, Store, StoreError
from service.serving import LiveModel, ModelServer
from worker.evaluation import EvaluationData
from worker.history import history_of

log = logging.getLogger(__name__)

MIN_REFERENCE = 20
"""Held-out samples the lineage must have before drift is tested (fewer: the test would see noise)."""
RETRY_REFERENCE_S = 60.0
RESULTS = ("drift", "quiet")


class DriftMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.score = Gauge(
            "cl_input_drift_score",
            "latest drift window of the captured traffic: MMD² of its features against the reference over the "
            "permutation threshold (≥ 1: the features drifted; NaN: not tested yet)",
            ["model"],
            registry=registry,
        )
        self.detected = Gauge(
            "cl_input_drift_detected",
            "1 when the latest drift window failed the test (features or predicted-class mix; false-positive rate "
            "CL_DRIFT_ALPHA per window), else 0",
            ["model"],
            registry=registry,
        )
        self.p_value = Gauge(
            "cl_input_drift_p_value",
            "permutation p-value of the latest drift window, by test (mmd: features; classes: predicted-class mix)",
            ["model", "test"],
            registry=registry,
        )
        self.class_share = Gauge(
            "cl_prediction_class_share",
            "share of each predicted class among the captured inputs of the current drift window (models with at "
            "most CL_MAX_CLASS_LABELS classes)",
            ["model", "class"],
            registry=registry,
        )
        self.windows = Counter(
            "cl_input_drift_windows_total",
            "drift windows tested, by result (drift, quiet)",
            ["model", "result"],
            registry=registry,
        )

    def track(self, model: str) -> None:
        """The model's series from the moment it captures (NaN until a window is tested; counters at 0, so that the
        first detection is an increase Prometheus sees)."""
        if (model,) not in self.score._metrics:
            self.score.labels(model).set(math.nan)
            self.detected.labels(model).set(0)
            for result in RESULTS:
                self.windows.labels(model, result)

    def forget_model(self, model: str) -> None:
        for gauge in (self.score, self.detected):
            with contextlib.suppress(KeyError):
                gauge.remove(model)
        for test in ("mmd", "classes"):
            with contextlib.suppress(KeyError):
                self.p_value.remove(model, test)
        for result in RESULTS:
            with contextlib.suppress(KeyError):
                self.windows.remove(model, result)
        self._clear_classes(model)

    def _clear_classes(self, model: str) -> None:
        for labels in list(self.class_share._metrics):
            if labels[0] == model:
                self.class_share.remove(*labels)

    def observe(self, model: str, window: DriftWindow) -> None:
        self.score.labels(model).set(window.score)
        self.detected.labels(model).set(int(window.detected))
        self.p_value.labels(model, "mmd").set(window.mmd_p_value)
        self.p_value.labels(model, "classes").set(window.class_p_value)
        self.windows.labels(model, "drift" if window.detected else "quiet").inc()

    def shares(self, model: str, shares: dict[str, float], max_classes: int) -> None:
        if len(shares) > max_classes:
            return
        for label, share in shares.items():
            self.class_share.labels(model, label).set(share)


@dataclass(frozen=True)
class Reference:
    version: int
    features: Tensor
    labels: Tensor
    shares: dict[str, float]


@dataclass(frozen=True)
class DriftWindow:
    """One tested window (the API shows these)."""

    at: float
    version: int
    inputs: int
    score: float
    detected: bool
    mmd2: float
    mmd_threshold: float
    mmd_p_value: float
    class_chi2: float
    class_threshold: float
    class_p_value: float
    class_shares: dict[str, float]
    reference_shares: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "version": self.version,
            "inputs": self.inputs,
            "score": self.score,
            "detected": self.detected,
            "mmd2": self.mmd2,
            "mmd_threshold": self.mmd_threshold,
            "mmd_p_value": self.mmd_p_value,
            "class_chi2": self.class_chi2,
            "class_threshold": self.class_threshold,
            "class_p_value": self.class_p_value,
            "class_shares": self.class_shares,
            "reference_shares": self.reference_shares,
        }


Status = Literal["collecting", "no reference", "monitoring"]


@dataclass
class _Watch:
    """One model's window, for one live version."""

    version: int
    reference: Reference | None = None
    reason: str = "no captured traffic of this version yet"
    retry_at: float = 0.0
    inputs: deque[Tensor] = field(default_factory=deque)  # the window's inputs: features are computed per test
    labels: deque[Tensor] = field(default_factory=deque)
    count: int = 0
    since: int = 0
    tested_at: float = -math.inf  # monotonic time of the last test
    windows: deque[DriftWindow] = field(default_factory=deque)


@dataclass(frozen=True)
class DriftState:
    """What `DriftMonitor.state` reports of one model."""

    version: int | None
    status: Status
    detail: str
    reference_samples: int
    window_inputs: int
    windows: list[DriftWindow]


class DriftMonitor:
    """Per model, the reference and window of its live version, tested in a thread of its own."""

    def __init__(
        self,
        store: Store,
        server: ModelServer,
        metrics: DriftMetrics,
        *,
        window: int = 200,
        every: int = 200,
        reference: int = 500,
        permutations: int = 200,
        alpha: float = 0.01,
        kept: int = 20,
        interval_s: float = 0.0,
        max_class_labels: int = 100,
        on_drift: Callable[[str, DriftWindow], None] | None = None,
        queue_limit: int = 64,
    ) -> None:
        self.store, self.server, self.metrics = store, server, metrics
        self.window, self.every, self.reference_size = window, every, reference
        self.permutations, self.alpha, self.kept, self.max_class_labels = permutations, alpha, kept, max_class_labels
        self.interval_s = interval_s
        self.on_drift = on_drift
        self._watches: dict[str, _Watch] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[str, int, Tensor, Tensor] | None] = queue.Queue(queue_limit)
        self._generator = torch.Generator().manual_seed(0)
        self._thread: threading.Thread | None = None
        self.skipped = 0

    # -- fed by the capture writer ----------------------------------------------------------------------------------
    def observe(self, name: str, version: int, inputs: Tensor, probs: Tensor) -> None:
        """Queue captured inputs for the monitor's thread (skipped when it is behind)."""
        self.metrics.track(name)
        try:
            self._queue.put_nowait((name, version, inputs, probs))
        except queue.Full:
            self.skipped += len(inputs)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="drift-monitor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def settle(self, timeout: float = 30.0) -> None:
        """Wait until everything queued so far is processed (tests)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def _run(self) -> None:
        lower_priority()
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self.process(*item)
            except Exception:
                log.exception("the drift monitor failed on a batch of %s", item[0] if item else "?")
            finally:
                self._queue.task_done()

    # -- the work ---------------------------------------------------------------------------------------------------
    def process(self, name: str, version: int, inputs: Tensor, probs: Tensor) -> None:
        live = self.server.current(name)
        if live is None or live.version != version:
            return  # traffic of a version no longer served
        with self._lock:
            watch = self._watches.get(name)
            if watch is None or watch.version != version:
                watch = self._watches[name] = _Watch(version)
                self.metrics.forget_model(name)
                self.metrics.track(name)
        if watch.reference is None and time.monotonic() >= watch.retry_at:
            self._build_reference(name, live, watch)
        now = time.monotonic()
        with self._lock:
            watch.inputs.append(inputs)
            watch.labels.append(probs.argmax(dim=1))
            watch.count += len(inputs)
            watch.since += len(inputs)
            while watch.count - len(watch.inputs[0]) >= self.window:
                watch.count -= len(watch.inputs.popleft())
                watch.labels.popleft()
            ready = (
                watch.reference is not None
                and watch.count >= self.window
                and watch.since >= self.every
                and now - watch.tested_at >= self.interval_s
            )
            window_labels = torch.cat(list(watch.labels))[-self.window :]
            if ready:
                watch.since, watch.tested_at = 0, now
                window_inputs = torch.cat(list(watch.inputs))[-self.window :]
        current = class_shares(window_labels, len(live.classes)).tolist()
        self.metrics.shares(name, dict(zip(live.classes, current, strict=True)), self.max_class_labels)
        if ready and watch.reference is not None:
            with torch.inference_mode():
                window_features = _features(live, window_inputs)
            self._test(name, live, watch, window_features, window_labels)

    def _build_reference(self, name: str, live: LiveModel, watch: _Watch) -> None:
        try:
            experiences = history_of(self.store, name, live.version).experiences  # the lineage's, from its ledger
            held = EvaluationData.gather(self.store, name, experiences, SampleSet.concat([], live.input_shape))
            data = held.trusted(live.input_shape)
        except StoreError as exc:
            watch.reason, watch.retry_at = f"the reference could not be read: {exc}", time.monotonic() + 5
            return
        if len(data) < MIN_REFERENCE:
            watch.reason = (
                f"version {live.version}'s lineage holds {len(data)} held-out samples; the drift reference needs at "
                f"least {MIN_REFERENCE}"
            )
            watch.retry_at = time.monotonic() + RETRY_REFERENCE_S
            return
        generator = torch.Generator().manual_seed(live.version)
        chosen = torch.randperm(len(data), generator=generator)[: self.reference_size]
        inputs = data.inputs[chosen]
        with torch.inference_mode():
            features = _features(live, inputs)
            labels = live.probabilities(inputs).argmax(dim=1)
        shares = class_shares(labels, len(live.classes))
        watch.reference = Reference(
            live.version, features, labels, {c: float(s) for c, s in zip(live.classes, shares.tolist(), strict=True)}
        )
        watch.reason = ""

    def _test(self, name: str, live: LiveModel, watch: _Watch, features: Tensor, labels: Tensor) -> None:
        reference = watch.reference
        assert reference is not None
        result = two_sample_test(
            reference.features,
            reference.labels,
            features,
            labels,
            len(live.classes),
            permutations=self.permutations,
            alpha=self.alpha,
            generator=self._generator,
        )
        shares = class_shares(labels, len(live.classes)).tolist()
        window = DriftWindow(
            at=time.time(),
            version=live.version,
            inputs=len(labels),
            score=result.score,
            detected=result.detected,
            mmd2=result.mmd2,
            mmd_threshold=result.mmd_threshold,
            mmd_p_value=result.mmd_p,
            class_chi2=result.chi2,
            class_threshold=result.chi2_threshold,
            class_p_value=result.chi2_p,
            class_shares=dict(zip(live.classes, shares, strict=True)),
            reference_shares=reference.shares,
        )
        with self._lock:
            watch.windows.append(window)
            while len(watch.windows) > self.kept:
                watch.windows.popleft()
        self.metrics.observe(name, window)
        if window.detected:
            log.warning(
                "input drift in the traffic of %s version %s: score %.2f, p-values %.4f (features), %.4f (classes)",
                name,
                live.version,
                window.score,
                window.mmd_p_value,
                window.class_p_value,
            )
            if self.on_drift is not None:
                try:
                    self.on_drift(name, window)
                except Exception:
                    log.exception("reacting to the drift of %s failed", name)

    # -- reading ------------------------------------------------------------------------------------------------------
    def state(self, name: str) -> DriftState:
        live = self.server.current(name)
        with self._lock:
            watch = self._watches.get(name)
            if watch is None or live is None or watch.version != live.version:
                version = None if live is None else live.version
                detail = "no live version" if live is None else "no captured traffic of this version yet"
                return DriftState(version, "collecting", detail, 0, 0, [])
            windows = list(reversed(watch.windows))
            if watch.reference is None:
                filled = min(watch.count, self.window)
                return DriftState(watch.version, "no reference", watch.reason, 0, filled, windows)
            status: Status = "monitoring" if windows else "collecting"
            detail = "" if windows else f"{min(watch.count, self.window)} of {self.window} inputs of the first window"
            return DriftState(
                watch.version, status, detail, len(watch.reference.labels), min(watch.count, self.window), windows
            )

    def drifting(self, name: str) -> bool:
        """Whether the latest window of the model's live version failed the test."""
        with self._lock:
            watch = self._watches.get(name)
            return bool(watch and watch.windows and watch.windows[-1].detected)

    def forget(self, name: str) -> None:
        with self._lock:
            self._watches.pop(name, None)
        self.metrics.forget_model(name)


def lower_priority(niceness: int = 10) -> None:
    """Let the calling thread yield the CPU to the serving threads when they compete for it (Linux: a thread is a
    task with its own nice value; elsewhere nothing changes).  Its work is torch kernels that release the GIL, so a
    slower drift thread never holds up a request."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)


def _features(live: LiveModel, inputs: Tensor) -> Tensor:
    """The model's features (the head's input) of ``inputs``, on the CPU."""
    features = getattr(live.model, "features", None)
    if features is None:
        raise TypeError(f"model {live.name} has no features(): it is not a Classifier")
    out: Tensor = features(inputs.to(live.device))
    return out.float().cpu().reshape(len(inputs), -1)
