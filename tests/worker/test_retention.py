"""Version retention: exactly the promised versions stay (live, rollback window, pinned, newest candidates), the
rest is deleted with its state in both stores, rollback within the window still works, and the lineage walk
survives a deleted ancestor."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from registry import LocalStore, ModelRecord, NotFound, Store, VersionRecord
from registry import tensors as st
from registry.records import Promotion
from tests.registry.test_history_contract import footprint
from worker.config import WorkerSettings
from worker.evaluation import lineage
from worker.retention import VersionRetention, prune_versions, retained


@pytest.fixture(params=["local", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "local":
        s: Store = LocalStore(tmp_path / "store")
    else:
        from registry.redis_store import RedisStore

        s = RedisStore(request.getfixturevalue("redis_url"))
    s.create_model(ModelRecord(name="m", architecture="mlp", input_shape=[2], classes=["a"]))
    yield s
    s.close()


def record(version: int, promoted_at: tuple[float, ...] = (), pinned: bool = False) -> VersionRecord:
    promotions = [Promotion("op", at, None).to_json() for at in promoted_at]
    return VersionRecord("m", version, None, {}, {}, "auto", promotions=promotions, pinned=pinned)


def test_retained_is_the_union_of_live_pinned_rollback_window_and_newest_candidates() -> None:
    versions = [
        record(1, (10.0,)),
        record(2, (20.0,)),
        record(3),  # a candidate
        record(4, (30.0, 70.0)),  # live, then rolled back to later: its last promotion counts
        record(5, (40.0,)),
        record(6, pinned=True),
        record(7),
        record(8, (50.0,)),
        record(9, (60.0,)),  # rolled back from (to 4)
        record(10),
        record(11),
    ]
    rules = VersionRetention(keep_promoted=2, keep_candidates=2)
    assert retained(versions, 4, rules) == {4, 9, 6, 10, 11}  # 4 is live and in the window: the window is 4, 9
    assert retained(versions, 2, rules) == {2, 4, 9, 6, 10, 11}  # a live version outside the window stays too
    assert retained(versions, 4, VersionRetention(0, 0)) == {4, 6}
    assert retained(versions, 4, VersionRetention(None, 0)) == {1, 2, 4, 5, 8, 9, 6}
    assert retained(versions, 4, VersionRetention(0, None)) == {4, 6, 3, 7, 10, 11}
    assert retained(versions, None, VersionRetention(1, 1)) == {4, 6, 11}


def _commit(store: Store, parent: int | None) -> int:
    data = st.dumps({})
    meta = VersionRecord(model="m", version=0, parent=parent, spec={}, learner={}, method="auto")
    return store.commit_version(meta, data, data).version


def test_prune_keeps_exactly_the_promised_versions_and_deletes_the_rest_with_their_state(store: Store) -> None:
    # 12 versions: every odd one promoted in turn (a lineage), the even ones candidates; 4 pinned
    live = None
    for v in range(1, 13):
        assert _commit(store, live) == v
        if v % 2:
            store.promote("m", v, by="auto")
            live = v
    store.pin_version("m", 4, True)
    settings = WorkerSettings(keep_promoted=2, keep_candidates=1)
    deleted = prune_versions(store, "m", settings.version_retention())
    kept = {9, 11, 4, 12}  # window (11 live, 9), pinned 4, newest candidate 12
    assert deleted == sorted(set(range(1, 13)) - kept)
    assert {v.version for v in store.list_versions("m")} == kept
    assert store.version_counts("m").count == 4 and store.version_counts("m").newest == 12
    for v in deleted:
        assert footprint(store, "m", v) == [], v  # directory gone / no key of the version left (SCAN)
        with pytest.raises(NotFound):
            store.read_state("m", v)
    assert all(footprint(store, "m", v) for v in kept)
    assert prune_versions(store, "m", settings.version_retention()) == []  # nothing more to do
    # rollback within the window works after pruning; the window then follows the promotions
    store.promote("m", 9, by="operator")
    assert store.live_version("m") == 9 and store.read_weights("m", 9)
    assert [r.version for r in lineage(store, "m", 11)] == [9, 11]  # 7 is gone: the lineage starts after it
    assert prune_versions(store, "m", VersionRetention(1, 0)) == [11, 12]  # 9 live and newest; 4 pinned
    assert {v.version for v in store.list_versions("m")} == {4, 9}
    store.pin_version("m", 4, False)
    assert prune_versions(store, "m", VersionRetention(1, 0)) == [4]
    assert _commit(store, 9) == 13  # numbers are never reused


def test_retention_off_deletes_nothing(store: Store) -> None:
    for _ in range(3):
        _commit(store, None)
    assert prune_versions(store, "m", VersionRetention(None, None)) == []
    assert store.version_counts("m").count == 3


def test_lineage_of_a_missing_version_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        lineage(store, "m", 5)
    assert lineage(store, "m", None) == []


def test_the_old_keep_versions_setting_sets_both_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = WorkerSettings()
    assert (defaults.keep_promoted, defaults.keep_candidates) == (24, 10)
    monkeypatch.setenv("CL_KEEP_VERSIONS", "3")
    assert WorkerSettings().version_retention() == VersionRetention(3, 3)
    monkeypatch.setenv("CL_KEEP_CANDIDATES", "7")
    assert WorkerSettings().version_retention() == VersionRetention(3, 7)  # an explicit window wins
    monkeypatch.setenv("CL_KEEP_PROMOTED", "-1")
    with pytest.raises(ValueError):
        WorkerSettings()


def test_every_limit_is_bounded_by_default_and_none_lifts_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.settings import Settings

    assert Settings().retention_max_samples == 50_000  # raw consumed samples do not grow disk without bound
    monkeypatch.setenv("CL_RETENTION_MAX_SAMPLES", "none")
    monkeypatch.setenv("CL_KEEP_PROMOTED", "none")
    settings = Settings()
    assert settings.retention_max_samples is None
    assert settings.version_retention() == VersionRetention(None, 10)
    monkeypatch.setenv("CL_RETENTION_MAX_SAMPLES", "")  # empty is not "none": refused, not silently unbounded
    with pytest.raises(ValueError):
        Settings()
