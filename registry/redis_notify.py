"""Live-pointer notifications from Redis pub/sub, delivered to this process's listeners by one thread that
survives Redis restarts."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from contextlib import suppress

import redis

from registry.base import LiveListener, Subscription

log = logging.getLogger(__name__)


class _Subscription(Subscription):
    def __init__(self, notifier: Notifier, listener: LiveListener) -> None:
        self._notifier, self._listener = notifier, listener

    def close(self) -> None:
        self._notifier.remove(self._listener)


class Notifier:
    """One pub/sub thread per store delivering live-pointer changes to this process's listeners.

    The thread outlives Redis restarts: it reconnects with backoff and, once subscribed again, delivers every
    model's current pointer, so a process that missed messages during the outage catches up at once."""

    def __init__(
        self,
        connect: Callable[[], redis.Redis],
        channel: str,
        pointers: Callable[[], dict[str, int | None]],
        deliver: Callable[[list[LiveListener], str, int | None], None],
    ) -> None:
        self._connect, self._channel, self._pointers, self._deliver_to = connect, channel, pointers, deliver
        self._listeners: list[LiveListener] = []
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: redis.Redis | None = None

    def add(self, listener: LiveListener, wait_s: float = 5.0) -> Subscription:
        with self._guard:
            self._listeners.append(listener)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="live-pointer-subscriber", daemon=True)
                self._thread.start()
        if not self._subscribed.wait(wait_s):
            log.warning("not subscribed to %s yet; pointer changes arrive once Redis is reachable", self._channel)
        return _Subscription(self, listener)

    def remove(self, listener: LiveListener) -> None:
        with self._guard, suppress(ValueError):
            self._listeners.remove(listener)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._client is not None:
            self._client.close()

    def _deliver(self, name: str, version: int | None) -> None:
        with self._guard:
            listeners = list(self._listeners)
        self._deliver_to(listeners, name, version)  # reports a listener's error; the others and the thread go on

    def _run(self) -> None:
        confirmations, backoff = 0, 0.1
        while not self._stop.is_set():
            try:
                self._client = self._client or self._connect()
                pubsub = self._client.pubsub()
                try:
                    pubsub.subscribe(self._channel)
                    while not self._stop.is_set():
                        message = pubsub.get_message(timeout=0.5)
                        if message is None:
                            continue
                        if message["type"] == "subscribe":  # also after redis-py reconnected on its own
                            confirmations += 1
                            if confirmations > 1:
                                for name, version in self._pointers().items():
                                    self._deliver(name, version)
                            self._subscribed.set()
                            backoff = 0.1
                        elif message["type"] == "message":
                            data = json.loads(message["data"])
                            self._deliver(str(data["model"]), data["version"])
                finally:
                    with suppress(Exception):
                        pubsub.close()
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                level = logging.WARNING if backoff == 0.1 else logging.DEBUG  # once per outage, not per attempt
                log.log(level, "live-pointer subscription lost (%s); reconnecting", exc)
                confirmations = max(confirmations, 1)  # the next confirmation is a reconnect: catch up
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception:
                log.exception("live-pointer subscriber failed; restarting it")
                self._stop.wait(1.0)
