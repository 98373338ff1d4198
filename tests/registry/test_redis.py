"""What only the Redis store has to show: chunked values, no leftovers, several processes at once, outages."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import torch
from redis.client import Pipeline
from redis.exceptions import WatchError

from registry import Conflict, ModelRecord, StoreUnavailable, UpdateRecord, VersionRecord, redis_store
from registry import tensors as st
from registry.records import ExperienceRecord
from registry.redis_store import RedisStore, Staged
from registry.samples import BatchMeta
from registry.signing import PromotionRecord
from tests.distributed.processes import redis_server
from tests.registry.conftest import SIGNER

NAME = "digits"


def model(name: str = NAME) -> ModelRecord:
    return ModelRecord(name=name, architecture="mlp", input_shape=[3], classes=["a"], options={"hidden": [4]})


def version(name: str = NAME) -> VersionRecord:
    return VersionRecord(model=name, version=0, parent=None, spec={"classes": ["a"]}, learner={}, method="auto")


def keys(url: str, pattern: str = "*") -> set[str]:
    return {k.decode() for k in redis.Redis.from_url(url).scan_iter(match=pattern)}


def wait_for(condition: Callable[[], Any], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.fixture
def store(redis_url: str) -> Any:
    s = RedisStore(redis_url, chunk_bytes=1024)
    s.create_model(model())
    yield s
    s.close()


def test_large_values_are_chunked_and_read_back_exactly(store: RedisStore, redis_url: str) -> None:
    weights = st.dumps({"w": torch.rand(40, 40)})  # 6.4 kB: seven chunks of 1 kB
    committed = store.commit_version(version(), weights, st.dumps({}))
    chunks = keys(redis_url, "cl:{digits}:blob:*")
    assert len(chunks) == 7
    assert all(redis.Redis.from_url(redis_url).pttl(k) == -1 for k in chunks)  # made permanent by the commit
    assert store.read_weights(NAME, committed.version) == weights
    state = st.dumps({"importance": torch.rand(30, 30)})
    store.rewrite_state(NAME, committed.version, state)
    assert store.read_state(NAME, committed.version) == state
    assert chunks < keys(redis_url, "cl:{digits}:blob:*")  # the state's chunks joined the weights'
    store.rewrite_state(NAME, committed.version, st.dumps({}))  # small again: inline, old chunks dropped
    assert keys(redis_url, "cl:{digits}:blob:*") == chunks
    store.commit_version(version(), st.dumps({}), st.dumps({}))
    store.delete_version(NAME, committed.version)
    assert keys(redis_url, "cl:{digits}:blob:*") == set()


def test_large_sample_batches_are_chunked_and_kept_apart_from_held_out_data(store: RedisStore) -> None:
    x = torch.rand(200, 3)
    ids, held = store.append_samples(NAME, x, ["a"] * 200, 0.2)
    client = redis.Redis.from_url(store.where)
    batch = client.hgetall("cl:{digits}:b:1")
    assert b"train@" in batch and b"held" in batch  # training rows chunked, held-out rows apart
    claim = store.claim(NAME)
    assert torch.equal(claim.train.inputs, x[[i for i, h in enumerate(held) if not h]])
    assert torch.equal(claim.held_out.inputs, x[[i for i, h in enumerate(held) if h]])
    assert store.delete_samples(NAME, [ids[0], ids[4]]) == 2  # rewrites the chunked payloads
    assert claim.train.ids[1:] == store.claim(NAME).train.ids
    assert claim.held_out.ids[1:] == store.claim(NAME).held_out.ids


def test_an_interrupted_commit_leaves_only_expiring_chunks(store: RedisStore, redis_url: str) -> None:
    mode, _ = store._stage(NAME, b"x" * 5000)  # what a worker killed before its commit script leaves
    assert mode == "c"
    chunks = keys(redis_url, "cl:{digits}:blob:*")
    assert chunks and all(redis.Redis.from_url(redis_url).pttl(k) > 0 for k in chunks)
    assert store.list_versions(NAME) == []


def test_deleting_a_model_leaves_no_key_behind(store: RedisStore, redis_url: str) -> None:
    store.create_model(model("other"))
    v = store.commit_version(version(), st.dumps({"w": torch.rand(40, 40)}), st.dumps({"s": torch.rand(40, 40)}))
    store.promote(NAME, v.version, by="x")
    store.append_samples(NAME, torch.rand(300, 3), ["a"] * 300, 0.2, request_key="k")
    store.ack(NAME, store.claim(NAME), v.version, "u1")
    store.append_samples(NAME, torch.rand(4, 3), ["b"] * 4, 0.2)
    store.claim(NAME)
    store.delete_samples(NAME, ["1"])
    store.put_update(UpdateRecord(update_id="u1", model=NAME, method="auto"))
    store.request_cancel(NAME, "u1")
    store.remember(NAME, "key", {"x": 1}, ttl_s=60)
    store.acquire_update_lock(NAME, "me", ttl_s=60)
    store._stage(NAME, b"x" * 5000)
    assert len(keys(redis_url, "cl:{digits}:*")) > 15
    store.delete_model(NAME)
    assert keys(redis_url, "*digits*") == set()
    assert [m.name for m in store.list_models()] == ["other"]
    store.create_model(model())  # the name can be used again, from scratch
    assert store.live_version(NAME) is None and store.pending_counts(NAME).labeled == 0


def test_a_transaction_whose_watched_key_changes_runs_again(store: RedisStore, redis_url: str) -> None:
    other, attempts = redis.Redis.from_url(redis_url), []

    def attempt(pipe: Pipeline, staged: list[Staged]) -> int:
        pipe.watch("counter")
        value = int(pipe.get("counter") or 0)
        attempts.append(value)
        if len(attempts) == 1:
            other.set("counter", 10)  # another client writes between our read and our write
        pipe.multi()
        pipe.set("counter", value + 1)
        pipe.execute()
        return value + 1

    assert store._optimistic(NAME, "the counter", attempt) == 11
    assert attempts == [0, 10] and other.get("counter") == b"11"


def test_transactions_give_up_after_a_bounded_number_of_attempts_leaving_no_chunk(
    store: RedisStore, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_store, "_TRANSACTION_ATTEMPTS", 3)
    attempts = []

    def attempt(pipe: Pipeline, staged: list[Staged]) -> None:
        attempts.append(1)
        staged.append(store._stage(NAME, b"x" * (store.chunk_bytes + 1)))  # large: written as expiring chunks
        raise WatchError()  # as if another writer always won

    with pytest.raises(StoreUnavailable, match="the test value: too many concurrent writers"):
        store._optimistic(NAME, "the test value", attempt)
    assert len(attempts) == 3 and keys(redis_url, "cl:{digits}:blob:*") == set()


def test_a_retried_script_call_applies_once(store: RedisStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reply lost after Redis ran a script makes redis-py send it again: the operation id makes that a no-op."""
    for name in ("commit_version", "promote", "ack"):
        script = store._scripts[name]

        def twice(*args: Any, _script: Any = script, **kwargs: Any) -> Any:
            _script(*args, **kwargs)
            return _script(*args, **kwargs)

        monkeypatch.setitem(store._scripts, name, twice)
    first = store.commit_version(version(), st.dumps({}), st.dumps({}))
    assert [v.version for v in store.list_versions(NAME)] == [first.version]
    assert store.promote(NAME, first.version, by="x", expected=None)
    assert len(store.get_version(NAME, first.version).promotions) == 1
    store.append_samples(NAME, torch.rand(4, 3), ["a"] * 4, 0.0)
    store.ack(NAME, store.claim(NAME), first.version, "u")
    assert len(store.experiences(NAME)) == 1


