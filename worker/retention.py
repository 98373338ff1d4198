"""Retention: keep the newest K versions and every version that was ever promoted (so the live lineage, its
metrics and any rollback target survive), and, when raw samples are dropped, a reserve of trusted held-out samples
per class (the forgetting gate judges on them)."""

from __future__ import annotations

from registry import Store
from worker.history import history_of


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


def trusted_reserve(store: Store, name: str, per_class: int) -> set[str]:
    """Ids of the newest ``per_class`` trusted held-out samples of every class (those of the live lineage's
    experiences: its ledger's), which sample retention must keep so that the gate can still judge every class."""
    reserve: set[str] = set()
    counts: dict[str, int] = {}
    for experience in reversed(history_of(store, name, store.live_version(name)).experiences):
        held = store.experience_samples(name, experience)
        for sample_id, label in reversed(list(zip(held.ids, held.labels, strict=True))):
            if label is not None and counts.get(label, 0) < per_class:
                counts[label] = counts.get(label, 0) + 1
                reserve.add(sample_id)
    return reserve
