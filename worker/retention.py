"""Retention: keep the newest K versions and every version that was ever promoted (so the live lineage, its
metrics and any rollback target survive).  Held-out samples need no reserve here: they live in the store's held-out
store (`registry.heldout`), which raw-sample retention never touches."""

from __future__ import annotations

from registry import Store


def prune_versions(store: Store, name: str, keep_last: int | None) -> list[int]:
    """Delete versions beyond the newest ``keep_last`` that were never promoted; returns what was deleted."""
    if keep_last is None:
        return []
    versions = store.list_versions(name)
    live = store.live_version(name)
    newest = {v.version for v in versions[-keep_last:]} if keep_last > 0 else set()
    doomed = [v.version for v in versions if v.version not in newest and not v.promotions and v.version != live]
    for version in doomed:
        store.delete_version(name, version)
    return doomed
