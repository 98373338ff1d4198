"""The store contract: what every backend guarantees (run against each backend)."""

import threading
import uuid
from collections.abc import Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st_

from registry import Conflict, ModelRecord, NotFound, PendingCounts, QueueFull, Store, UpdateRecord, VersionRecord
from registry import tensors as st
from registry.records import UpdateStatus


def model(name: str = "digits") -> ModelRecord:
    return ModelRecord(name=name, architecture="mlp", input_shape=[3], classes=["a"], options={"hidden": [4]})


def version(name: str = "digits", parent: int | None = None) -> VersionRecord:
    return VersionRecord(model=name, version=0, parent=parent, spec={"classes": ["a"]}, learner={}, method="auto")


def test_models_are_created_listed_and_deleted(store: Store) -> None:
    store.create_model(model("a"))
    store.create_model(model("b"))
    with pytest.raises(Conflict):
        store.create_model(model("a"))
    assert [m.name for m in store.list_models()] == ["a", "b"]
    assert store.get_model("a").options == {"hidden": [4]}
    assert store.live_version("a") is None
    store.delete_model("a")
    with pytest.raises(NotFound):
        store.get_model("a")
    assert [m.name for m in store.list_models()] == ["b"]


def test_a_models_preprocessing_spec_is_kept(store: Store) -> None:
    spec = {"mode": "L", "size": [28, 28], "scale": [0.0, 1.0], "mean": [0.0], "std": [1.0]}
    store.create_model(ModelRecord(name="img", architecture="mlp", input_shape=[784], classes=[], preprocessing=spec))
    store.create_model(model("plain"))
    assert store.get_model("img").preprocessing == spec
    assert store.get_model("plain").preprocessing is None
    assert {m.name: m.preprocessing for m in store.list_models()} == {"img": spec, "plain": None}


def test_versions_are_numbered_and_read_back_exactly(store: Store) -> None:
    store.create_model(model())
    weights = st.dumps({"w": torch.arange(6.0).reshape(2, 3)}, {"note": "x"})
    state = st.dumps({"method.importance.w": torch.ones(2, 3)})
    first = store.commit_version(version(), weights, state)
    second = store.commit_version(version(parent=1), weights, state)
    assert (first.version, second.version) == (1, 2)
    assert store.read_weights("digits", 1) == weights and store.read_state("digits", 2) == state
    assert st.metadata(store.read_weights("digits", 1)) == {"note": "x"}
    assert [v.version for v in store.list_versions("digits")] == [1, 2]
    assert store.get_version("digits", 2).parent == 1
    with pytest.raises(NotFound):
        store.get_version("digits", 3)
    with pytest.raises(NotFound):
        store.read_weights("nope", 1)


def test_promotion_is_compare_and_set_and_notifies(store: Store) -> None:
    store.create_model(model())
    for _ in range(2):
        store.commit_version(version(), st.dumps({}), st.dumps({}))
    seen: list[tuple[str, int | None]] = []
    subscription = store.subscribe(lambda name, v: seen.append((name, v)))
    assert store.promote("digits", 1, by="alice", expected=None)
    assert not store.promote("digits", 2, by="bob", expected=None)  # stale expectation
    assert store.live_version("digits") == 1
    assert store.promote("digits", 2, by="bob", expected=1)
    assert store.promote("digits", 1, by="carol")  # unconditional (rollback)
    assert store.live_version("digits") == 1
    promotions = store.get_version("digits", 1).promotions
    assert [(p["by"], p["previous"]) for p in promotions] == [("alice", None), ("carol", 2)]
    _wait_for(lambda: len(seen) >= 3)
    assert seen[:3] == [("digits", 1), ("digits", 2), ("digits", 1)]
    subscription.close()


