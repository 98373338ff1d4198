"""The store contract: what every backend guarantees (run against each backend)."""

import threading
import uuid
from collections.abc import Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st_

from registry import (
    Claim,
    Conflict,
    InvalidIdentifier,
    LivePointer,
    ModelRecord,
    NotFound,
    PendingCounts,
    QuarantineRecord,
    QueueFull,
    Store,
    UpdateRecord,
    VersionRecord,
)
from registry import tensors as st
from registry.records import UpdateStatus
from registry.signing import PromotionRecord, Signer, Verifier, weights_digest
from tests.registry.conftest import SIGNER


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


def test_the_lock_holder_is_readable_until_release_or_expiry(store: Store) -> None:
    store.create_model(model())
    assert store.update_lock_holder("digits") is None
    token = store.acquire_update_lock("digits", "update:u1 host:42", ttl_s=30)
    assert token is not None
    holder = store.update_lock_holder("digits")
    assert holder is not None and (holder.owner, holder.token) == ("update:u1 host:42", token)
    assert 0 < holder.expires_in_s <= 30
    store.release_update_lock("digits", token)
    assert store.update_lock_holder("digits") is None
    short = store.acquire_update_lock("digits", "w2", ttl_s=0.05)
    assert short is not None
    _wait_for(lambda: store.update_lock_holder("digits") is None)  # expired: nobody holds it
    assert not store.refresh_update_lock("digits", short, ttl_s=30)  # an expired lock is not revived
    with pytest.raises(NotFound):
        store.update_lock_holder("nope")


def test_a_raising_listener_neither_fails_the_promotion_nor_stops_the_others(store: Store) -> None:
    store.create_model(model())
    store.commit_version(version(), st.dumps({}), st.dumps({}))
    errors: list[tuple[str, str]] = []
    store.on_listener_error(lambda name, exc: errors.append((name, str(exc))))
    seen: list[int | None] = []

    def broken(name: str, v: int | None) -> None:
        raise MemoryError("CUDA out of memory")

    subscriptions = [store.subscribe(broken), store.subscribe(lambda name, v: seen.append(v))]
    assert store.promote("digits", 1, by="alice", expected=None)
    assert store.live_version("digits") == 1
    _wait_for(lambda: seen == [1] and errors == [("digits", "CUDA out of memory")])
    for subscription in subscriptions:
        subscription.close()


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


def test_retention_drops_old_consumed_data_but_keeps_pending_and_held_out_data(store: Store) -> None:
    store.create_model(model())
    store.append_samples("digits", torch.rand(10, 3), ["a"] * 10, 0.2)  # 8 training + 2 held out
    claim = store.claim("digits")
    store.ack("digits", claim, version=1, update_id="u1")
    store.append_samples("digits", torch.rand(4, 3), ["a"] * 4, 0.0)  # pending
    dropped = store.apply_retention("digits", max_age_s=None, max_samples=3)
    assert dropped == {"training": 5, "held_out": 0}  # the held-out samples live in the held-out store
    assert len(store.claim("digits").train) == 4  # pending untouched
    assert store.experience_samples("digits", 1).ids == claim.held_out.ids
    again = store.apply_retention("digits", max_age_s=0.0, max_samples=None)  # everything consumed is too old now
    assert again == {"training": 3, "held_out": 0}
    assert store.experience_samples("digits", 1).ids == claim.held_out.ids  # the forgetting report keeps its data
    assert torch.equal(store.held_out("digits")[1].inputs, claim.held_out.inputs)
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


def _quarantine(store: Store, claim: Claim, ids: list[str], update_id: str = "u") -> None:
    held = set(claim.held_out.ids)
    records = [
        QuarantineRecord(
            id=i, label="b", predicted="a", held_out=i in held, update_id=update_id, reason="t", seq=claim.where[i]
        )
        for i in ids
    ]
    store.quarantine("digits", records)


