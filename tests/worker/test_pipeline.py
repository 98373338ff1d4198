"""The update pipeline on the local store: versions, lineage, held-out metrics, the gate, failures."""

import time
from pathlib import Path

import pytest
import torch
from prometheus_client import CollectorRegistry

from cl_core.data import load_mnist5k
from registry import LocalStore, ModelRecord, Store, UpdateRecord
from registry import tensors as st
from worker.config import WorkerSettings
from worker.evaluation import accuracy_matrix, lineage
from worker.metrics import UpdateMetrics
from worker.pipeline import LockLost, import_weights, load_version, run_update
from worker.scheduling import new_update_id

SETTINGS = WorkerSettings(epochs=4, device="cpu", max_forgetting=0.05)


@pytest.fixture(scope="module")
def digits() -> dict[int, torch.Tensor]:
    train = load_mnist5k().train
    return {d: train.inputs[train.labels == d][:100] for d in range(10)}


def make_store(tmp_path: Path, classes: list[str] | None = None) -> Store:
    store = LocalStore(tmp_path / "store")
    store.create_model(
        ModelRecord(
            name="digits", architecture="mlp", input_shape=[784], classes=classes or [], options={"hidden": [64]}
        )
    )
    return store


def post(store: Store, digits: dict[int, torch.Tensor], which: list[int], n: int = 100, shuffle: bool = False) -> None:
    x = torch.cat([digits[d][:n] for d in which])
    labels = [str(d) for d in which for _ in range(n)]
    if shuffle:
        perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
        labels = [labels[i] for i in perm.tolist()]
        labels = [str((int(y) + 1) % 10) for y in labels]
    store.append_samples("digits", x, labels, 0.2)


def update(store: Store, method: str = "auto", settings: WorkerSettings = SETTINGS) -> UpdateRecord:
    record = UpdateRecord(update_id=new_update_id(), model="digits", method=method, triggered_by="test")
    store.put_update(record)
    return run_update(store, "digits", record.update_id, settings)


def test_first_update_creates_and_promotes_a_version(tmp_path: Path, digits: dict[int, torch.Tensor]) -> None:
    store = make_store(tmp_path)
    post(store, digits, [0, 1, 2])
    result = update(store)
    assert result.status == "succeeded", result.error
    assert result.version == 1 and store.live_version("digits") == 1 and result.progress == 1.0
    meta = store.get_version("digits", 1)
    assert meta.spec["classes"] == ["0", "1", "2"] and meta.parent is None
    assert meta.samples["labeled"] == 240 and meta.samples["held_out"] == 60
    assert meta.metrics["held_out_samples"] == 60 and meta.metrics["accuracy"] > 0.8
    assert set(meta.metrics["per_class_accuracy"]) == {"0", "1", "2"}
    assert meta.promotions[0]["by"].startswith("auto-promote")
    assert store.claim("digits").train.labels == []  # consumed
    loaded = load_version(store, "digits", 1)
    assert loaded.model.num_classes == 3 and loaded.learner_hparams["name"] == "online-ewc+replay+wa"


def test_new_classes_grow_the_head_keep_old_ones_and_build_the_matrix(
    tmp_path: Path, digits: dict[int, torch.Tensor]
) -> None:
    store = make_store(tmp_path)
    post(store, digits, [0, 1, 2])
    update(store)
    post(store, digits, [3, 4], n=60)
    result = update(store, settings=WorkerSettings(epochs=4, device="cpu", max_forgetting=0.5))
    assert result.status == "succeeded", result.error
    meta = store.get_version("digits", 2)
    assert meta.parent == 1 and meta.spec["classes"] == ["0", "1", "2", "3", "4"]
    assert meta.samples["new_classes"] == ["3", "4"]
    matrix = accuracy_matrix(lineage(store, "digits", 2))
    assert matrix.rows == [1, 2] and matrix.columns == [1, 2]
    assert matrix.values[1][0] == meta.metrics["experience_accuracy"]["1"]
    (old_then,), (old_now, new_now) = matrix.values  # lower-triangular: row k holds experiences 1..k
    assert old_then is not None and old_now is not None and new_now is not None
    assert meta.metrics["acc"] == pytest.approx((old_now + new_now) / 2)
    assert meta.metrics["bwt"] == pytest.approx(old_now - old_then)
    gate = meta.metrics["gate"]
    assert gate["old_classes"] == ["0", "1", "2"] and gate["samples"] == 60 and gate["passed"]


def test_label_shuffled_update_is_rejected_and_live_version_stays(
    tmp_path: Path, digits: dict[int, torch.Tensor]
) -> None:
    store = make_store(tmp_path)
    post(store, digits, [0, 1, 2])
    update(store)
    post(store, digits, [0, 1, 2], shuffle=True)
    result = update(store, "finetune")
    assert result.status == "rejected" and "forgetting gate" in (result.error or "")
    assert result.version == 2 and store.live_version("digits") == 1
    assert store.get_version("digits", 2).status == "rejected"
    assert not store.get_version("digits", 2).metrics["gate"]["passed"]