def test_only_one_of_many_concurrent_promoters_wins(store: Store) -> None:
    store.create_model(model())
    for _ in range(8):
        store.commit_version(version(), st.dumps({}), st.dumps({}))
    wins = []
    barrier = threading.Barrier(8)

    def attempt(v: int) -> None:
        barrier.wait()
        if store.promote("digits", v, by=str(v), expected=None):
            wins.append(v)

    threads = [threading.Thread(target=attempt, args=(v,)) for v in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and store.live_version("digits") == wins[0]


def test_samples_are_held_out_by_class_claimed_and_acknowledged(store: Store) -> None:
    store.create_model(model())
    labels = ["a"] * 10 + ["b"] * 5 + [None] * 3
    ids, held = store.append_samples("digits", torch.rand(18, 3), labels, 0.2)
    assert len(set(ids)) == 18
    assert [i for i, h in enumerate(held) if h] == [4, 9, 14]  # the 5th and 10th "a", the 5th "b"
    counts = store.pending_counts("digits")
    assert counts == PendingCounts(labeled=12, unlabeled=3, held_out=3, per_class={"a": 10, "b": 5})
    claim = store.claim("digits")
    assert len(claim.train) == 15 and len(claim.held_out) == 3
    assert claim.train.labels.count(None) == 3
    # nothing acknowledged: the next claim sees the same samples (a crashed update loses nothing)
    again = store.claim("digits")
    assert again.train.ids == claim.train.ids
    store.append_samples("digits", torch.rand(2, 3), ["c", "c"], 0.2)  # arrives during the update
    store.ack("digits", claim, version=1, update_id="u1")
    pending = store.claim("digits")
    assert pending.train.labels == ["c", "c"]
    assert store.experience_samples("digits", 1).ids == claim.held_out.ids
    assert len(store.experience_samples("digits", 7)) == 0
    [experience] = store.experiences("digits")
    assert (experience.version, experience.labeled, experience.unlabeled, experience.held_out) == (1, 12, 3, 3)
    with pytest.raises(Conflict):
        store.ack("digits", claim, version=2, update_id="u2")  # already consumed


def test_the_counts_before_a_batch_plus_the_batch_are_the_counts_after_it(store: Store) -> None:
    """Ingestion asks the policy with ``before.plus(batch)`` instead of reading the store again: the same rule."""
    store.create_model(model())
    store.append_samples("digits", torch.rand(7, 3), ["a", None, "a", "b", "a", "a", "a"], 0.2)
    before = store.pending_counts("digits")
    labels: list[str | None] = ["b", "b", None, "c", "b", "b", "b"]
    _, held = store.append_samples("digits", torch.rand(7, 3), labels, 0.2)
    assert store.pending_counts("digits") == before.plus(labels, held)
    assert before.held_out == 1 and held == [False] * 5 + [True, False]  # the 5th "a", then the 5th "b"


def test_sample_inputs_round_trip_exactly(store: Store) -> None:
    store.create_model(model())
    x = torch.rand(4, 3)
    store.append_samples("digits", x, ["a", None, "a", "b"], 0.0)
    claim = store.claim("digits")
    assert torch.equal(claim.train.inputs, x) and claim.train.labels == ["a", None, "a", "b"]


def test_claim_limit_takes_whole_batches_in_order(store: Store) -> None:
    store.create_model(model())
    for k in range(3):
        store.append_samples("digits", torch.full((4, 3), float(k)), ["a"] * 4, 0.0)
    claim = store.claim("digits", limit=8)
    assert len(claim.train) == 8 and float(claim.train.inputs.max()) == 1.0


def test_update_records(store: Store) -> None:
    store.create_model(model())
    store.put_update(UpdateRecord(update_id="u1", model="digits", method="auto"))
    record = store.get_update("digits", "u1")
    record.status, record.progress = "running", 0.5
    store.put_update(record)
    assert store.get_update("digits", "u1").progress == 0.5
    store.put_update(UpdateRecord(update_id="u2", model="digits", method="mas"))
    assert [u.update_id for u in store.list_updates("digits")] == ["u1", "u2"]
    with pytest.raises(NotFound):
        store.get_update("digits", "u3")
    assert not store.cancel_requested("digits", "u1")
    store.request_cancel("digits", "u1")
    assert store.cancel_requested("digits", "u1") and not store.cancel_requested("digits", "u2")
    store.put_update(store.get_update("digits", "u1"))  # rewriting the record keeps the flag
    assert store.cancel_requested("digits", "u1")


def test_update_lock_is_exclusive_fenced_and_expires(store: Store) -> None:
    store.create_model(model())
    token = store.acquire_update_lock("digits", "w1", ttl_s=30)
    assert token is not None
    assert store.acquire_update_lock("digits", "w2", ttl_s=30) is None
    assert store.refresh_update_lock("digits", token, ttl_s=30)
    store.release_update_lock("digits", token)
    second = store.acquire_update_lock("digits", "w2", ttl_s=0.05)
    assert second is not None and second > token
    _wait_for(lambda: store.acquire_update_lock("digits", "w3", ttl_s=30) is not None)
    with pytest.raises(Conflict):  # the expired holder's token no longer commits
        store.commit_version(version(), st.dumps({}), st.dumps({}), fence=second)


def _wait_for(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_sample_ids_are_increasing_numbers(store: Store) -> None:
    store.create_model(model())
    first, _ = store.append_samples("digits", torch.rand(3, 3), ["a", "a", None], 0.0)
    second, _ = store.append_samples("digits", torch.rand(2, 3), ["b", None], 0.0)
    numbers = [int(i) for i in first + second]
    assert numbers == sorted(numbers) and len(set(numbers)) == 5


def test_ingestion_with_a_request_key_stores_once(store: Store) -> None:
    store.create_model(model())
    x = torch.rand(5, 3)
    ids, held = store.append_samples("digits", x, ["a"] * 5, 0.2, request_key="k1")
    again, held_again = store.append_samples("digits", torch.rand(5, 3), ["a"] * 5, 0.2, request_key="k1")
    assert (again, held_again) == (ids, held)
    assert store.pending_counts("digits").per_class == {"a": 5}
    other, _ = store.append_samples("digits", x, ["a"] * 5, 0.2, request_key="k2")
    assert set(other).isdisjoint(ids)


def test_deleted_samples_are_never_trained_and_leave_tombstones(store: Store) -> None:
    store.create_model(model())
    ids, _ = store.append_samples("digits", torch.rand(4, 3), ["a", "b", "a", "b"], 0.0)
    claim = store.claim("digits")
    store.ack("digits", claim, version=1, update_id="u")
    pending, _ = store.append_samples("digits", torch.rand(3, 3), ["c", "c", "c"], 0.0)
    assert store.delete_samples("digits", [ids[0], pending[1], "999999"]) == 2
    assert store.claim("digits").train.ids == [pending[0], pending[2]]
    assert store.deleted_ids("digits") >= {int(ids[0]), int(pending[1])}


def test_retention_drops_old_consumed_data_but_keeps_pending(store: Store) -> None:
    store.create_model(model())
    store.append_samples("digits", torch.rand(10, 3), ["a"] * 10, 0.2)  # 8 training + 2 held out
    store.ack("digits", store.claim("digits"), version=1, update_id="u1")
    store.append_samples("digits", torch.rand(4, 3), ["a"] * 4, 0.0)  # pending
    dropped = store.apply_retention("digits", max_age_s=None, max_samples=3)
    assert dropped["training"] + dropped["held_out"] == 7
    assert len(store.claim("digits").train) == 4  # pending untouched
    held_left = len(store.experience_samples("digits", 1))
    assert held_left == 2 - dropped["held_out"]
    again = store.apply_retention("digits", max_age_s=0.0, max_samples=None)  # everything consumed is too old now
    assert again["training"] + again["held_out"] == 3 and again["held_out"] == held_left
    assert len(store.experience_samples("digits", 1)) == 0
    assert len(store.claim("digits").train) == 4
    assert store.apply_retention("digits", max_age_s=0.0, max_samples=0) == {"training": 0, "held_out": 0}


def test_experiences_can_be_imported(store: Store) -> None:
    store.create_model(model())
    held = store.claim("digits").held_out  # empty, with the right shape
    from registry import SampleSet

    samples = SampleSet(torch.rand(3, 3), ["a", "b", "a"], [])
    store.add_experience("digits", 4, samples, "u4")
    store.add_experience("digits", 6, held, None)
    got = store.experience_samples("digits", 4)
    assert got.labels == ["a", "b", "a"] and torch.equal(got.inputs, samples.inputs)
    assert [e.version for e in store.experiences("digits")] == [4, 6]
    assert len(store.claim("digits").train) == 0


def test_updates_are_created_once(store: Store) -> None:
    store.create_model(model())
    first = store.create_update(UpdateRecord(update_id="abc", model="digits", method="auto", reason="first"))
    second = store.create_update(UpdateRecord(update_id="abc", model="digits", method="mas", reason="second"))
    assert first.reason == second.reason == "first"


def test_answers_are_remembered_until_they_expire(store: Store) -> None:
    store.create_model(model())
    store.remember("digits", "key", {"accepted": 3}, ttl_s=30)
    assert store.recall("digits", "key") == {"accepted": 3}
    store.remember("digits", "short", {"x": 1}, ttl_s=0.05)
    _wait_for(lambda: store.recall("digits", "short") is None)
    assert store.recall("digits", "unknown") is None


def test_versions_can_be_numbered_scrubbed_and_deleted(store: Store) -> None:
    store.create_model(model())
    store.commit_version(version(), st.dumps({}), st.dumps({"a": torch.ones(1)}), number=3)
    with pytest.raises(Conflict):
        store.commit_version(version(), st.dumps({}), st.dumps({}), number=2)
    assert store.commit_version(version(), st.dumps({}), st.dumps({})).version == 4
    store.rewrite_state("digits", 3, st.dumps({"a": torch.zeros(1)}))
    assert torch.equal(st.loads(store.read_state("digits", 3))["a"], torch.zeros(1))
    store.promote("digits", 4, by="x")
    with pytest.raises(Conflict):
        store.delete_version("digits", 4)
    store.delete_version("digits", 3)
    assert [v.version for v in store.list_versions("digits")] == [4]
    assert store.commit_version(version(), st.dumps({}), st.dumps({})).version == 5  # numbers are not reused


def _update(update_id: str, name: str = "digits") -> UpdateRecord:
    return UpdateRecord(update_id=update_id, model=name, method="auto")


def _race(count: int, request: Callable[[int], None]) -> None:
    """``count`` threads call ``request(i)`` at once (a barrier releases them together)."""
    barrier = threading.Barrier(count)

    def run(i: int) -> None:
        barrier.wait()
        request(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_the_queue_limit_holds_under_concurrent_requests(store: Store) -> None:
    store.create_model(model())
    accepted: list[str] = []
    refused: list[QueueFull] = []

    def request(i: int) -> None:
        try:
            accepted.append(store.create_update(_update(f"u{i}"), max_queued=8).update_id)
        except QueueFull as exc:
            refused.append(exc)

    _race(20, request)
    assert len(accepted) == 8 and len(set(accepted)) == 8 and len(refused) == 12
    assert {(e.queued, e.limit) for e in refused} == {(8, 8)}
    assert sorted(u.update_id for u in store.list_updates("digits") if u.status == "queued") == sorted(accepted)


def test_the_queue_limit_counts_queued_updates_and_spares_retries(store: Store) -> None:
    store.create_model(model())
    for i in range(2):
        store.create_update(_update(f"u{i}"), max_queued=2)
    with pytest.raises(QueueFull):
        store.create_update(_update("u2"), max_queued=2)
    assert store.create_update(_update("u0"), max_queued=2).update_id == "u0"  # a retry gets the stored record
    started = store.get_update("digits", "u0")
    started.status = "running"
    store.put_update(started)  # a started update leaves the queue
    assert store.create_update(_update("u2"), max_queued=2).update_id == "u2"
    assert store.create_update(_update("u3")).update_id == "u3"  # no limit given: none applies
    with pytest.raises(ValueError):
        store.create_update(_update("u4"), max_queued=0)
    with pytest.raises(NotFound):
        store.create_update(_update("u5", name="nope"), max_queued=2)


def test_a_joining_request_joins_the_newest_queued_update(store: Store) -> None:
    store.create_model(model())
    assert store.create_update(_update("p1"), join_queued=True).update_id == "p1"  # nothing queued: created
    assert store.create_update(_update("p2"), join_queued=True).update_id == "p1"
    store.create_update(_update("e1"))
    assert store.create_update(_update("p3"), max_queued=2, join_queued=True).update_id == "e1"  # full: joins
    for update_id in ("p1", "e1"):
        record = store.get_update("digits", update_id)
        record.status = "succeeded"
        store.put_update(record)
    assert store.create_update(_update("p4"), join_queued=True).update_id == "p4"
    assert [u.update_id for u in store.list_updates("digits")] == ["p1", "e1", "p4"]


def test_concurrent_joining_requests_queue_one_update(store: Store) -> None:
    store.create_model(model())
    got: list[str] = []
    _race(12, lambda i: got.append(store.create_update(_update(f"j{i}"), max_queued=8, join_queued=True).update_id))
    assert len(got) == 12 and len(set(got)) == 1
    assert [u.update_id for u in store.list_updates("digits")] == got[:1]


STATUSES: list[UpdateStatus] = ["queued", "running", "succeeded", "failed", "rejected", "cancelled"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    limit=st_.integers(1, 5),
    initial=st_.lists(st_.sampled_from(STATUSES), max_size=7),
    joins=st_.lists(st_.booleans(), min_size=1, max_size=10),
)
def test_concurrent_requests_never_exceed_the_queue_limit(
    store: Store, limit: int, initial: list[UpdateStatus], joins: list[bool]
) -> None:
    """Whatever the queue held and however plain and joining requests interleave, no request queues an update
    beyond the limit, a plain request is refused only when the queue is full, and a joining one never is."""
    name = f"q{uuid.uuid4().hex[:12]}"
    store.create_model(model(name))
    for i, status in enumerate(initial):
        store.put_update(UpdateRecord(update_id=f"i{i}", model=name, method="auto", status=status))
    queued_before = initial.count("queued")
    answers: dict[int, str] = {}
    refused: list[int] = []

    def request(i: int) -> None:
        try:
            answers[i] = store.create_update(_update(f"r{i}", name), max_queued=limit, join_queued=joins[i]).update_id
        except QueueFull:
            refused.append(i)

    _race(len(joins), request)
    queued = [u.update_id for u in store.list_updates(name) if u.status == "queued"]
    created = {a for a in answers.values() if a.startswith("r")}
    assert len(queued) == queued_before + len(created)
    assert len(created) <= max(0, limit - queued_before)
    assert not any(joins[i] for i in refused)
    if not any(joins):
        assert len(created) == min(len(joins), max(0, limit - queued_before))
    if refused:
        assert len(queued) == max(limit, queued_before)
    store.delete_model(name)
