"""The models being served: one immutable `LiveModel` per name, swapped atomically when a live pointer moves.

A swap replaces a reference, so a request that already holds the old `LiveModel` finishes on it and none fails.
The server learns of promotions from the store's notifications (in-process, or Redis pub/sub in distributed mode)
and, in case one was missed, by re-reading every pointer on an interval.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from cl_core.preprocessing import Preprocessing
from cl_core.trainer import resolve_device
from registry import NotFound, Store, StoreError, Subscription
from worker.pipeline import load_version

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiveModel:
    name: str
    version: int
    classes: tuple[str, ...]
    input_shape: tuple[int, ...]
    model: nn.Module
    device: torch.device
    metrics: dict[str, Any]
    preprocessing: Preprocessing | None = None  # the model's image preprocessing (None: it takes no images)

    def probabilities(self, inputs: Tensor) -> Tensor:
        """Softmax over the classes, computed on the serving device (inference mode)."""
        with torch.inference_mode():
            logits = self.model(inputs.to(self.device))
            return torch.softmax(logits.float(), dim=1).cpu()


SwapListener = Callable[[str, "LiveModel | None"], None]


class ModelServer:
    """Holds the live version of every model in memory."""

    def __init__(self, store: Store, *, device: str = "auto", reload_interval_s: float = 5.0) -> None:
        self.store = store
        self.device = resolve_device(device)
        self._live: dict[str, LiveModel] = {}
        self._lock = threading.Lock()
        self._loading = threading.Lock()
        self._listeners: list[SwapListener] = []
        self._subscription: Subscription | None = None
        self._stop = threading.Event()
        self._interval = reload_interval_s
        self._poller: threading.Thread | None = None
        self.ready = False

    # -- reading ---------------------------------------------------------------------------------------------------
    def current(self, name: str) -> LiveModel | None:
        return self._live.get(name)

    def served(self) -> dict[str, int]:
        return {name: live.version for name, live in self._live.items()}

    def on_swap(self, listener: SwapListener) -> None:
        self._listeners.append(listener)

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Load every live version, then follow promotions (notifications plus a periodic re-read)."""
        self._subscription = self.store.subscribe(lambda name, version: self.refresh(name))
        self.refresh_all()
        self.ready = True
        self._poller = threading.Thread(target=self._poll, name="live-pointer-poller", daemon=True)
        self._poller.start()

    def stop(self) -> None:
        self._stop.set()
        if self._subscription is not None:
            self._subscription.close()
        if self._poller is not None:
            self._poller.join(timeout=5)

    def _poll(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.refresh_all()
            except StoreError:
                log.warning("could not re-read live pointers; serving what is loaded", exc_info=True)

    def refresh_all(self) -> None:
        names = {m.name for m in self.store.list_models()}
        for name in names:
            self.refresh(name)
        for name in set(self._live) - names:
            self._swap(name, None)

    def refresh(self, name: str) -> None:
        """Serve whatever the store's pointer says now (no-op when already served)."""
        with self._loading:
            try:
                version = self.store.live_version(name)
            except NotFound:
                self._swap(name, None)
                return
            current = self._live.get(name)
            if version is None:
                if current is not None:
                    self._swap(name, None)
                return
            if current is not None and current.version == version:
                return
            loaded = load_version(self.store, name, version)
            model = loaded.model.to(self.device).eval()
            meta = self.store.get_version(name, version)
            spec = self.store.get_model(name).preprocessing
            live = LiveModel(
                name,
                version,
                tuple(loaded.spec.classes),
                tuple(loaded.spec.input_shape),
                model,
                self.device,
                meta.metrics,
                None if spec is None else Preprocessing.from_json(spec),
            )
            self._swap(name, live)
            log.info("serving %s version %s", name, version)

    def _swap(self, name: str, live: LiveModel | None) -> None:
        with self._lock:
            if live is None:
                self._live.pop(name, None)
            else:
                self._live[name] = live
        for listener in self._listeners:
            listener(name, live)
