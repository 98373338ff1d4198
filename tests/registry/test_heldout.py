"""The held-out store: the reservoir's definition (registry/heldout.py) and what every backend keeps."""

from collections import Counter
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st_

from registry import ModelRecord, SampleSet, Store
from registry.heldout import HeldOutIndex, Reservoir, draw
from registry.records import ExperienceRecord


def _offer_all(index: HeldOutIndex, experiences: list[list[str]], capacity: int) -> list[list[str]]:
    """Offer experiences of labels (ids numbered in order); returns the ids of each experience."""
    out, n = [], 0
    for version, labels in enumerate(experiences, start=1):
        ids = [str(n + i + 1) for i in range(len(labels))]
        n += len(labels)
        kept = index.offer(list(labels), ids, capacity)
        index.fold(ExperienceRecord(version, None, {}), [i for i, k in zip(ids, kept, strict=True) if k])
        out.append(ids)
    return out


@settings(max_examples=60, deadline=None)
@given(
    capacity=st_.integers(1, 6),
    experiences=st_.lists(st_.lists(st_.sampled_from(["a", "b", "c"]), max_size=12), max_size=8),
)
def test_the_reservoir_keeps_at_most_its_capacity_and_at_least_what_it_saw(
    capacity: int, experiences: list[list[str]]
) -> None:
    index = HeldOutIndex(seed=7)
    ids = _offer_all(index, experiences, capacity)
    pairs = zip(ids, experiences, strict=True)
    label_of = {i: label for batch, labels in pairs for i, label in zip(batch, labels, strict=True)}
    seen = Counter(label for labels in experiences for label in labels)
    for label, reservoir in index.classes.items():
        assert reservoir.seen == seen[label]
        assert len(reservoir.slots) == min(capacity, seen[label]) == len(set(reservoir.slots))
        assert all(label_of[i] == label for i in reservoir.slots)
    assert index.live <= {i for p in index.parts.values() for i in p}  # every live row is stored in a part
    assert all(index.live.intersection(p) for p in index.parts.values())  # no part without a live row


def test_the_reservoir_is_deterministic_for_its_seed() -> None:
    experiences = [["a"] * 30 + ["b"] * 10 for _ in range(5)]
    first, second, other = HeldOutIndex(seed=1), HeldOutIndex(seed=1), HeldOutIndex(seed=2)
    for index in (first, second, other):
        _offer_all(index, experiences, 8)
    assert first.classes == second.classes and first.parts == second.parts
    assert first.classes["a"].slots != other.classes["a"].slots
    restored = HeldOutIndex.from_json(first.to_json())  # the state survives a store round trip
    assert restored == first
    assert draw(1, "a", 10) == draw(1, "a", 10) and 0 <= draw(1, "a", 10) < 10


def test_every_sample_is_kept_with_probability_capacity_over_seen() -> None:
    """Algorithm R's definition: after n offers each sample is in the reservoir with probability R / n, whichever
    experience it came from (here 5 of 20, measured over 2,000 seeds: the standard error is about 0.01)."""
    counts: Counter[str] = Counter()
    seeds = 2000
    for seed in range(seeds):
        index = HeldOutIndex(seed=seed)
        _offer_all(index, [["a"] * 4 for _ in range(5)], 5)  # five experiences of four samples
        counts.update(index.classes["a"].slots)
    frequencies = [counts[str(i)] / seeds for i in range(1, 21)]
    assert all(abs(f - 0.25) < 0.05 for f in frequencies), frequencies


def _model(name: str) -> ModelRecord:
    return ModelRecord(name=name, architecture="mlp", input_shape=[3], classes=[])


def _experience(store: Store, name: str, version: int, labels: list[str]) -> SampleSet:
    """Post ``labels`` with every second sample of a class held out, acknowledge them as ``version``; returns the
    claim's held-out samples."""
    store.append_samples(name, torch.rand(len(labels), 3), labels, 0.5)
    claim = store.claim(name)
    store.ack(name, claim, version, f"u{version}")
    return claim.held_out