def test_a_crashed_consumers_samples_are_claimed_by_the_next_one(store: RedisStore, redis_url: str) -> None:
    ids, _ = store.append_samples(NAME, torch.rand(5, 3), ["a"] * 5, 0.0)
    crashed = RedisStore(redis_url)
    assert crashed.claim(NAME).train.ids == ids  # read through the group, never acknowledged
    crashed.close()
    survivor = RedisStore(redis_url)
    claim = survivor.claim(NAME)
    assert claim.train.ids == ids
    survivor.ack(NAME, claim, 1, "u")
    client = redis.Redis.from_url(redis_url)
    assert client.xpending("cl:{digits}:stream", "updates")["pending"] == 0
    assert [c["name"] for c in client.xinfo_consumers("cl:{digits}:stream", "updates")] == [survivor._consumer.encode()]
    assert len(survivor.claim(NAME).train) == 0
    survivor.close()


def test_an_acknowledgement_with_a_stale_fencing_token_is_refused(store: RedisStore) -> None:
    store.append_samples(NAME, torch.rand(2, 3), ["a", "a"], 0.0)
    token = store.acquire_update_lock(NAME, "w1", ttl_s=0.05)
    assert token is not None
    claim = store.claim(NAME)
    wait_for(lambda: store.acquire_update_lock(NAME, "w2", ttl_s=30) is not None)
    with pytest.raises(Conflict):
        store.ack(NAME, claim, 1, "u", fence=token)
    assert store.pending_counts(NAME).labeled == 2


