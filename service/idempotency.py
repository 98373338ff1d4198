"""``Idempotency-Key``: a retried request with the same key gets the first answer and stores nothing twice.

The first answer is kept in the store (for ``idempotency_ttl_s``) with a digest of the request; a retry with the
same key but a different request is an error.  Storage itself is idempotent too (the store refuses a second
batch with the same key, an update id is derived from the key), so even a crash between storing and answering
cannot make a retry store twice.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

from fastapi import Header

from registry import Store
from registry.names import REQUEST_KEY_PATTERN
from service.errors import ApiError

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        pattern=REQUEST_KEY_PATTERN,
        description="retrying with the same key returns the first answer and stores nothing twice",
    ),
]


def digest(payload: bytes | str) -> str:
    data = payload.encode() if isinstance(payload, str) else payload
    return hashlib.sha256(data).hexdigest()


def derived_id(name: str, scope: str, key: str) -> str:
    """A stable id for what a keyed request creates (32 hex characters)."""
    return digest(f"{name}\0{scope}\0{key}")[:32]


def replay(store: Store, name: str, scope: str, key: str, request_digest: str) -> dict[str, Any] | None:
    """The first answer for this key, or None; a different request under the same key is a 422."""
    kept = store.recall(name, f"{scope}:{key}")
    if kept is None:
        return None
    if kept["digest"] != request_digest:
        raise ApiError(422, "this Idempotency-Key was used for a different request", field="Idempotency-Key")
    answer: dict[str, Any] = kept["answer"]
    return answer


def keep(
    store: Store, name: str, scope: str, key: str, request_digest: str, answer: dict[str, Any], ttl_s: float
) -> None:
    store.remember(name, f"{scope}:{key}", {"digest": request_digest, "answer": answer}, ttl_s)
