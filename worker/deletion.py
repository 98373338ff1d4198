"""Deleting samples on request: gone from the store, from future training and from every exemplar memory.

Versions are immutable except here: a deleted sample's exemplar is scrubbed out of every stored version's method
state, under the model's update lock so that no update commits a memory that still holds it (the pipeline also
drops tombstoned ids before training and before committing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cl_core.learner import Learner
from registry import Store
from registry import tensors as st
from worker.config import WorkerSettings
from worker.locking import task_owner, update_lock


@dataclass(frozen=True)
class Forgotten:
    samples: int  # raw samples found and deleted
    exemplars: int  # exemplar copies scrubbed from stored versions
    versions: int  # versions whose state was rewritten


def forget_samples(
    store: Store, name: str, ids: Sequence[str], settings: WorkerSettings, *, wait_s: float = 60.0
) -> Forgotten:
    """Delete samples by id and scrub them from every version's exemplar memory."""
    deleted = store.delete_samples(name, ids)
    tombstones = store.deleted_ids(name)
    busy = f"an update of {name!r} kept running; the samples are deleted, the scrub is not done yet"
    scrubbed = rewritten = 0
    with update_lock(store, name, task_owner("forget"), settings.update_lock_ttl_s, wait_s=wait_s, busy=busy):
        for record in store.list_versions(name):
            if not record.learner:
                continue
            learner = Learner.from_hparams(record.learner)
            if not learner.stores_samples:  # neither an exemplar memory nor a method's own (DER++)
                continue
            learner.load_state_dict(st.loads(store.read_state(name, record.version)))
            removed = learner.forget(tombstones)
            if removed:
                store.rewrite_state(name, record.version, st.dumps(learner.state_dict()))
                scrubbed += removed
                rewritten += 1
    return Forgotten(deleted, scrubbed, rewritten)


def repair_deletion_records(store: Store) -> dict[str, int]:
    """Drop invalid entries from every model's deletion record (each with a warning); returns how many per model
    that had any.  Run at start-up: a record written by code that did not check ids (an id beyond int64) made
    every later update of its model fail, and this makes such a store work again."""
    repaired = {}
    for record in store.list_models():
        dropped = store.repair_deleted_ids(record.name)
        if dropped:
            repaired[record.name] = dropped
    return repaired
