"""Capturing prediction traffic: a sampled share of each capturing model's predicted inputs becomes unlabeled
samples (`registry.captures`), stored in batches by a background thread, never on the request path.

The predict route makes one call after inference, `TrafficCapture.offer`: for a model whose ``capture`` setting is
on it draws which inputs to keep (each with probability ``rate``), gives each kept input a sample id from a block
this process reserved beforehand (`Store.reserve_ids`), queues them and returns the ids, which the answer carries
(feedback and deletion take them).  Nothing there touches the store or waits: when the queue holds
``CL_CAPTURE_QUEUE_LIMIT`` inputs, or no reserved id is left, the inputs are not captured (counted in
``cl_captures_total{outcome}``) and the prediction carries no id.

The writer thread wakes every ``CL_CAPTURE_FLUSH_MS``, stores what was queued (one `Store.add_captures` per model),
hands it to the observers (the drift monitor), keeps every capturing model's block of ids topped up and re-reads the
models' capture settings every ``CL_RELOAD_INTERVAL_S`` (a change made at another replica arrives within that).

What a crash loses: the queued captures (at most ``CL_CAPTURE_FLUSH_MS`` of traffic; their ids were answered but
are never stored, so feedback on them is "unknown") and, in the embedded store, rows written in the last moments
before it (see `registry.local`).  The reserved ids a process did not use are never given to anything.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge
from torch import Tensor

from registry import NotFound, Store, StoreError
from registry.captures import CaptureConfig

log = logging.getLogger(__name__)

Observer = Callable[[str, int, Tensor, Tensor], None]
"""Told (model, version, inputs, probabilities) of every batch of captured inputs, in the writer thread."""

OUTCOMES = ("stored", "reservoir", "queue_full", "no_ids", "store_error", "off")
FEEDBACK = ("accepted", "unknown", "answered")


class CaptureMetrics:
    """What capture measures (exported by the API process that predicts)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.captures = Counter(
            "cl_captures_total",
            "predicted inputs sampled for capture, by outcome: stored; reservoir (not kept by the full reservoir); "
            "queue_full, no_ids, store_error, off (dropped before the store)",
            ["model", "outcome"],
            registry=registry,
        )
        self.queued = Gauge("cl_capture_queue_inputs", "captured inputs waiting to be stored", registry=registry)
        self.feedback = Counter(
            "cl_feedback_total",
            "feedback items by result (accepted, unknown, answered)",
            ["model", "result"],
            registry=registry,
        )

    def track(self, model: str) -> None:
        """The model's series at 0 from the moment it captures (so that a first increase is one Prometheus sees)."""
        for outcome in OUTCOMES:
            self.captures.labels(model, outcome)
        for result in FEEDBACK:
            self.feedback.labels(model, result)

    def forget_model(self, model: str) -> None:
        for result in FEEDBACK:
            with contextlib.suppress(KeyError):
                self.feedback.remove(model, result)
        for outcome in OUTCOMES:
            with contextlib.suppress(KeyError):
                self.captures.remove(model, outcome)


@dataclass(frozen=True)
class _Offer:
    """One predict request's captured inputs and their probabilities (only the captured rows: a large request
    sampled at a low rate does not stay in memory whole), with their ids."""

    name: str
    version: int
    inputs: Tensor
    probs: Tensor
    ids: list[str]


class _IdBlocks:
    """Sample ids reserved for captures, per model: [next, end) ranges (guarded by the caller's lock)."""

    def __init__(self) -> None:
        self._ranges: dict[str, list[list[int]]] = {}

    def take(self, name: str, count: int) -> list[str]:
        out: list[str] = []
        ranges = self._ranges.get(name, [])
        while ranges and len(out) < count:
            current = ranges[0]
            n = min(count - len(out), current[1] - current[0])
            out.extend(str(i) for i in range(current[0], current[0] + n))
            current[0] += n
            if current[0] >= current[1]:
                ranges.pop(0)
        return out

    def remaining(self, name: str) -> int:
        return sum(end - start for start, end in self._ranges.get(name, []))

    def add(self, name: str, first: int, count: int) -> None:
        self._ranges.setdefault(name, []).append([first, first + count])

    def drop(self, name: str) -> None:
        self._ranges.pop(name, None)