def test_failed_update_keeps_samples_pending_and_live_version(tmp_path: Path, digits: dict[int, torch.Tensor]) -> None:
    store = make_store(tmp_path)
    post(store, digits, [0, 1])
    bad = update(store, "ewc", WorkerSettings(epochs=1, device="no-such-device"))
    assert bad.status == "failed"
    assert store.live_version("digits") is None and store.pending_counts("digits").labeled == 160


def test_an_update_with_nothing_left_to_learn_is_skipped_not_failed(
    tmp_path: Path, digits: dict[int, torch.Tensor]
) -> None:
    """Two updates queued for one batch (two replicas asking at once, or a redelivered task): the first trains on
    it, the second finds nothing left and is skipped, which is not counted as a failure."""
    store = make_store(tmp_path)
    post(store, digits, [0, 1], n=30)
    first, second = (UpdateRecord(update_id=new_update_id(), model="digits", method="auto") for _ in range(2))
    store.put_update(first)
    store.put_update(second)
    assert run_update(store, "digits", first.update_id, SETTINGS).status == "succeeded"
    loser = run_update(store, "digits", second.update_id, SETTINGS)
    assert loser.status == "skipped" and "nothing left to learn" in (loser.error or ""), loser
    assert loser.finished and loser.version is None and loser.finished_at is not None
    assert [v.version for v in store.list_versions("digits")] == [1] and store.live_version("digits") == 1
    registry = CollectorRegistry()
    metrics = UpdateMetrics(registry)
    for record in (store.get_update("digits", first.update_id), loser):
        metrics.observe(record)
    assert registry.get_sample_value("cl_updates_total", {"model": "digits", "outcome": "skipped"}) == 1
    assert registry.get_sample_value("cl_updates_total", {"model": "digits", "outcome": "failed"}) is None
    assert update(store).status == "skipped"  # also the very first update of an empty model


def test_a_listener_that_raises_after_the_promotion_does_not_fail_the_update(
    tmp_path: Path, digits: dict[int, torch.Tensor]
) -> None:
    """Failure 4 of issue 12: a serving reload that runs out of memory inside `promote`, after the live pointer
    was written, used to record the update as failed while its version was live."""
    store = make_store(tmp_path)
    reloads: list[int | None] = []

    def reload(name: str, version: int | None) -> None:
        reloads.append(version)
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    store.subscribe(reload)
    post(store, digits, [0, 1], n=30)
    result = update(store)
    assert result.status == "succeeded" and result.error is None, result
    assert result.version == 1 and store.live_version("digits") == 1
    assert store.get_update("digits", result.update_id).status == "succeeded" and reloads == [1]


def test_a_run_whose_lock_is_taken_over_records_nothing(tmp_path: Path, digits: dict[int, torch.Tensor]) -> None:
    """Once another holder has the lock (this run stalled past its expiry), that holder owns the record: the old
    run stops without writing "failed" over it and commits nothing."""
    store = make_store(tmp_path)
    post(store, digits, [0, 1], n=40)
    record = UpdateRecord(update_id=new_update_id(), model="digits", method="auto")
    store.put_update(record)
    calls: list[int] = []

    def steal_the_lock() -> bool:
        calls.append(1)
        if len(calls) == 1:
            holder = store.update_lock_holder("digits")
            assert holder is not None and holder.owner.startswith(f"update:{record.update_id} ")
            store.release_update_lock("digits", holder.token)
            assert store.acquire_update_lock("digits", "update:someone-else host:1", 60) is not None
        else:
            time.sleep(0.2)  # the background refresh notices the loss
        return False

    settings = WorkerSettings(epochs=50, device="cpu", update_lock_ttl_s=0.3)
    with pytest.raises(LockLost):
        run_update(store, "digits", record.update_id, settings, preempted=steal_the_lock)
    after = store.get_update("digits", record.update_id)
    assert after.status == "running" and after.error is None  # left for the holder (or the recovery sweep)
    assert store.list_versions("digits") == [] and store.pending_counts("digits").labeled == 64


def test_an_attempt_that_committed_but_never_recorded_its_end_is_finished_from_its_version(
    tmp_path: Path, digits: dict[int, torch.Tensor]
) -> None:
    """A worker that died (or lost the store) between the commit and the update's record: the next attempt
    finishes from the committed version (promoting it) instead of making a second one."""
    store = make_store(tmp_path)
    post(store, digits, [0, 1], n=30)
    record = UpdateRecord(update_id=new_update_id(), model="digits", method="auto")
    store.put_update(record)
    quiet = WorkerSettings(epochs=4, device="cpu", auto_promote=False)
    assert run_update(store, "digits", record.update_id, quiet).status == "succeeded"
    assert store.live_version("digits") is None
    crashed = store.get_update("digits", record.update_id)
    crashed.status, crashed.version, crashed.progress, crashed.finished_at = "running", None, 0.97, None
    store.put_update(crashed)  # as the attempt left it: committed, acknowledged, not promoted, not recorded
    result = run_update(store, "digits", record.update_id, SETTINGS)
    assert (result.status, result.version, result.attempts) == ("succeeded", 1, 2)
    assert [v.version for v in store.list_versions("digits")] == [1] and store.live_version("digits") == 1


