"""The store contract for a long history (run against each backend): version counts and pages, pins and retention's
checked deletion, update pages, the index of queued and running updates, and the trimming of finished ones."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from registry import (
    InvalidIdentifier,
    LocalStore,
    ModelRecord,
    NotFound,
    QueueFull,
    Store,
    UpdateRecord,
    VersionRecord,
)
from registry import tensors as st
from registry.names import MAX_ID
from registry.records import UpdateStatus


def model(name: str = "digits") -> ModelRecord:
    return ModelRecord(name=name, architecture="mlp", input_shape=[3], classes=["a"], options={"hidden": [4]})


def commit(store: Store, n: int = 1, name: str = "digits", payload: bytes | None = None) -> list[int]:
    data = payload if payload is not None else st.dumps({})
    record = VersionRecord(model=name, version=0, parent=None, spec={"classes": ["a"]}, learner={}, method="auto")
    return [store.commit_version(record, data, data).version for _ in range(n)]


def update(update_id: str, status: UpdateStatus = "queued", name: str = "digits") -> UpdateRecord:
    return UpdateRecord(update_id=update_id, model=name, method="auto", status=status)


def set_status(store: Store, update_id: str, status: UpdateStatus) -> None:
    record = store.get_update("digits", update_id)
    record.status = status
    store.put_update(record)


def footprint(store: Store, name: str, version: int) -> list[str]:
    """What the backend still holds of a version: its directory (local), or every key naming it (Redis, by SCAN)."""
    if isinstance(store, LocalStore):
        vdir = store.root / "models" / name / "versions"
        return sorted(p.name for p in vdir.iterdir() if p.name == str(version) or p.name.startswith(".deleted"))
    from registry.redis_store import RedisStore

    assert isinstance(store, RedisStore)
    found = store._redis.scan_iter(match=f"cl:{{{name}}}:v:{version}*", count=1000)  # the version's keys
    keys = sorted(k.decode() for k in found)
    return [k for k in keys if k.split(":")[3] == str(version)]  # v:12 is not v:1


def blob_keys(store: Store, name: str) -> list[str]:
    from registry.redis_store import RedisStore

    assert isinstance(store, RedisStore)
    return sorted(k.decode() for k in store._redis.scan_iter(match=f"cl:{{{name}}}:blob:*", count=1000))


# -- versions -------------------------------------------------------------------------------------------------------
def test_version_pages_are_newest_first_and_cover_every_version_once(store: Store) -> None:
    store.create_model(model())
    assert store.version_counts("digits").count == 0 and store.version_counts("digits").newest is None
    assert store.versions_page("digits", limit=5).items == [] and store.versions_page("digits", limit=5).next is None
    commit(store, 7)
    first = store.versions_page("digits", limit=3)
    assert [v.version for v in first.items] == [7, 6, 5] and first.next == 5
    second = store.versions_page("digits", limit=3, before=first.next)
    assert [v.version for v in second.items] == [4, 3, 2] and second.next == 2
    last = store.versions_page("digits", limit=3, before=second.next)
    assert [v.version for v in last.items] == [1] and last.next is None
    exact = store.versions_page("digits", limit=7)
    assert len(exact.items) == 7 and exact.next is None  # no empty page after the last one
    assert [v.version for v in store.versions_page("digits", limit=2, before=MAX_ID).items] == [7, 6]
    counts = store.version_counts("digits")
    assert (counts.count, counts.newest) == (7, 7)
    with pytest.raises(NotFound):
        store.versions_page("nope", limit=3)
    with pytest.raises(NotFound):
        store.version_counts("nope")


@pytest.mark.parametrize(
    ("limit", "before"), [(0, None), (-1, None), (True, None), ("3", None), (3, 0), (3, -5), (3, MAX_ID + 1), (3, "7")]
)
def test_hostile_page_arguments_are_refused(store: Store, limit: object, before: object) -> None:
    store.create_model(model())
    commit(store, 2)
    with pytest.raises(InvalidIdentifier):
        store.versions_page("digits", limit=limit, before=before)  # type: ignore[arg-type]
    with pytest.raises(InvalidIdentifier):
        store.updates_page("digits", limit=limit, before=before)  # type: ignore[arg-type]


def test_paging_while_versions_are_committed_returns_each_old_one_once(store: Store) -> None:
    store.create_model(model())
    existing = set(commit(store, 30))
    stop = threading.Event()

    def committer() -> None:
        while not stop.is_set():
            commit(store)

    thread = threading.Thread(target=committer)
    thread.start()
    try:
        seen: list[int] = []
        before = None
        while True:
            page = store.versions_page("digits", limit=4, before=before)
            seen += [v.version for v in page.items]
            if page.next is None:
                break
            before = page.next
    finally:
        stop.set()
        thread.join()
    assert seen == sorted(seen, reverse=True) and len(seen) == len(set(seen))  # newest first, none twice
    assert existing <= set(seen)  # every version stored when paging began, exactly once
    assert store.version_counts("digits").count == len(store.list_versions("digits"))


def test_pins_are_kept_by_retention_and_read_back_everywhere(store: Store) -> None:
    store.create_model(model())
    commit(store, 3)
    pinned = store.pin_version("digits", 2, True)
    assert pinned.pinned and pinned.version == 2
    assert store.get_version("digits", 2).pinned and not store.get_version("digits", 1).pinned
    assert [v.pinned for v in store.list_versions("digits")] == [False, True, False]
    assert [v.pinned for v in store.versions_page("digits", limit=3).items] == [False, True, False]
    assert store.pin_version("digits", 2, True).pinned  # idempotent
    assert not store.prune_version("digits", 2, promotions=0)  # pinned: kept
    assert not store.pin_version("digits", 2, False).pinned
    assert store.prune_version("digits", 2, promotions=0)
    assert not store.prune_version("digits", 2, promotions=0)  # gone already
    for bad in (2, 99):
        with pytest.raises(NotFound):
            store.pin_version("digits", bad, True)
    with pytest.raises(NotFound):
        store.pin_version("nope", 1, True)
    for hostile in (-1, MAX_ID + 1, "1", 1.5):
        with pytest.raises(InvalidIdentifier):
            store.pin_version("digits", hostile, True)  # type: ignore[arg-type]
    assert [v.version for v in store.list_versions("digits")] == [1, 3]


def test_prune_checks_live_and_promotions_in_the_same_step(store: Store) -> None:
    store.create_model(model())
    commit(store, 3)
    store.promote("digits", 1, by="a")
    assert not store.prune_version("digits", 1, promotions=1)  # live
    store.promote("digits", 2, by="a")
    assert not store.prune_version("digits", 1, promotions=0)  # promoted since retention looked (once, not 0)
    assert store.prune_version("digits", 1, promotions=1)
    assert footprint(store, "digits", 1) == []
    assert store.version_counts("digits").count == 2
    assert store.versions_page("digits", limit=5, before=2).items == []
    assert commit(store) == [4]  # numbers are never reused


def test_a_pin_racing_a_prune_is_never_lost(store: Store) -> None:
    store.create_model(model())
    versions = commit(store, 24)
    pins: dict[int, bool] = {}
    barrier = threading.Barrier(2)

    def pinner() -> None:
        for v in versions:
            barrier.wait()
            try:
                pins[v] = store.pin_version("digits", v, True).pinned
            except NotFound:
                pins[v] = False

    def pruner() -> None:
        for v in versions:
            barrier.wait()
            store.prune_version("digits", v, promotions=0)

    threads = [threading.Thread(target=pinner), threading.Thread(target=pruner)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = {v.version: v.pinned for v in store.list_versions("digits")}
    assert {v for v, ok in pins.items() if ok} == set(stored)  # every pin that landed kept its version, pinned
    assert all(stored.values())


def test_a_pruned_version_leaves_nothing_behind(store: Store) -> None:
    store.create_model(model())
    commit(store, 2)
    store.promote("digits", 2, by="a")
    assert footprint(store, "digits", 1) != []
    assert store.prune_version("digits", 1, promotions=0)
    assert footprint(store, "digits", 1) == []
    with pytest.raises(NotFound):
        store.read_weights("digits", 1)
    with pytest.raises(NotFound):
        store.read_state("digits", 1)
    store.promote("digits", commit(store)[0], by="a")
    assert store.prune_version("digits", 2, promotions=1)
    assert store.prune_version("digits", 3, promotions=1) is False  # live
    assert commit(store) == [4]
    assert store.prune_version("digits", 4, promotions=0)  # the newest: its number is not given again
    assert commit(store) == [5]


def test_chunked_payloads_of_a_pruned_version_are_deleted(redis_url: str) -> None:
    from registry.redis_store import RedisStore

    store = RedisStore(redis_url, chunk_bytes=64)
    try:
        store.create_model(model())
        commit(store, 2, payload=b"x" * 1000)  # 16 chunks each of weights and state
        store.promote("digits", 2, by="a")
        before = blob_keys(store, "digits")
        assert len(before) == 64
        assert store.prune_version("digits", 1, promotions=0)
        assert len(blob_keys(store, "digits")) == 32 and footprint(store, "digits", 1) == []
    finally:
        store.close()


def test_the_version_index_is_rebuilt_when_it_is_missing(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.create_model(model())
    commit(store, 3)
    (tmp_path / "store" / "models" / "digits" / "versions" / "index.json").unlink()  # a store from before the index
    reopened = LocalStore(tmp_path / "store")
    assert reopened.version_counts("digits").count == 3
    assert [v.version for v in reopened.versions_page("digits", limit=2).items] == [3, 2]


# -- updates --------------------------------------------------------------------------------------------------------
def test_update_pages_are_newest_first_and_cover_every_update_once(store: Store) -> None:
    store.create_model(model())
    assert store.updates_page("digits", limit=3).items == []
    for i in range(7):
        store.create_update(update(f"u{i}"))
    set_status(store, "u2", "running")  # rewriting a record keeps its place
    seen, before = [], None
    while True:
        page = store.updates_page("digits", limit=3, before=before)
        seen += [u.update_id for u in page.items]
        if page.next is None:
            break
        before = page.next
    assert seen == [f"u{i}" for i in reversed(range(7))]
    with pytest.raises(NotFound):
        store.updates_page("nope", limit=3)


def test_paging_while_updates_are_created_returns_each_old_one_once(store: Store) -> None:
    store.create_model(model())
    existing = {store.create_update(update(f"old{i}", "succeeded")).update_id for i in range(25)}
    stop = threading.Event()

    def creator() -> None:
        i = 0
        while not stop.is_set():
            store.create_update(update(f"new{i}", "succeeded"))
            i += 1

    thread = threading.Thread(target=creator)
    thread.start()
    try:
        seen: list[str] = []
        before = None
        while True:
            page = store.updates_page("digits", limit=4, before=before)
            seen += [u.update_id for u in page.items]
            if page.next is None:
                break
            before = page.next
    finally:
        stop.set()
        thread.join()
    assert len(seen) == len(set(seen)) and existing <= set(seen)
    olds = [int(u[3:]) for u in seen if u.startswith("old")]
    assert olds == sorted(olds, reverse=True)


def test_the_active_index_holds_exactly_the_queued_and_running_updates(store: Store) -> None:
    store.create_model(model())
    for i in range(4):
        store.create_update(update(f"u{i}"))
    set_status(store, "u1", "running")
    set_status(store, "u2", "succeeded")
    store.put_update(update("done", "failed"))  # stored finished: never active
    assert [(u.update_id, u.status) for u in store.active_updates("digits")] == [
        ("u0", "queued"),
        ("u1", "running"),
        ("u3", "queued"),
    ]
    set_status(store, "u1", "queued")  # re-queued by the recovery sweep: still active
    assert [u.update_id for u in store.active_updates("digits")] == ["u0", "u1", "u3"]
    with pytest.raises(QueueFull):
        store.create_update(update("u9"), max_queued=3)
    assert store.create_update(update("u9"), join_queued=True).update_id == "u3"  # the newest queued one
    with pytest.raises(NotFound):
        store.active_updates("nope")


def test_finished_updates_beyond_the_limit_are_trimmed_oldest_first(store: Store) -> None:
    store.create_model(model())
    store.create_update(update("queued-early"))
    for i in range(6):
        store.create_update(update(f"f{i}"))
        set_status(store, f"f{i}", "succeeded")
    store.request_cancel("digits", "f0")
    store.put_update(update("running", "running"))
    assert store.trim_updates("digits", 10) == 0
    assert store.trim_updates("digits", 2) == 4
    remaining = [u.update_id for u in store.updates_page("digits", limit=50).items]
    assert remaining == ["running", "f5", "f4", "queued-early"]  # active ones stay, whatever their age
    assert {u.update_id for u in store.list_updates("digits")} == set(remaining)
    with pytest.raises(NotFound):
        store.get_update("digits", "f0")
    assert not store.cancel_requested("digits", "f0")
    assert store.trim_updates("digits", 2) == 0
    with pytest.raises(ValueError):
        store.trim_updates("digits", -1)
    store.create_update(update("f0"))  # a trimmed id can be used again
    assert store.get_update("digits", "f0").status == "queued"


def test_the_update_indexes_are_built_for_a_store_that_predates_them(store: Store, tmp_path: Path) -> None:
    store.create_model(model())
    records = [update("b", "succeeded"), update("a", "queued"), update("c", "running")]
    for at, record in zip((3.0, 1.0, 2.0), records, strict=True):
        record.created_at = at
        store.put_update(record)
    if isinstance(store, LocalStore):  # drop the indexes as an older version left the store
        (store.root / "models" / "digits" / "update-index.json").unlink()
        shutil.rmtree(store.root / "models" / "digits" / "update-order")
        old: Store = LocalStore(store.root)
    else:
        from registry.redis_store import RedisStore

        assert isinstance(store, RedisStore)
        store._redis.delete(*(store._k("digits", k) for k in ("useq", "uorder", "active")))
        old = RedisStore(_url(store))
    try:
        assert [u.update_id for u in old.updates_page("digits", limit=10).items] == ["b", "c", "a"]
        assert [u.update_id for u in old.active_updates("digits")] == ["a", "c"]
        old.create_update(update("d"))
        assert [u.update_id for u in old.updates_page("digits", limit=1).items] == ["d"]
    finally:
        if old is not store:
            old.close()


def _url(store: Store) -> str:
    """The URL a RedisStore was opened with (password included: these are the suite's own servers)."""
    kwargs = store._redis.connection_pool.connection_kwargs  # type: ignore[attr-defined]
    auth = f"{kwargs['username']}:{kwargs['password']}@" if kwargs.get("password") else ""
    return f"redis://{auth}{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"


def test_creating_an_update_reads_no_finished_record(store: Store) -> None:
    """The queue limit reads the index of queued and running updates only: an old finished record that cannot even
    be decoded (standing for a long history) is never read by `create_update`."""
    store.create_model(model())
    store.create_update(update("done"))
    set_status(store, "done", "succeeded")
    garbage = b'{"status": "queued", broken'
    if isinstance(store, LocalStore):
        (store.root / "models" / "digits" / "updates" / "done.json").write_bytes(garbage)
    else:
        from registry.redis_store import RedisStore

        assert isinstance(store, RedisStore)
        store._redis.hset(store._k("digits", "updates"), "done", garbage)
    assert store.create_update(update("next"), max_queued=1).update_id == "next"
    with pytest.raises(QueueFull):
        store.create_update(update("more"), max_queued=1)
    assert [u.update_id for u in store.active_updates("digits")] == ["next"]


def test_a_place_left_by_a_crash_before_its_record_is_listed_once(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.create_model(model())
    store.create_update(update("a"))
    order = tmp_path / "store" / "models" / "digits" / "update-order"
    (order / f"{0:012d}.x").write_bytes(b"")  # its place was written, then the process died before the record
    store.create_update(update("x"))  # the retry
    assert [u.update_id for u in store.updates_page("digits", limit=10).items] == ["x", "a"]
    set_status(store, "x", "succeeded")
    assert store.trim_updates("digits", 0) == 1
    assert sorted(p.name for p in order.iterdir()) == [f"{1:012d}.a"]