def test_promotions_reach_other_processes_and_stay_within_their_database(redis_url: str) -> None:
    writer, reader = RedisStore(redis_url), RedisStore(redis_url)
    other_db = RedisStore(redis_url.rsplit("/", 1)[0] + "/" + str((int(redis_url.rsplit("/", 1)[1]) + 1) % 512))
    seen: list[tuple[str, int | None]] = []
    stray: list[tuple[str, int | None]] = []
    reader.subscribe(lambda name, v: seen.append((name, v)))
    other_db.subscribe(lambda name, v: stray.append((name, v)))
    writer.create_model(model())
    writer.commit_version(version(), st.dumps({}), st.dumps({}))
    writer.promote(NAME, 1, by="x")
    writer.delete_model(NAME)
    wait_for(lambda: len(seen) == 2)
    assert seen == [(NAME, 1), (NAME, None)] and stray == []
    for s in (writer, reader, other_db):
        s.close()


def test_an_unreachable_redis_is_store_unavailable_without_leaking_the_password() -> None:
    store = RedisStore("redis://:s3cret@127.0.0.1:9/0")  # nothing listens on port 9
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        store.get_model(NAME)
    assert time.monotonic() - started < 5
    assert "s3cret" not in str(info.value) and "***" in str(info.value)
    store.close()