def test_the_held_out_store_keeps_at_most_its_capacity_per_class(store_factory: Callable[..., Store]) -> None:
    store = store_factory(heldout_capacity=4)
    store.create_model(_model("m"))
    offered: dict[int, SampleSet] = {}
    for version in range(1, 7):
        offered[version] = _experience(store, "m", version, ["a"] * 6 + ["b"] * 2)  # 3 "a" and 1 "b" held out
    held = store.held_out("m")
    labels = Counter(label for samples in held.values() for label in samples.labels)
    assert labels == {"a": 4, "b": 4}  # min(capacity, seen): 18 "a" seen, 6 "b"
    for version, samples in held.items():
        assert set(samples.ids) <= set(offered[version].ids)  # each kept sample remembers its experience
        rows = {i: x for i, x in zip(offered[version].ids, offered[version].inputs, strict=True)}
        assert all(torch.equal(rows[i], x) for i, x in zip(samples.ids, samples.inputs, strict=True))
        assert store.experience_samples("m", version).ids == samples.ids
    assert list(held) == sorted(held)
    assert len(store.experience_samples("m", 99)) == 0


def test_a_small_store_keeps_everything_it_saw(store_factory: Callable[..., Store]) -> None:
    store = store_factory(heldout_capacity=50)
    store.create_model(_model("m"))
    offered = {v: _experience(store, "m", v, ["a", "a", "b", "b"]) for v in (1, 2, 3)}
    assert {v: s.ids for v, s in store.held_out("m").items()} == {v: s.ids for v, s in offered.items()}


def test_raw_sample_retention_never_touches_the_held_out_store(store_factory: Callable[..., Store]) -> None:
    store = store_factory(heldout_capacity=8)
    store.create_model(_model("m"))
    for version in range(1, 5):
        _experience(store, "m", version, ["a"] * 4 + ["b"] * 4)
    before = store.held_out("m")
    for max_samples in (3, 0):
        store.apply_retention("m", max_age_s=None, max_samples=max_samples)
    store.apply_retention("m", max_age_s=0.0, max_samples=None)
    after = store.held_out("m")
    assert list(after) == list(before) == [1, 2, 3, 4]
    for version in before:
        assert after[version].ids == before[version].ids
        assert torch.equal(after[version].inputs, before[version].inputs)


def test_deleting_a_sample_removes_it_from_the_held_out_store(store_factory: Callable[..., Store]) -> None:
    store = store_factory(heldout_capacity=2)
    store.create_model(_model("m"))
    offered = _experience(store, "m", 1, ["a"] * 4).ids + _experience(store, "m", 2, ["a"] * 4).ids
    kept = [i for samples in store.held_out("m").values() for i in samples.ids]
    assert len(kept) == 2 and set(kept) <= set(offered)
    gone = kept[0]
    assert store.delete_samples("m", [gone]) == 1
    assert gone not in [i for s in store.held_out("m").values() for i in s.ids]
    assert gone not in store.experience_samples("m", 1).ids + store.experience_samples("m", 2).ids
    assert int(gone) in store.deleted_ids("m")
    assert store.delete_samples("m", [gone]) == 0  # found nowhere any more
    third = _experience(store, "m", 3, ["a"] * 2)  # the freed slot is filled by the next sample
    assert third.ids == store.experience_samples("m", 3).ids and len(third) == 1
    assert sum(len(s) for s in store.held_out("m").values()) == 2


def test_imported_experiences_go_through_the_reservoir(store_factory: Callable[..., Store]) -> None:
    store = store_factory(heldout_capacity=3)
    store.create_model(_model("m"))
    store.add_experience("m", 2, SampleSet(torch.rand(5, 3), ["a"] * 5, []), "u2")
    store.add_experience("m", 5, SampleSet(torch.rand(2, 3), ["b", "b"], []), None)
    held = store.held_out("m")
    assert len(held[2]) == 3 and held[5].labels == ["b", "b"]
    assert [e.held_out for e in store.experiences("m")] == [5, 2]
    posted, _ = store.append_samples("m", torch.rand(1, 3), ["a"], 0.0)
    assert int(posted[0]) > max(int(i) for s in held.values() for i in s.ids)  # imported ids are never given again


