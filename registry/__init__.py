"""The store of models, versions, method state, samples, updates and the live-version pointer.

One interface (`Store`), two implementations: `LocalStore` (a directory, the embedded default) and `RedisStore`
(distributed mode).  `open_store` picks one from configuration.
"""

from __future__ import annotations

import logging
from pathlib import Path

from registry.base import UNSET, LiveListener, Store, Subscription
from registry.errors import Conflict, InvalidIdentifier, NotFound, QueueFull, StoreError, StoreUnavailable
from registry.heldout import DEFAULT_CAPACITY
from registry.local import LocalStore
from registry.records import (
    FINISHED,
    ExperienceRecord,
    LivePointer,
    LockHolder,
    ModelRecord,
    Page,
    Promotion,
    QuarantineRecord,
    UpdateRecord,
    VersionCounts,
    VersionRecord,
)
from registry.samples import Claim, PendingCounts, SampleSet, holdout_flags
from registry.signing import Signer

log = logging.getLogger(__name__)


def open_store(
    data_dir: str | Path,
    redis_url: str | None = None,
    *,
    redis_chunk_bytes: int | None = None,
    signer: Signer | None = None,
    heldout_capacity: int = DEFAULT_CAPACITY,
) -> Store:
    """Redis when a URL is given (values above ``redis_chunk_bytes`` stored in chunks), else the local directory;
    promotions signed with ``signer`` when given (and said so when not: at every process's start); at most
    ``heldout_capacity`` held-out samples kept per class (`registry.heldout`)."""
    if redis_url:
        from registry.redis_store import DEFAULT_CHUNK_BYTES, RedisStore  # imported only in distributed mode

        if signer is None:
            log.warning(
                "CL_SIGNING_KEY is not set: promotions are not signed, and anyone who can write to Redis can change "
                "which version the replicas serve (see README, 'Redis against a hostile network')"
            )
        return RedisStore(
            redis_url,
            chunk_bytes=redis_chunk_bytes or DEFAULT_CHUNK_BYTES,
            signer=signer,
            heldout_capacity=heldout_capacity,
        )
    if signer is None:
        log.info("CL_SIGNING_KEY is not set: promotions are not signed (the store directory is trusted)")
    return LocalStore(data_dir, signer=signer, heldout_capacity=heldout_capacity)


__all__ = [
    "FINISHED",
    "UNSET",
    "Claim",
    "Conflict",
    "ExperienceRecord",
    "InvalidIdentifier",
    "LiveListener",
    "LivePointer",
    "LocalStore",
    "LockHolder",
    "ModelRecord",
    "NotFound",
    "Page",
    "PendingCounts",
    "Promotion",
    "QuarantineRecord",
    "QueueFull",
    "SampleSet",
    "Signer",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "Subscription",
    "UpdateRecord",
    "VersionCounts",
    "VersionRecord",
    "holdout_flags",
    "open_store",
]
