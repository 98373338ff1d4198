"""Retention.  Versions: keep the live version, the last N versions that were live (the rollback window), every
version an operator pinned and the newest M candidates (never promoted: rejected ones, imports, candidates left
for a manual promotion); delete every other version with its weights and state, so that disk is bounded by
(N + M + pinned + 1) versions whatever the history.  Held-out samples need no reserve here: they live in the store's
held-out store (`registry.heldout`), which raw-sample retention never touches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from registry import Store, VersionRecord
from worker.audit import audit


@dataclass(frozen=True)
class VersionRetention:
    """Which versions retention keeps besides the live one and the pinned ones (None: every one of that kind)."""

    keep_promoted: int | None  # N: the versions most recently live (by their last promotion), the rollback window
    keep_candidates: int | None  # M: the newest versions that were never live

    @property
    def enabled(self) -> bool:
        return self.keep_promoted is not None or self.keep_candidates is not None


def retained(versions: Sequence[VersionRecord], live: int | None, rules: VersionRetention) -> set[int]:
    """The numbers of the versions ``rules`` keep: the live one, the pinned ones, the ``keep_promoted`` most
    recently live (ordered by their last promotion, then number) and the ``keep_candidates`` newest never live."""
    promoted = sorted(
        (v for v in versions if v.promotions), key=lambda v: (v.last_promoted or 0.0, v.version), reverse=True
    )
    candidates = sorted((v for v in versions if not v.promotions), key=lambda v: v.version, reverse=True)
    keep = {v.version for v in versions if v.pinned or v.version == live}
    keep |= {v.version for v in (promoted if rules.keep_promoted is None else promoted[: rules.keep_promoted])}
    keep |= {v.version for v in (candidates if rules.keep_candidates is None else candidates[: rules.keep_candidates])}
    return keep


def prune_versions(store: Store, name: str, rules: VersionRetention) -> list[int]:
    """Delete, oldest first, the versions `retained` does not keep; returns what was deleted.  Each deletion is
    checked again by the store in the same step (`Store.prune_version`): a version pinned, made live or promoted
    while this ran stays."""
    if not rules.enabled:
        return []
    versions = store.list_versions(name)
    keep = retained(versions, store.live_version(name), rules)
    deleted = [
        v.version
        for v in versions
        if v.version not in keep and store.prune_version(name, v.version, promotions=len(v.promotions))
    ]
    if deleted:
        audit("versions.pruned", actor="retention", model=name, versions=deleted)
    return deleted
