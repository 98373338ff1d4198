"""The model's update lock, taken in one way everywhere (updates, weight imports, deletion scrubs, giving up on an
update, the recovery sweep): acquire, keep alive in the background, expose the fencing token, release.

Whoever holds the lock is the only one that may change a running update or commit a version of the model; the
store rejects a commit or an acknowledgement with a stale token, so a holder that stalled past its lock's expiry
cannot overwrite the work of the next one.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from registry import Store, StoreUnavailable

log = logging.getLogger(__name__)


class LockLost(Exception):
    """Another worker holds the model's update lock (or this one's lock expired under it)."""


def here() -> str:
    """This process, as lock owners name it: ``<host>:<pid>``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def update_owner(update_id: str, where: str | None = None) -> str:
    """The owner name of a lock held to run an update: ``update:<id> <where>`` (the recovery sweep reads the
    update id from it to tell a live run from a lock held for something else)."""
    return f"update:{update_id} {where or here()}"


def task_owner(purpose: str) -> str:
    """The owner name of a lock held for other work (an import, a deletion scrub, the recovery sweep)."""
    return f"{purpose}-{uuid.uuid4().hex[:8]} {here()}"


def runs_update(owner: str, update_id: str) -> bool:
    """Whether a lock owner's name says it is running ``update_id``."""
    return owner.split(" ", 1)[0] == f"update:{update_id}"


class HeldLock:
    """A held update lock: its fencing token, and whether it is still held."""

    def __init__(self, store: Store, name: str, token: int, ttl_s: float) -> None:
        self.store, self.name, self.token, self.ttl_s = store, name, token, ttl_s
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep_alive, name=f"lock-{name}", daemon=True)
        self._thread.start()

    def _keep_alive(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                if not self.store.refresh_update_lock(self.name, self.token, self.ttl_s):
                    self.lost.set()
                    return
            except Exception:  # a store hiccup: try again at the next tick, the TTL leaves room for two
                log.warning("could not refresh the update lock of %s", self.name, exc_info=True)

    def check(self) -> None:
        """Raise `LockLost` once the background refresh found the lock gone."""
        if self.lost.is_set():
            raise LockLost(f"the update lock of {self.name!r} was lost; another worker may be running this model")

    def still_held(self) -> bool:
        """Refresh now: True only if this holder still has the lock (asked before writing a final status)."""
        if self.lost.is_set():
            return False
        try:
            held = self.store.refresh_update_lock(self.name, self.token, self.ttl_s)
        except StoreUnavailable:
            return False
        if not held:
            self.lost.set()
        return held

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self.store.release_update_lock(self.name, self.token)
        except StoreUnavailable:
            log.warning("could not release the update lock of %s; it expires by itself", self.name)


@contextmanager
def update_lock(
    store: Store,
    name: str,
    owner: str,
    ttl_s: float,
    *,
    wait_s: float = 0.0,
    busy: str | None = None,
) -> Iterator[HeldLock]:
    """Hold ``name``'s update lock for the block (refreshed every third of ``ttl_s``), waiting up to ``wait_s``
    for it; `LockLost` (with ``busy`` as its message) when another holder keeps it."""
    deadline = time.monotonic() + wait_s
    while (token := store.acquire_update_lock(name, owner, ttl_s)) is None:
        if time.monotonic() >= deadline:
            raise LockLost(busy or f"another update of {name!r} is running")
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
    held = HeldLock(store, name, token, ttl_s)
    try:
        yield held
    finally:
        held.release()