def test_unlabeled_samples_only_update_importance(tmp_path: Path, digits: dict[int, torch.Tensor]) -> None:
    store = make_store(tmp_path)
    post(store, digits, [0, 1])
    update(store)
    store.append_samples("digits", digits[5][:30], [None] * 30, 0.2)
    result = update(store)
    assert result.status == "succeeded", result.error
    v1, v2 = (load_version(store, "digits", v) for v in (1, 2))
    for key, value in v1.model.state_dict().items():
        assert torch.equal(value, v2.model.state_dict()[key]), key  # weights untouched
    assert any(k.startswith("unlabeled.importance.") for k in v2.learner_state)
    assert not any(k.startswith("unlabeled.importance.") for k in v1.learner_state)


def test_lock_held_elsewhere_and_weight_import(tmp_path: Path, digits: dict[int, torch.Tensor]) -> None:
    store = make_store(tmp_path, classes=["a", "b"])
    token = store.acquire_update_lock("digits", "other", 60)
    record = UpdateRecord(update_id=new_update_id(), model="digits", method="auto")
    store.put_update(record)
    with pytest.raises(LockLost):
        run_update(store, "digits", record.update_id, SETTINGS)
    assert token is not None
    store.release_update_lock("digits", token)
    base = load_version(store, "digits", None)
    weights = st.dumps(base.model.state_dict())
    imported = import_weights(store, "digits", weights, by="admin", settings=SETTINGS)
    assert imported.version == 1 and imported.status == "imported"
    with pytest.raises(ValueError, match="do not fit"):
        import_weights(store, "digits", st.dumps({"x": torch.zeros(1)}), by="admin", settings=SETTINGS)
    with pytest.raises(ValueError, match="safetensors"):
        import_weights(store, "digits", b"not safetensors", by="admin", settings=SETTINGS)


def test_preempted_update_goes_back_to_the_queue_and_cancelled_one_commits_nothing(
    tmp_path: Path, digits: dict[int, torch.Tensor]
) -> None:
    store = make_store(tmp_path)
    post(store, digits, [0, 1], n=40)
    record = UpdateRecord(update_id=new_update_id(), model="digits", method="auto")
    store.put_update(record)
    result = run_update(store, "digits", record.update_id, SETTINGS, preempted=lambda: True)
    assert result.status == "queued" and "shutdown" in (result.error or "")
    assert store.list_versions("digits") == [] and store.pending_counts("digits").labeled == 64
    store.request_cancel("digits", record.update_id)
    assert store.cancel_requested("digits", record.update_id)
    result = run_update(store, "digits", record.update_id, SETTINGS)
    assert result.status == "cancelled" and store.list_versions("digits") == []
    assert store.pending_counts("digits").labeled == 64


def test_updates_prune_versions_beyond_the_windows(tmp_path: Path, digits: dict[int, torch.Tensor]) -> None:
    store = make_store(tmp_path)
    settings = WorkerSettings(epochs=1, device="cpu", keep_promoted=1, keep_candidates=0, keep_finished_updates=1)
    for step in range(3):
        post(store, digits, [step % 2], n=30)
        assert update(store, settings=settings).status == "succeeded"
    assert [v.version for v in store.list_versions("digits")] == [3] and store.live_version("digits") == 3
    assert [u.status for u in store.updates_page("digits", limit=10).items] == ["succeeded", "succeeded"]
    assert [r.version for r in lineage(store, "digits", 3)] == [3]  # its ancestors are gone: the walk stops


def test_deleted_samples_leave_every_exemplar_memory(tmp_path: Path, digits: dict[int, torch.Tensor]) -> None:
    from worker.deletion import forget_samples

    store = make_store(tmp_path)
    post(store, digits, [0, 1], n=30)
    assert update(store).status == "succeeded"
    state = load_version(store, "digits", 1).learner_state
    held_ids = [str(int(i)) for i in state["memory.ids"].tolist()[:5]]
    assert len(held_ids) == 5 and all(int(i) > 0 for i in held_ids)
    result = forget_samples(store, "digits", held_ids, SETTINGS)
    assert result.exemplars == 5 and result.versions == 1
    after = load_version(store, "digits", 1).learner_state["memory.ids"].tolist()
    assert not set(map(int, held_ids)) & set(after)
    post(store, digits, [2], n=30)
    assert update(store).status in ("succeeded", "rejected")  # either way version 2 is committed
    assert not set(map(int, held_ids)) & set(load_version(store, "digits", 2).learner_state["memory.ids"].tolist())