def test_quarantined_samples_are_set_aside_until_released(store: Store) -> None:
    store.create_model(model())
    ids, held = store.append_samples("digits", torch.rand(10, 3), ["a"] * 5 + ["b"] * 5, 0.2)
    held_b = ids[9]  # the 5th "b" is held out
    assert held[9]
    claim = store.claim("digits")
    assert set(claim.where) == set(ids) and not claim.exempt
    _quarantine(store, claim, [ids[5], held_b])
    assert [r.id for r in store.quarantined("digits")] == [ids[5], held_b]
    assert store.quarantined("digits")[1].held_out and store.quarantined("digits")[0].predicted == "a"
    assert ids[5] not in store.claim("digits").ids and held_b not in store.claim("digits").ids
    assert store.pending_counts("digits").per_class == {"a": 5, "b": 3}
    store.ack("digits", claim, version=1, update_id="u", quarantined=[ids[5], held_b])
    assert store.experience_samples("digits", 1).ids == [ids[4]]  # the quarantined held-out sample is not in it
    [experience] = store.experiences("digits")
    assert (experience.labeled, experience.held_out) == (7, 1)
    assert store.claim("digits").ids == [] and store.pending_counts("digits").per_class == {}
    assert store.release_quarantine("digits", [held_b, "12345"]) == [held_b]
    assert store.release_quarantine("digits", [held_b]) == []  # released once
    assert [r.id for r in store.quarantined("digits")] == [ids[5]]
    again = store.claim("digits")
    assert again.held_out.ids == [held_b] and again.exempt == {held_b}  # pending again, exempt from screening
    assert store.pending_counts("digits") == PendingCounts(0, 0, 1, {"b": 1})
    store.ack("digits", again, version=2, update_id="u2")
    assert store.experience_samples("digits", 2).ids == [held_b]
    assert store.claim("digits").ids == []
    assert store.delete_samples("digits", [ids[5]]) == 1
    assert store.quarantined("digits") == []


def test_quarantine_of_a_pending_batch_survives_a_crashed_update(store: Store) -> None:
    store.create_model(model())
    ids, _ = store.append_samples("digits", torch.rand(4, 3), ["a", "b", "a", "b"], 0.0)
    claim = store.claim("digits")
    _quarantine(store, claim, [ids[1]])  # then the update crashes before its acknowledgement
    retry = store.claim("digits")
    assert retry.ids == [ids[0], ids[2], ids[3]]
    store.ack("digits", retry, version=1, update_id="u")
    store.release_quarantine("digits", [ids[1]])
    assert store.claim("digits").ids == [ids[1]]


def test_deferred_samples_stay_pending_for_a_later_update(store: Store) -> None:
    store.create_model(model())
    ids, _ = store.append_samples("digits", torch.rand(10, 3), ["a"] * 5 + ["z"] * 5, 0.2)
    claim = store.claim("digits")
    waiting = ids[5:]
    store.ack("digits", claim, version=1, update_id="u1", deferred=waiting)
    assert store.experience_samples("digits", 1).ids == [ids[4]]
    assert store.pending_counts("digits") == PendingCounts(4, 0, 1, {"z": 5})
    more, _ = store.append_samples("digits", torch.rand(2, 3), ["z", "z"], 0.2)
    second = store.claim("digits")
    assert second.ids == [*ids[5:9], *more, ids[9]]  # carried first, then the new batch (training before held-out)
    assert second.where[ids[5]] != second.where[more[0]]
    store.ack("digits", second, version=2, update_id="u2", deferred=[more[1]])
    assert store.experience_samples("digits", 2).ids == [ids[9]]
    assert store.claim("digits").ids == [more[1]]
    assert store.delete_samples("digits", [more[1]]) == 1
    assert store.claim("digits").ids == [] and store.pending_counts("digits").per_class == {}


def test_samples_posted_as_relabel_are_exempt_from_screening(store: Store) -> None:
    store.create_model(model())
    plain, _ = store.append_samples("digits", torch.rand(2, 3), ["a", "a"], 0.0)
    marked, _ = store.append_samples("digits", torch.rand(2, 3), ["b", "b"], 0.0, relabel=True)
    claim = store.claim("digits")
    assert claim.exempt == set(marked) and set(claim.ids) == {*plain, *marked}


def test_retention_keeps_quarantined_deferred_and_protected_samples(store: Store) -> None:
    store.create_model(model())
    ids, _ = store.append_samples("digits", torch.rand(10, 3), ["a"] * 10, 0.2)
    claim = store.claim("digits")
    _quarantine(store, claim, [ids[0]])
    store.ack("digits", claim, version=1, update_id="u", quarantined=[ids[0]], deferred=[ids[1]])
    dropped = store.apply_retention("digits", max_age_s=0.0, max_samples=None, protect=[ids[2]])
    assert dropped == {"training": 5, "held_out": 0}  # everything consumed but the protected sample
    assert store.experience_samples("digits", 1).ids == [ids[4], ids[9]]  # held-out data is not raw data
    assert store.claim("digits").ids == [ids[1]] and [r.id for r in store.quarantined("digits")] == [ids[0]]


