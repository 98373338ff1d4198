"""The capture reservoir (`registry.captures`): its rules, then the store contract on every backend."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from registry import Conflict, InvalidIdentifier, LocalStore, ModelRecord, NotFound, Store
from registry.captures import CaptureConfig, CaptureIndex


def model(name: str = "m") -> ModelRecord:
    return ModelRecord(name=name, architecture="mlp", input_shape=[3], classes=["a"], options={"hidden": [4]})


def captured(store: Store, n: int, capacity: int = 100, name: str = "m") -> tuple[list[str], torch.Tensor]:
    first = store.reserve_ids(name, n)
    ids = [str(first + i) for i in range(n)]
    inputs = torch.arange(3 * n, dtype=torch.float32).reshape(n, 3) / 7
    assert store.add_captures(name, inputs, ids, capacity) == ids
    return ids, inputs


# -- the rules ---------------------------------------------------------------------------------------------------
def test_pending_captures_are_a_uniform_sample_of_the_offers_since_the_last_acknowledgement() -> None:
    kept: Counter[int] = Counter()
    trials, capacity, offers = 400, 10, 50
    for trial in range(trials):
        index = CaptureIndex(seed=trial)
        stored, _ = index.offer([str(i) for i in range(1, offers + 1)], 0.0, capacity)
        assert len(index.slots) == capacity and len(stored) <= offers
        kept.update(int(s.id) for s in index.slots)
    # every offer kept with probability capacity / offers = 0.2: 80 of 400 trials, binomial sd ≈ 8
    assert all(50 <= kept[i] <= 110 for i in range(1, offers + 1)), sorted(kept.items())


def test_observed_captures_make_room_oldest_first_and_pending_ones_are_sampled() -> None:
    index = CaptureIndex(seed=1)
    index.offer(["1", "2", "3"], 0.0, 3)
    index.consume(index.next_seq - 1)
    assert index.pending == []
    stored, evicted = index.offer(["4", "5"], 0.0, 3)
    assert stored == ["4", "5"] and evicted == ["1", "2"]
    assert [s.id for s in index.pending] == ["4", "5"] and index.ids == {"3", "4", "5"}
    index.offer(["6"], 0.0, 3)
    assert index.ids == {"4", "5", "6"}  # the last observed one went
    index.offer([str(i) for i in range(7, 100)], 0.0, 3)
    assert len(index.slots) == 3 and all(s.seq > index.consumed for s in index.slots)
    assert index.counts().offered == 99


def test_trim_drops_observed_captures_first_then_the_newest_and_old_observed_ones() -> None:
    index = CaptureIndex(seed=1)
    index.offer(["1", "2"], 0.0, 10)
    index.consume(2)
    index.offer(["3", "4", "5"], 100.0, 10)
    assert sorted(index.trim(3)) == ["1", "2"]
    assert index.trim(2) == ["5"]
    index.consume(index.next_seq - 1)
    assert index.trim(10, max_age_s=50, now=120.0) == []
    assert sorted(index.trim(10, max_age_s=10, now=120.0)) == ["3", "4"]
    assert index.trim(0) == []


def test_feedback_takes_a_capture_once() -> None:
    index = CaptureIndex(seed=1)
    index.offer(["1", "2"], 0.0, 10)
    assert index.take(["1", "9"]) == {"1": "accepted", "9": "unknown"}
    assert index.take(["1", "2"]) == {"1": "answered", "2": "accepted"}
    assert index.slots == [] and index.offer(["1"], 0.0, 10) == ([], [])  # an answered id is not captured again


@pytest.mark.parametrize(
    "config",
    [
        {"rate": -0.1, "max_samples": 10},
        {"rate": 1.5, "max_samples": 10},
        {"rate": float("nan"), "max_samples": 10},
        {"rate": "0.1", "max_samples": 10},
        {"rate": True, "max_samples": 10},
        {"rate": 0.1, "max_samples": 0},
        {"rate": 0.1, "max_samples": 2.5},
        {"rate": 0.1, "max_samples": False},
        {"rate": 0.1},
        {"rate": 0.1, "max_samples": 10, "extra": 1},
        [0.1, 10],
    ],
)
def test_a_capture_config_out_of_range_or_of_the_wrong_type_is_refused(config: object) -> None:
    with pytest.raises(ValueError):
        CaptureConfig.from_json(config)  # type: ignore[arg-type]


def test_a_capture_config_round_trips() -> None:
    config = CaptureConfig.from_json({"rate": 1, "max_samples": 10})
    assert config.rate == 1.0 and CaptureConfig.from_json(config.to_json()) == config


# -- the store contract --------------------------------------------------------------------------------------------
def test_reserved_ids_are_never_given_to_posted_samples(store: Store) -> None:
    store.create_model(model())
    first = store.reserve_ids("m", 5)
    ids, _ = store.append_samples("m", torch.zeros(2, 3), ["a", None], 0.0)
    assert set(ids).isdisjoint(str(first + i) for i in range(5))
    assert int(ids[0]) > first + 4
    assert store.reserve_ids("m", 1) > int(ids[-1])
    for bad in (0, -1, 10**7, True):
        with pytest.raises(ValueError):
            store.reserve_ids("m", bad)
    with pytest.raises(NotFound):
        store.reserve_ids("nope", 1)


def test_captures_are_pending_until_an_update_observes_them_and_stay_for_feedback(store: Store) -> None:
    store.create_model(model())
    ids, inputs = captured(store, 4)
    assert store.capture_counts("m").pending == 4
    claim = store.claim_captures("m")
    assert claim.samples.ids == ids and claim.samples.labels == [None] * 4
    assert torch.equal(claim.samples.inputs, inputs)
    assert store.pending_counts("m").unlabeled == 0  # captures are counted apart from posted samples
    store.ack_captures("m", claim)
    counts = store.capture_counts("m")
    assert (counts.stored, counts.pending) == (4, 0)
    assert len(store.claim_captures("m")) == 0
    more, _ = captured(store, 2)
    assert store.claim_captures("m").samples.ids == more


def test_the_reservoir_holds_at_most_its_capacity(store: Store) -> None:
    store.create_model(model())
    first = store.reserve_ids("m", 30)
    ids = [str(first + i) for i in range(30)]
    stored = store.add_captures("m", torch.rand(30, 3), ids, 8)
    assert len(stored) <= 30 and store.capture_counts("m").stored == 8
    assert len(store.claim_captures("m")) == 8
    assert store.trim_captures("m", 5) == 3 and store.capture_counts("m").stored == 5
    assert store.trim_captures("m", 0) == 5 and store.capture_counts("m").stored == 0


def test_feedback_turns_a_capture_into_a_labeled_sample_with_its_id_once(store: Store) -> None:
    store.create_model(model())
    ids, inputs = captured(store, 6)
    result = store.label_captures("m", [(ids[0], "a"), (ids[1], "b"), ("999999", "a")], 0.0)
    assert result.status == {ids[0]: "accepted", ids[1]: "accepted", "999999": "unknown"}
    assert result.held_out == {ids[0]: False, ids[1]: False} and result.labels == {ids[0]: "a", ids[1]: "b"}
    assert store.label_captures("m", [(ids[0], "b")], 0.0).status == {ids[0]: "answered"}
    pending = store.pending_counts("m")
    assert (pending.labeled, pending.per_class) == (2, {"a": 1, "b": 1})
    claim = store.claim("m")
    assert claim.train.ids == ids[:2] and claim.train.labels == ["a", "b"]
    assert torch.equal(claim.train.inputs, inputs[:2])
    assert store.claim_captures("m").samples.ids == ids[2:]
    # held out like any labeled sample: the 5th of a class with a fraction of 0.2
    labeled = store.label_captures("m", [(i, "c") for i in ids[2:6]], 0.2)
    assert list(labeled.held_out.values()) == [False, False, False, False]
    extra, _ = captured(store, 1)
    assert store.label_captures("m", [(extra[0], "c")], 0.2).held_out == {extra[0]: True}


def test_hostile_feedback_changes_nothing(store: Store) -> None:
    store.create_model(model())
    ids, _ = captured(store, 2)
    for items in ([(ids[0], "a"), ("../etc", "a")], [(ids[0], "a"), ("0", "a")], [(ids[0], "a"), (str(2**63), "a")]):
        with pytest.raises(InvalidIdentifier):
            store.label_captures("m", items, 0.0)
    with pytest.raises(ValueError):
        store.label_captures("m", [(ids[0], "a"), (ids[0], "b")], 0.0)
    assert store.capture_counts("m").stored == 2 and store.pending_counts("m").labeled == 0
    with pytest.raises(NotFound):
        store.label_captures("nope", [(ids[0], "a")], 0.0)


def test_a_deleted_capture_is_gone_and_never_stored_later(store: Store) -> None:
    store.create_model(model())
    ids, _ = captured(store, 3)
    assert store.delete_samples("m", [ids[0]]) == 1
    assert store.claim_captures("m").samples.ids == ids[1:]
    assert store.label_captures("m", [(ids[0], "a")], 0.0).status == {ids[0]: "unknown"}
    first = store.reserve_ids("m", 2)
    late = [str(first), str(first + 1)]
    store.delete_samples("m", [late[0]])  # deleted while still in flight at the API
    assert store.add_captures("m", torch.zeros(2, 3), late, 10) == [late[1]]


def test_deleting_a_model_removes_its_captures(store: Store) -> None:
    store.create_model(model())
    captured(store, 3)
    store.delete_model("m")
    with pytest.raises(NotFound):
        store.capture_counts("m")
    store.create_model(model())
    assert store.capture_counts("m").stored == 0


def test_retention_drops_observed_captures_by_age(store: Store) -> None:
    store.create_model(model())
    captured(store, 3)
    store.ack_captures("m", store.claim_captures("m"))
    captured(store, 2)
    time.sleep(0.05)
    assert store.trim_captures("m", 100, max_age_s=0.01) == 3
    assert store.capture_counts("m").stored == 2  # pending captures are not dropped by age


def test_the_model_record_changes_atomically(store: Store) -> None:
    store.create_model(model())
    config = {"rate": 0.5, "max_samples": 10}
    changed = store.update_model("m", lambda r: dataclasses.replace(r, capture=config))
    assert changed.capture == config and store.get_model("m").capture == config
    assert [m.capture for m in store.list_models()] == [config]
    with pytest.raises(ValueError):
        store.update_model("m", lambda r: dataclasses.replace(r, name="other"))
    assert store.get_model("m").capture == config
    with pytest.raises(NotFound):
        store.update_model("nope", lambda r: r)


def test_acknowledging_captures_is_fenced(store: Store) -> None:
    store.create_model(model())
    captured(store, 2)
    token = store.acquire_update_lock("m", "me", 30)
    assert token is not None
    claim = store.claim_captures("m")
    with pytest.raises(Conflict):
        store.ack_captures("m", claim, fence=token + 1000)
    assert store.capture_counts("m").pending == 2
    store.ack_captures("m", claim, fence=token)
    assert store.capture_counts("m").pending == 0


def test_a_capture_torn_by_a_crash_is_dropped_and_a_row_no_index_lists_is_swept(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.create_model(model())
    ids, _ = captured(store, 3)
    rows = tmp_path / "store" / "models" / "m" / "captures" / "rows"
    (rows / f"{ids[0]}.safetensors").write_bytes(b"")  # written, never flushed: the crash lost it
    (rows / "424242.safetensors").write_bytes(b"x")  # written, the index never listed it
    claim = store.claim_captures("m")
    assert claim.samples.ids == ids[1:] and store.capture_counts("m").stored == 2
    store.ack_captures("m", claim)
    assert sorted(p.stem for p in rows.iterdir()) == sorted(ids[1:])
