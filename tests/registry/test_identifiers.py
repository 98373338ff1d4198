"""Names and ids that reach a store from outside: refused unless valid, on both backends (defence in depth: the
service validates them first), and paths of the local store never leave its data folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from registry import Conflict, LocalStore, ModelRecord, NotFound, Store, UpdateRecord, VersionRecord
from registry import tensors as st

BAD_NAMES = ["../x", "../../victim", "/tmp/victim", "a/b", "", ".", "..", "a{b}", "a:b", "a*", "Ü", "x" * 65, "a\0b"]
BAD_SAMPLE_IDS = ["99999999999999999999999", "9223372036854775808", "²", "-1", "0", "01", " 1", "1 ", "1.0", "", "x"]
MAX_ID = str(2**63 - 1)


def model(name: str = "digits") -> ModelRecord:
    return ModelRecord(name=name, architecture="mlp", input_shape=[3], classes=["a"], options={"hidden": [4]})


def version(name: str = "digits") -> VersionRecord:
    return VersionRecord(model=name, version=0, parent=None, spec={"classes": ["a"]}, learner={}, method="auto")


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its content (to show that nothing changed)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def victim_beside(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("do not delete")
    (victim / "model.json").write_text("{}")  # looks like a model directory from afar
    return victim


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_invalid_model_names_are_refused_and_touch_nothing(store: Store, tmp_path: Path, bad: str) -> None:
    victim = victim_beside(tmp_path)
    before = tree(tmp_path)
    with pytest.raises(ValueError, match="model name"):
        store.create_model(model(bad))
    for call in (store.get_model, store.delete_model, store.live_version, store.list_versions, store.pending_counts):
        with pytest.raises(ValueError, match="model name"):
            call(bad)
    assert tree(tmp_path) == before and (victim / "precious.txt").exists()
    assert store.list_models() == []


def test_invalid_update_ids_and_versions_are_refused(store: Store) -> None:
    store.create_model(model())
    for bad in ("../../x", "a/b", "", "x" * 65, "..", "a.json"):
        with pytest.raises(ValueError, match="update id"):
            store.put_update(UpdateRecord(update_id=bad, model="digits", method="auto"))
        with pytest.raises(ValueError, match="update id"):
            store.get_update("digits", bad)
    assert store.list_updates("digits") == []
    weights = st.dumps({"w": torch.zeros(1)})
    for number in (2**63, -1):
        with pytest.raises(ValueError, match="version"):
            store.commit_version(version(), weights, weights, number=number)
    for bad_version in ("../1", 2**63, True):
        with pytest.raises(ValueError, match="version"):
            store.get_version("digits", bad_version)  # type: ignore[arg-type]
    assert store.list_versions("digits") == []


def test_request_keys_are_refused_unless_printable_ascii(store: Store) -> None:
    store.create_model(model())
    for bad in ("", "a b", "x" * 201, "é"):
        with pytest.raises(ValueError, match="request key"):
            store.append_samples("digits", torch.zeros(1, 3), ["a"], 0.2, request_key=bad)
    assert store.pending_counts("digits").labeled == 0


@pytest.mark.parametrize("bad", [*BAD_SAMPLE_IDS, 7, None])
def test_invalid_sample_ids_are_refused_and_nothing_is_written(store: Store, bad: object) -> None:
    store.create_model(model())
    ids, _ = store.append_samples("digits", torch.zeros(3, 3), ["a", "a", None], 0.0)
    store.delete_samples("digits", [ids[0]])
    with pytest.raises(ValueError, match="sample id"):
        store.delete_samples("digits", [ids[1], bad])  # type: ignore[list-item]
    assert store.deleted_ids("digits") == {int(ids[0])}
    assert store.pending_counts("digits").trainable == 2


def test_the_largest_sample_id_is_accepted(store: Store) -> None:
    store.create_model(model())
    assert store.delete_samples("digits", [MAX_ID]) == 0
    assert store.deleted_ids("digits") == {2**63 - 1}


def poison(store: Store, name: str, entries: list[object]) -> None:
    """Write a deletion record the way the code before the id checks did (any all-digit string became an int)."""
    if isinstance(store, LocalStore):
        path = store.root / "models" / name / "deleted.json"
        path.write_text(json.dumps([*sorted({int(str(e)) for e in entries if str(e).isdigit()}), "x", None]))
    else:
        raw = store._redis  # type: ignore[attr-defined]
        raw.sadd(store._k(name, "deleted"), *[str(e) for e in entries], "²", "x")  # type: ignore[attr-defined]


def test_a_poisoned_deletion_record_is_repaired(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    store.create_model(model())
    poison(store, "digits", [3, 99999999999999999999999])
    assert store.deleted_ids("digits") == {3}  # reading never trips over the bad entries
    with caplog.at_level(logging.WARNING, logger="registry"):
        assert store.repair_deleted_ids("digits") > 0
    assert "digits" in caplog.text and "deletion record" in caplog.text
    assert store.repair_deleted_ids("digits") == 0  # repaired for good
    assert store.deleted_ids("digits") == {3}
    memory_ids = torch.tensor(sorted(store.deleted_ids("digits")), dtype=torch.long)  # what the pipeline builds
    assert memory_ids.tolist() == [3]


# -- the local store's folder ---------------------------------------------------------------------------------------


def test_local_paths_stay_inside_the_data_folder(tmp_path: Path) -> None:
    victim = victim_beside(tmp_path)
    store = LocalStore(tmp_path / "store")
    (store.root / "models" / "evil").symlink_to(victim, target_is_directory=True)
    before = tree(victim)
    with pytest.raises(ValueError, match="outside"):
        store.get_model("evil")
    with pytest.raises(ValueError, match="outside"):
        store.delete_model("evil")
    assert tree(victim) == before
    assert [m.name for m in store.list_models()] == []


def test_a_directory_that_is_not_the_stores_own_is_never_removed(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    foreign = store.root / "models" / "foo"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("someone else's")
    with pytest.raises(Conflict, match="not a model of this store"):
        store.create_model(model("foo"))
    assert (foreign / "notes.txt").read_text() == "someone else's"
    (foreign / "notes.txt").unlink()  # an empty directory is no one's data: it is replaced
    store.create_model(model("foo"))
    assert store.get_model("foo").name == "foo"
    with pytest.raises(NotFound):
        store.get_model("bar")


def test_a_model_stored_under_an_invalid_name_by_older_code_is_left_out(store: Store) -> None:
    store.create_model(model("good"))
    legacy = model("Legacy.Name")
    if isinstance(store, LocalStore):
        folder = store.root / "models" / legacy.name
        folder.mkdir()
        (folder / "model.json").write_text(json.dumps(legacy.to_json()))
    else:
        raw = store._redis  # type: ignore[attr-defined]
        raw.sadd("cl:models", legacy.name)
        raw.set(f"cl:{{{legacy.name}}}:model", json.dumps(legacy.to_json()))
    assert [m.name for m in store.list_models()] == ["good"]
    store.promote("good", store.commit_version(version("good"), st.dumps({}), st.dumps({})).version, by="t")
    assert store.live_version("good") == 1