def test_the_store_refuses_a_capacity_below_one(store_factory: Callable[..., Store]) -> None:
    with pytest.raises(ValueError, match="heldout_capacity"):
        store_factory(heldout_capacity=0)


def test_a_reader_sees_what_another_instance_changed_in_the_held_out_store(
    open_backend: Callable[..., Store],
) -> None:
    """Each instance keeps the parts it read (an update reads only the newest part); another process of the same
    deployment deleting a held-out sample, consolidating, or deleting and making the model again is seen at the
    next read, never a stale part."""
    reader, writer = open_backend(None), open_backend(None)
    reader.create_model(_model("m"))
    for version in (1, 2, 3):
        _experience(reader, "m", version, ["a"] * 4 + ["b"] * 4)
    before = reader.held_out("m")
    gone = before[2].ids[0]
    assert writer.delete_samples("m", [gone]) == 1
    after = reader.held_out("m")
    assert gone not in after[2].ids and after[2].ids == before[2].ids[1:]
    assert torch.equal(after[2].inputs, before[2].inputs[1:]) and after[1].ids == before[1].ids
    _experience(writer, "m", 4, ["a"] * 4)
    assert list(reader.held_out("m")) == [1, 2, 3, 4]
    writer.delete_model("m")
    writer.create_model(_model("m"))
    fresh = _experience(writer, "m", 1, ["c"] * 4)
    again = reader.held_out("m")
    assert list(again) == [1] and again[1].ids == fresh.ids and torch.equal(again[1].inputs, fresh.inputs)


@settings(max_examples=60, deadline=None)
@given(
    parts=st_.lists(
        st_.lists(st_.tuples(st_.integers(1, 6), st_.booleans()), max_size=10),  # rows: (experience, live)
        max_size=5,
    ),
    chosen=st_.sets(st_.integers(1, 6)),
)
def test_the_rows_grouped_by_experience_are_each_experiences_live_rows_in_storage_order(
    parts: list[list[tuple[int, bool]]], chosen: set[int]
) -> None:
    """`grouped` against its definition: for each experience, its live rows in storage order (parts by number, rows
    in order), whatever mix of experiences a part holds (a consolidated one) and whichever rows were evicted; and
    `select` keeps exactly the chosen experiences' spans."""
    from registry.heldout import HeldOut, Part, grouped

    index, n = HeldOutIndex(seed=1), 0
    stored: dict[str, Part] = {}
    for number, rows in enumerate(parts):
        ids = [str(n + i) for i in range(len(rows))]
        n += len(rows)
        inputs = torch.tensor([[float(i)] for i in ids]).reshape(len(rows), 1)
        stored[str(number)] = Part(SampleSet(inputs, [f"c{v}" for v, _ in rows], ids), [v for v, _ in rows])
        index.classes[str(number)] = Reservoir(len(rows), [i for i, (_, live) in zip(ids, rows, strict=True) if live])
    held = grouped(index, stored, [1])
    expected: dict[int, list[str]] = {}
    for name in sorted(stored, key=int):
        part = stored[name]
        for v, i in zip(part.experiences, part.samples.ids, strict=True):
            if i in index.live:
                expected.setdefault(v, []).append(i)
    assert list(held.spans) == sorted(expected)
    got = held.as_dict()
    assert {v: s.ids for v, s in got.items()} == expected
    for s in got.values():
        assert s.inputs.flatten().tolist() == [float(i) for i in s.ids]  # each row's tensor travelled with its id
    picked = held.select(chosen)
    assert {v: s.ids for v, s in picked.as_dict().items()} == {v: ids for v, ids in expected.items() if v in chosen}
    assert picked.samples.inputs.flatten().tolist() == [float(i) for i in picked.samples.ids]
    assert HeldOut.of(got, [1]).as_dict().keys() == got.keys()