class TrafficCapture:
    """The capture queue and its writer thread (one per API process)."""

    def __init__(
        self,
        store: Store,
        metrics: CaptureMetrics,
        *,
        queue_limit: int = 10_000,
        flush_s: float = 1.0,
        id_block: int = 1024,
        reload_s: float = 5.0,
        max_samples_limit: int = 100_000,
    ) -> None:
        self.store, self.metrics = store, metrics
        self._max_samples = max_samples_limit  # an imported model's setting is held to it too
        self._limit, self._flush_s, self._block, self._reload_s = queue_limit, flush_s, id_block, reload_s
        self._configs: dict[str, CaptureConfig] = {}  # replaced whole, never changed in place: read without a lock
        self._random = random.Random().random
        self._lock = threading.Lock()
        self._queue: list[_Offer] = []
        self._queued = 0  # inputs queued or being stored
        self._offered = 0  # offers queued so far (what `flush` waits for)
        self._done = 0
        self._drained = threading.Condition()
        self._ids = _IdBlocks()
        self._observers: list[Observer] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned = 0.0

    # -- the request path -----------------------------------------------------------------------------------------
    def offer(self, name: str, version: int, inputs: Tensor, probs: Tensor) -> list[str | None] | None:
        """The sample ids of the inputs captured from one prediction (None where an input was not captured); None
        when the model captures nothing.  Never blocks on the store."""
        config = self._configs.get(name)
        if config is None or config.rate <= 0.0:
            return None
        n = len(inputs)
        rand, rate = self._random, config.rate
        rows = list(range(n)) if rate >= 1.0 else [i for i in range(n) if rand() < rate]
        answer: list[str | None] = [None] * n
        if not rows:
            return answer
        with self._lock:
            if self._queued + len(rows) > self._limit:
                self.metrics.captures.labels(name, "queue_full").inc(len(rows))
                return answer
            ids = self._ids.take(name, len(rows))
            if len(ids) < len(rows):
                self.metrics.captures.labels(name, "no_ids").inc(len(rows) - len(ids))
                self._wake.set()  # reserve more now
                rows = rows[: len(ids)]
            if not ids:
                return answer
            kept = (inputs, probs) if len(rows) == n else (inputs[rows], probs[rows])
            self._queue.append(_Offer(name, version, *kept, ids))
            self._queued += len(rows)
            self._offered += 1
        for row, sample_id in zip(rows, ids, strict=True):
            answer[row] = sample_id
        return answer

    # -- configuration ----------------------------------------------------------------------------------------------
    def configure(self, name: str, config: CaptureConfig | None) -> None:
        """Apply a model's capture setting in this process now (others re-read it within CL_RELOAD_INTERVAL_S)."""
        configs = dict(self._configs)
        if config is None:
            configs.pop(name, None)
        else:
            configs[name] = config
            self.metrics.track(name)
        self._configs = configs
        if config is None or config.rate <= 0:
            with self._lock:
                self._ids.drop(name)
        else:  # ids for the next predictions now, not at the writer's next round
            try:
                self._refill_one(name)
            except StoreError:
                self._wake.set()

    def config(self, name: str) -> CaptureConfig | None:
        return self._configs.get(name)

    def capturing(self) -> dict[str, CaptureConfig]:
        return dict(self._configs)

    def refresh(self) -> None:
        """Re-read every model's capture setting from the store."""
        configs = {}
        for record in self.store.list_models():
            if record.capture is None:
                continue
            try:
                configs[record.name] = CaptureConfig.from_json(record.capture)
            except ValueError as exc:
                log.warning("ignoring the capture setting of %s: %s", record.name, exc)
        with self._lock:
            for name in set(self._configs) - {n for n, c in configs.items() if c.rate > 0}:
                self._ids.drop(name)
        for name in configs:
            self.metrics.track(name)
        self._configs = configs

    def add_observer(self, observer: Observer) -> None:
        self._observers.append(observer)

    # -- the writer thread ------------------------------------------------------------------------------------------
    def start(self) -> None:
        try:
            self.refresh()
            self._refill()
        except StoreError:
            log.warning("could not read the capture settings at start; the writer retries", exc_info=True)
        self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Store what is queued (within ``timeout``) and stop the writer."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until what was offered before this call is stored (False on timeout): feedback may name an id that
        was answered a moment ago."""
        with self._lock:
            target = self._offered
        if self._thread is None or not self._thread.is_alive():
            return self._done >= target
        self._wake.set()
        with self._drained:
            return self._drained.wait_for(lambda: self._done >= target, timeout)

    def _run(self) -> None:
        reread = time.monotonic() + self._reload_s
        while True:
            stopping = self._stop.is_set()
            if not stopping:
                self._wake.wait(self._flush_s)
            self._wake.clear()
            try:
                if time.monotonic() >= reread:
                    reread = time.monotonic() + self._reload_s
                    self.refresh()
                self._refill()
            except StoreError:
                self._warn("could not refresh the capture settings or reserve ids")
            except Exception:
                log.exception("the capture writer failed to refresh")
            try:
                self.drain()
            except Exception:
                log.exception("the capture writer failed")
            if stopping:
                return

    def _refill(self) -> None:
        for name, config in self._configs.items():
            if config.rate > 0:
                self._refill_one(name)

    def _refill_one(self, name: str) -> None:
        """Reserve a block of ids for the model when fewer than half a block are left."""
        with self._lock:
            low = self._ids.remaining(name) < max(1, self._block // 2)
        if not low:
            return
        try:
            first = self.store.reserve_ids(name, self._block)
        except NotFound:
            return
        with self._lock:
            if name in self._configs:
                self._ids.add(name, first, self._block)

    def drain(self) -> None:
        """Store everything queued now (the writer's step; tests call it to be deterministic)."""
        with self._lock:
            batch, self._queue = self._queue, []
            upto = self._offered
        self.metrics.queued.set(self._queued)
        stored_inputs = 0
        by_model: dict[str, list[_Offer]] = {}
        for offer in batch:
            by_model.setdefault(offer.name, []).append(offer)
        for name, offers in by_model.items():
            stored_inputs += self._store(name, offers)
        with self._lock:
            self._queued -= stored_inputs
        self.metrics.queued.set(self._queued)
        with self._drained:
            self._done = max(self._done, upto)
            self._drained.notify_all()

    def _store(self, name: str, offers: list[_Offer]) -> int:
        ids = [i for offer in offers for i in offer.ids]
        config = self._configs.get(name)
        if config is None:  # switched off since the prediction: nothing is kept
            self.metrics.captures.labels(name, "off").inc(len(ids))
            return len(ids)
        for offer in offers:  # the drift monitor sees the traffic whatever the store does
            for observer in self._observers:
                try:
                    observer(name, offer.version, offer.inputs, offer.probs)
                except Exception:
                    log.exception("a capture observer failed")
        inputs = torch.cat([offer.inputs for offer in offers])
        try:
            stored = self.store.add_captures(name, inputs, ids, min(config.max_samples, self._max_samples))
        except NotFound:
            return len(ids)  # the model was deleted meanwhile
        except StoreError:
            self.metrics.captures.labels(name, "store_error").inc(len(ids))
            self._warn(f"could not store {len(ids)} captured inputs of {name}")
            return len(ids)
        self.metrics.captures.labels(name, "stored").inc(len(stored))
        if len(stored) < len(ids):
            self.metrics.captures.labels(name, "reservoir").inc(len(ids) - len(stored))
        return len(ids)

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._warned > 60:
            self._warned = now
            log.warning("%s (the store is unreachable?); captures are dropped meanwhile", message, exc_info=True)

    # -- housekeeping -----------------------------------------------------------------------------------------------
    def apply_retention(self, max_age_s: float | None) -> dict[str, int]:
        """Drop observed captures older than ``max_age_s`` from every capturing model's reservoir."""
        dropped = {}
        for name, config in self._configs.items():
            try:
                capacity = min(config.max_samples, self._max_samples)
                dropped[name] = self.store.trim_captures(name, capacity, max_age_s=max_age_s)
            except NotFound:
                continue
        return dropped
