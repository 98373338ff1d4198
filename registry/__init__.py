"""The store of models, versions, method state, samples, updates and the live-version pointer.

One interface (`Store`), two implementations: `LocalStore` (a directory, the embedded default) and `RedisStore`
(distributed mode).  `open_store` picks one from configuration.
"""

from __future__ import annotations

from pathlib import Path

from registry.base import UNSET, LiveListener, Store, Subscription
from registry.errors import Conflict, NotFound, StoreError, StoreUnavailable
from registry.local import LocalStore
from registry.records import FINISHED, ExperienceRecord, LockHolder, ModelRecord, Promotion, UpdateRecord, VersionRecord
from registry.samples import Claim, SampleSet, holdout_flags


def open_store(data_dir: str | Path, redis_url: str | None = None, *, redis_chunk_bytes: int | None = None) -> Store:
    """Redis when a URL is given (values above ``redis_chunk_bytes`` stored in chunks), else the local directory."""
    if redis_url:
        from registry.redis_store import DEFAULT_CHUNK_BYTES, RedisStore  # imported only in distributed mode

        return RedisStore(redis_url, chunk_bytes=redis_chunk_bytes or DEFAULT_CHUNK_BYTES)
    return LocalStore(data_dir)


__all__ = [
    "FINISHED",
    "UNSET",
    "Claim",
    "Conflict",
    "ExperienceRecord",
    "LiveListener",
    "LocalStore",
    "LockHolder",
    "ModelRecord",
    "NotFound",
    "Promotion",
    "SampleSet",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "Subscription",
    "UpdateRecord",
    "VersionRecord",
    "holdout_flags",
    "open_store",
]
