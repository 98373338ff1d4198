"""The models being served: one immutable `LiveModel` per name, swapped atomically when a live pointer moves.

A swap replaces a reference, so a request that already holds the old `LiveModel` finishes on it and none fails.
The server learns of promotions from the store's notifications (in-process, or Redis pub/sub in distributed mode)
and, in case one was missed, by re-reading every pointer on an interval.  With a signing key (`registry.signing`)
both paths serve a pointer only with a valid, newer promotion record whose digest matches the weights loaded; a
refused pointer leaves the served version in place, and is logged (once per pointer) and counted (every read); it
is examined again once the pointer or its record changes.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from cl_core.models import ModelSpec, build_model
from cl_core.preprocessing import Preprocessing
from cl_core.trainer import resolve_device
from registry import LivePointer, NotFound, Store, StoreError, Subscription
from registry import tensors as st
from registry.signing import PromotionRecord, Reason, Rejected, Verifier, weights_digest
from worker.audit import audit
from worker.history import without_history

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
    weights_sha256: str = ""  # of the stored weights it was built from (only when signing is on)
    promotion: PromotionRecord | None = None  # the signed record it was served under (None: signing is off)
    preprocessing: Preprocessing | None = None  # the model's image preprocessing (None: it takes no images)

    def probabilities(self, inputs: Tensor) -> Tensor:
        """Softmax over the classes, computed on the serving device (inference mode)."""
        with torch.inference_mode():
            logits = self.model(inputs.to(self.device))
            return torch.softmax(logits.float(), dim=1).cpu()


SwapListener = Callable[[str, "LiveModel | None"], None]
RefusalListener = Callable[[str, Reason], None]


class ModelServer:
    """Holds the live version of every model in memory."""

    def __init__(
        self,
        store: Store,
        *,
        device: str = "auto",
        reload_interval_s: float = 5.0,
        verifier: Verifier | None = None,
    ) -> None:
        self.store = store
        self._verifier = verifier
        self._refused: dict[str, tuple[LivePointer, Reason]] = {}  # the pointer last refused per model
        self._refusal_listeners: list[RefusalListener] = []
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

    def on_refusal(self, listener: RefusalListener) -> None:
        """Called with (model, reason) every time a live pointer is read and refused."""
        self._refusal_listeners.append(listener)

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
        """Serve whatever the store's pointer says now (no-op when already served), if its promotion is signed."""
        with self._loading:
            try:
                pointer = self.store.live_pointer(name)
            except NotFound:
                self._swap(name, None)
                return
            current = self._live.get(name)
            if pointer.version is None:
                if current is not None:
                    self._swap(name, None)
                return
            if self._verifier is not None:
                self._refresh_signed(name, pointer.version, pointer, current, self._verifier)
            elif current is None or current.version != pointer.version:
                self._serve(self._load(name, pointer.version, None))

    def _refresh_signed(
        self, name: str, version: int, pointer: LivePointer, current: LiveModel | None, verifier: Verifier
    ) -> None:
        served = current if current is not None and current.version == version else None
        stored = None if pointer.promotion is None else PromotionRecord.parse(pointer.promotion)
        if served is not None and served.promotion is not None and stored == served.promotion:
            self._refused.pop(name, None)  # back to what is served: a later forgery is news again
            return
        refused = self._refused.get(name)
        if refused is not None and refused[0] == pointer:
            self._count(name, refused[1])  # the same refused pointer, read again: counted, not logged again
            return
        try:
            record = verifier.check(name, version, pointer.promotion)
            if served is not None:  # the served version, promoted again: keep the model in memory
                Verifier.check_weights(record, served.weights_sha256)
                live = dataclasses.replace(served, promotion=record)
            else:
                live = self._load(name, version, record)
        except Rejected as exc:
            self._refuse(name, pointer, exc)
            return
        verifier.accept(record)
        self._refused.pop(name, None)
        if served is not None:
            with self._lock:
                self._live[name] = live
        else:
            self._serve(live)

    def _load(self, name: str, version: int, record: PromotionRecord | None) -> LiveModel:
        """A stored version, ready to serve; with a record, only if its weights hash to the signed digest (else
        `Rejected`, before anything is built)."""
        meta = self.store.get_version(name, version)
        weights = self.store.read_weights(name, version)
        digest = ""  # hashed only when signing is on (a large model takes a moment)
        if record is not None:
            digest = weights_digest(weights)
            Verifier.check_weights(record, digest)
        spec = ModelSpec.from_json(meta.spec)
        model = build_model(spec)
        model.load_state_dict(st.loads(weights))
        return LiveModel(
            name,
            version,
            tuple(spec.classes),
            tuple(spec.input_shape),
            model.to(self.device).eval(),
            self.device,
            without_history(meta.metrics),  # the gauges' figures; the ledger stays in the store
            digest,
            record,
            self._preprocessing(name),
        )

    def _preprocessing(self, name: str) -> Preprocessing | None:
        spec = self.store.get_model(name).preprocessing
        return None if spec is None else Preprocessing.from_json(spec)

    def _serve(self, live: LiveModel) -> None:
        self._swap(live.name, live)
        promotion = "" if live.promotion is None else f" (promotion {live.promotion.seq})"
        log.info("serving %s version %s%s", live.name, live.version, promotion)

    def _refuse(self, name: str, pointer: LivePointer, exc: Rejected) -> None:
        self._refused[name] = (pointer, exc.reason)
        current = self._live.get(name)
        served = "nothing" if current is None else f"version {current.version}"
        log.warning("refusing the live pointer of %s (%s): %s; still serving %s", name, exc.reason, exc, served)
        audit(
            "promotion.refused",
            actor=None,
            model=name,
            version=pointer.version,
            reason=exc.reason,
            serving=None if current is None else current.version,
        )
        self._count(name, exc.reason)

    def _count(self, name: str, reason: Reason) -> None:
        for listener in self._refusal_listeners:
            listener(name, reason)

    def _swap(self, name: str, live: LiveModel | None) -> None:
        with self._lock:
            if live is None:
                self._live.pop(name, None)
            else:
                self._live[name] = live
        for listener in self._listeners:
            listener(name, live)