def test_quarantine_is_fenced_like_a_commit(store: Store) -> None:
    store.create_model(model())
    ids, _ = store.append_samples("digits", torch.rand(2, 3), ["a", "a"], 0.0)
    claim = store.claim("digits")
    token = store.acquire_update_lock("digits", "w1", ttl_s=30)
    assert token is not None
    record = QuarantineRecord(id=ids[0], label="a", predicted="b", held_out=False, update_id="u", reason="t")
    record.seq = claim.where[ids[0]]
    with pytest.raises(Conflict):
        store.quarantine("digits", [record], fence=token + 1000)
    assert store.quarantined("digits") == []
    store.quarantine("digits", [record], fence=token)
    assert [r.id for r in store.quarantined("digits")] == [ids[0]]
    with pytest.raises(NotFound):
        store.quarantined("nope")
    with pytest.raises(NotFound):
        store.release_quarantine("nope", [ids[0]])
    with pytest.raises(InvalidIdentifier):  # one bad id and nothing is released
        store.release_quarantine("digits", [ids[0], "../1"])
    assert [r.id for r in store.quarantined("digits")] == [ids[0]]


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


# -- signed promotions (registry/signing.py) -------------------------------------------------------------------------


def _record(store: Store, name: str = "digits") -> PromotionRecord:
    raw = store.live_pointer(name).promotion
    assert raw is not None
    record = PromotionRecord.parse(raw)
    assert record is not None
    return record


def test_a_signed_promotion_is_stored_with_its_pointer(signed_store: Store) -> None:
    store = signed_store
    store.create_model(model())
    for i in range(2):
        store.commit_version(version(), st.dumps({"w": torch.full((2,), float(i))}), st.dumps({}))
    assert store.live_pointer("digits") == LivePointer(None, None)
    verifier = Verifier(SIGNER)
    seqs = []
    for v, expected in ((1, None), (2, 1), (2, 2)):  # promoting the live version again signs anew
        assert store.promote("digits", v, by="alice", expected=expected)
        pointer, record = store.live_pointer("digits"), _record(store)
        assert pointer.version == v == store.live_version("digits")
        assert SIGNER.authentic(record) and (record.model, record.version) == ("digits", v)
        assert record.weights_sha256 == weights_digest(store.read_weights("digits", v))
        assert verifier.check("digits", v, pointer.promotion) == record
        verifier.accept(record)
        seqs.append(record.seq)
    assert seqs == sorted(set(seqs))
    before = store.live_pointer("digits")
    assert not store.promote("digits", 1, by="bob", expected=1)  # a failed compare-and-set changes neither
    assert store.live_pointer("digits") == before
    with pytest.raises(NotFound):
        store.promote("digits", 9, by="bob")
    assert store.live_pointer("digits") == before


def test_stores_without_a_key_keep_no_record_and_with_one_follow_the_last_sequence(
    open_backend: Callable[[Signer | None], Store],
) -> None:
    signed, unsigned = open_backend(SIGNER), open_backend(None)
    signed.create_model(model())
    for _ in range(2):
        signed.commit_version(version(), st.dumps({}), st.dumps({}))
    assert unsigned.promote("digits", 1, by="old-replica")
    assert unsigned.live_pointer("digits") == LivePointer(1, None)  # as before signing existed
    assert signed.promote("digits", 2, by="worker")
    first = _record(signed)
    assert unsigned.promote("digits", 1, by="old-replica")
    assert signed.live_pointer("digits") == LivePointer(1, None)  # no stale record of version 2 is left behind
    assert signed.promote("digits", 1, by="worker")
    assert _record(signed).seq > first.seq
    with pytest.raises(NotFound):
        signed.live_pointer("nope")


def test_concurrent_signed_promotions_leave_a_record_that_matches_the_pointer(
    open_backend: Callable[[Signer | None], Store],
) -> None:
    stores = [open_backend(SIGNER) for _ in range(4)]  # four processes of one deployment
    stores[0].create_model(model())
    for _ in range(4):
        stores[0].commit_version(version(), st.dumps({}), st.dumps({}))
    barrier = threading.Barrier(4)

    def promote_all(i: int) -> None:
        barrier.wait()
        for v in (1, 2, 3, 4):
            assert stores[i].promote("digits", (v + i) % 4 + 1, by=str(i))

    threads = [threading.Thread(target=promote_all, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pointer, record = stores[0].live_pointer("digits"), _record(stores[0])
    assert record.version == pointer.version and SIGNER.authentic(record)