@pytest.mark.slow
def test_the_same_store_works_again_after_redis_restarts(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis", appendonly=True) as server:
        url = f"{server.url}/0"
        store, writer = RedisStore(url), RedisStore(url)
        seen: list[tuple[str, int | None]] = []
        store.subscribe(lambda name, v: seen.append((name, v)))
        store.create_model(model())
        store.commit_version(version(), st.dumps({}), st.dumps({}))
        store.commit_version(version(), st.dumps({}), st.dumps({}))
        server.stop()
        with pytest.raises(StoreUnavailable):
            store.get_model(NAME)
        with pytest.raises(StoreUnavailable):
            store.append_samples(NAME, torch.rand(1, 3), ["a"], 0.0)
        server.start()  # same port, same append-only file
        assert store.get_model(NAME).name == NAME  # the same object, no restart
        store.append_samples(NAME, torch.rand(1, 3), ["a"], 0.0)
        wait_for(lambda: (NAME, None) in seen)  # caught up after resubscribing: the pointer as it is now
        writer.promote(NAME, 2, by="x")  # the subscription was renewed: messages arrive again
        wait_for(lambda: (NAME, 2) in seen)
        store.close()
        writer.close()


def test_a_signed_promotion_whose_record_changed_meanwhile_is_signed_again(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes promote at once: the one whose record was overtaken signs again after it, so the sequence
    stored never goes back (a replica that accepted the newer one would refuse the older one as a replay)."""
    a, b = RedisStore(redis_url, signer=SIGNER), RedisStore(redis_url, signer=SIGNER)
    a.create_model(model())
    for _ in range(2):
        a.commit_version(version(), st.dumps({}), st.dumps({}))
    script, calls, overtaken = a._scripts["promote"], [], []

    def interleaved(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        if len(calls) == 1:  # b promotes after a read the record and signed, before a's script runs
            assert b.promote(NAME, 2, by="b")
            overtaken.append(PromotionRecord.parse(b.live_pointer(NAME).promotion or ""))
        return script(*args, **kwargs)

    monkeypatch.setitem(a._scripts, "promote", interleaved)
    assert a.promote(NAME, 1, by="a")
    assert len(calls) == 2  # refused once (the record had changed), then signed again
    record = PromotionRecord.parse(a.live_pointer(NAME).promotion or "")
    assert record is not None and overtaken[0] is not None
    assert record.version == 1 and record.seq > overtaken[0].seq and SIGNER.authentic(record)
    for s in (a, b):
        s.close()


def test_a_signed_promotion_over_a_garbage_record_replaces_it(store: RedisStore, redis_url: str) -> None:
    signed = RedisStore(redis_url, signer=SIGNER)
    signed.commit_version(version(), st.dumps({}), st.dumps({}))
    redis.Redis.from_url(redis_url).set("cl:{digits}:promotion", b"\xff\x00" + b"9" * 5000)
    assert signed.live_pointer(NAME).promotion is not None  # read back as text, whatever the bytes
    assert signed.promote(NAME, 1, by="x")
    record = PromotionRecord.parse(signed.live_pointer(NAME).promotion or "")
    assert record is not None and record.version == 1 and SIGNER.authentic(record)
    signed.close()


# -- the held-out store, compaction and a post's cost in Redis ---------------------------------------------------------


def _commands(client: redis.Redis) -> int:
    stats: dict[str, dict[str, int]] = client.info("commandstats")
    return sum(s["calls"] for name, s in stats.items() if name not in ("cmdstat_info", "cmdstat_config|resetstat"))


def _post_commands(store: RedisStore, client: redis.Redis) -> int:
    """Commands Redis runs for what the service does for one post: the pending counts, then the append."""
    store.pending_counts(NAME)  # (a tally left stale by an acknowledgement is counted again here, before measuring)
    client.config_resetstat()
    store.pending_counts(NAME)
    store.append_samples(NAME, torch.rand(1, 3), ["a"], 0.2, request_key=f"k{time.monotonic_ns()}")
    return _commands(client)


def test_a_post_runs_the_same_commands_whatever_the_backlog(store: RedisStore, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    for i in range(5):
        store.append_samples(NAME, torch.rand(1, 3), ["a"], 0.2, request_key=f"a{i}")
    small = _post_commands(store, client)
    for i in range(600):
        store.append_samples(NAME, torch.rand(1, 3), ["a" if i % 3 else None], 0.2, request_key=f"b{i}")
    store.ack(NAME, store.claim(NAME, limit=100), 1, "u")  # some consumed, 450 or so still waiting
    assert store.pending_counts(NAME).total > 400
    assert _post_commands(store, client) == small


def test_acknowledged_batches_leave_the_stream_and_their_held_out_rows(store: RedisStore, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    for version in range(1, 11):
        for _ in range(2):
            store.append_samples(NAME, torch.rand(1, 3), ["a"], 0.5)  # every second one is held out
        store.ack(NAME, store.claim(NAME), version, None)
        assert client.xlen("cl:{digits}:stream") == 0  # the stream holds what waits, nothing else
    batches = keys(redis_url, "cl:{digits}:b:*")
    assert len(batches) == 10  # the ten held-out-only batches are gone: their rows are in the held-out store
    assert all(not client.hexists(b, "held") for b in batches)
    assert sum(len(s) for s in store.held_out(NAME).values()) == 10
    store.append_samples(NAME, torch.rand(1, 3), ["a"], 0.5)
    assert client.xlen("cl:{digits}:stream") == 1


def test_data_from_before_the_held_out_store_is_folded_in_once(store: RedisStore, redis_url: str) -> None:
    """Held-out rows kept inside their batch, as the store wrote them before: the first read moves them."""
    client = redis.Redis.from_url(redis_url)
    rows = torch.arange(12.0).reshape(4, 3)
    meta = BatchMeta(1, ["a", "a", "b", "b"], [False, True, False, True], ["1", "2", "3", "4"], at=time.time())
    client.hset(
        "cl:{digits}:b:1",
        mapping={
            "meta": json.dumps(meta.to_json()),
            "train": st.dumps({"inputs": rows[[0, 2]]}),
            "held": st.dumps({"inputs": rows[[1, 3]]}),
        },
    )
    client.zadd("cl:{digits}:batches", {"1": 1})
    client.xadd("cl:{digits}:stream", {"seq": 1}, id="1-0")
    client.set("cl:{digits}:bseq", 1)
    client.set("cl:{digits}:sseq", 4)
    client.set("cl:{digits}:acked", 1)
    claim = {"from": 0, "upto": 1, "excluded": [], "consumed": {}, "deferred": {}}
    client.rpush("cl:{digits}:experiences", json.dumps(ExperienceRecord(1, "u1", claim, 2, 0, 2).to_json()))
    held = store.held_out(NAME)
    assert list(held) == [1] and held[1].ids == ["2", "4"] and torch.equal(held[1].inputs, rows[[1, 3]])
    assert not client.hexists("cl:{digits}:b:1", "held")  # moved
    assert store.held_out(NAME)[1].ids == ["2", "4"]  # folded in once
    ids, _ = store.append_samples(NAME, torch.rand(2, 3), ["a", "b"], 0.0)
    store.ack(NAME, store.claim(NAME), 2, "u2")
    assert ids == ["5", "6"] and list(store.held_out(NAME)) == [1]


def test_large_held_out_parts_are_chunked_and_rewritten_on_deletion(store: RedisStore, redis_url: str) -> None:
    x = torch.rand(200, 3)
    store.append_samples(NAME, x, ["a"] * 200, 0.5)
    claim = store.claim(NAME)
    store.ack(NAME, claim, 1, None)
    client = redis.Redis.from_url(redis_url)
    ref = client.hget("cl:{digits}:held", "p:0@")  # 100 rows: above the 1 kB chunk size
    assert isinstance(ref, bytes)
    chunks = keys(redis_url, f"cl:{{digits}}:blob:{ref.decode().split()[0]}:*")
    assert chunks and all(client.pttl(k) == -1 for k in chunks)
    assert torch.equal(store.held_out(NAME)[1].inputs, claim.held_out.inputs)
    assert store.delete_samples(NAME, [claim.held_out.ids[0]]) == 1
    assert store.experience_samples(NAME, 1).ids == claim.held_out.ids[1:]
    assert not chunks & keys(redis_url, "cl:{digits}:blob:*")  # the old chunks went with the old part
