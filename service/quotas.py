"""Per-key rate limits: a token bucket per API key (per process), answering 429 with Retry-After when empty."""

from __future__ import annotations

import math
import threading
import time

from service.errors import ApiError


class RateLimiter:
    """``rate`` requests per second with bursts of ``burst``; rate 0 disables the limit."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}  # key → (tokens, last refill)
        self._lock = threading.Lock()

    def take(self, key: str) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                wait = math.ceil((1.0 - tokens) / self.rate)
                raise ApiError(
                    429,
                    f"rate limit of {self.rate:g} requests/s exceeded for this key",
                    headers={"Retry-After": str(max(1, wait))},
                )
            self._buckets[key] = (tokens - 1.0, now)
