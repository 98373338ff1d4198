"""Synthetic version histories: records built directly (random accuracies, no training), to check the ledger against
the full accuracy matrix fast, and a store wrapper that counts reads."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cl_core.models import ModelSpec, build_model
from registry import ModelRecord, Store, VersionRecord
from registry import tensors as st
from worker.history import HISTORY_KEY, History, StoredHistory, derive

SPEC = ModelSpec("mlp", (4,), ["a", "b"], {"hidden": [4]})


@dataclass
class Step:
    """One synthetic version: what it measured on its parent's experiences, its own experience's accuracy (None:
    it opened no column) and the history derived from them."""

    version: int
    parent: int | None
    measured: dict[int, float | None]
    own: float | None
    stored: StoredHistory

    def metrics(self, ledger: bool = True) -> dict[str, Any]:
        """The stored metrics, as the pipeline writes them (``ledger=False``: as versions before the ledger did)."""
        summary = self.stored.aggregates(self.own)
        metrics: dict[str, Any] = {
            "held_out_samples": 10,
            "accuracy": 0.5,
            "per_class_accuracy": {"a": 0.5, "b": 0.5},
            "experience_accuracy": {str(k): v for k, v in self.measured.items()},
            "own_experience_accuracy": self.own,
            "acc": summary.acc,
            "bwt": summary.bwt,
            "forgetting": summary.forgetting,
        }
        if ledger:
            metrics[HISTORY_KEY] = self.stored.stored()
        return metrics


def steps(
    count: int,
    *,
    width: int,
    seed: int = 0,
    opener_share: float = 0.7,
    unmeasured_share: float = 0.0,
    first: int = 1,
) -> Iterator[Step]:
    """``count`` versions along one lineage, numbered from ``first``, each the child of the one before: a random
    share opens a column; each measures every earlier experience but a random ``unmeasured_share`` (no samples
    left)."""
    rng = random.Random(seed)
    parent: History | None = None
    for version in range(first, first + count):
        measured: dict[int, float | None] = {}
        if parent is not None:
            measured = {e: rng.random() for e in parent.experiences if rng.random() >= unmeasured_share}
        own = rng.random() if version == first or rng.random() < opener_share else None
        stored = derive(parent, measured, width)
        yield Step(version, None if parent is None else parent.version, measured, own, stored)
        parent = stored.resolve(version, own)


def new_model(store: Store, name: str = "m") -> None:
    store.create_model(ModelRecord(name=name, architecture="mlp", input_shape=[4], classes=["a", "b"]))


def commit(store: Store, step: Step, name: str = "m", ledger: bool = True, promote: bool = True) -> VersionRecord:
    record = VersionRecord(
        model=name,
        version=0,
        parent=step.parent,
        spec=SPEC.to_json(),
        learner={},
        method="test",
        metrics=step.metrics(ledger),
    )
    weights = st.dumps(build_model(SPEC, seed=0).state_dict())
    committed = store.commit_version(record, weights, st.dumps({}), number=step.version)
    if promote:
        store.promote(name, committed.version, by="test")
    return committed


class CountingStore:
    """A store whose version reads are counted (everything else passes through)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.version_reads = 0
        self.listings = 0

    def get_version(self, name: str, version: int) -> VersionRecord:
        self.version_reads += 1
        return self._store.get_version(name, version)

    def list_versions(self, name: str) -> list[VersionRecord]:
        self.listings += 1
        return self._store.list_versions(name)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._store, attribute)
