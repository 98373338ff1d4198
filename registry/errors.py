"""Errors every store raises, whatever its backend, so callers map them to one answer each."""


class StoreError(Exception):
    """Base class of the store's errors."""


class NotFound(StoreError):
    """The model, version, update or sample does not exist."""


class Conflict(StoreError):
    """The change conflicts with the store's state (name taken, stale compare-and-set, lost lock)."""


class StoreUnavailable(StoreError):
    """The backend cannot be reached; nothing was changed."""


class InvalidIdentifier(StoreError, ValueError):
    """A name or id that no store accepts (`registry.names`): the caller's mistake, nothing was read or written."""


class QueueFull(StoreError):
    """A new update was refused: ``limit`` updates of the model are queued already (checked and stored atomically,
    so concurrent requests never exceed the limit)."""

    def __init__(self, name: str, queued: int, limit: int) -> None:
        super().__init__(f"{queued} updates of {name!r} are queued already (limit {limit}); retry when one has started")
        self.name, self.queued, self.limit = name, queued, limit
