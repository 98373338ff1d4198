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
