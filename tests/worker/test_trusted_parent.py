"""With a signing key, an update builds only on a live pointer signed by the key: a pointer forged in the store must
not become the parent of a new, correctly signed version (which replicas would then serve)."""

import json
from pathlib import Path

import pytest
import torch

from cl_core.models import ModelSpec, build_model
from registry import LocalStore, ModelRecord, UpdateRecord
from registry import tensors as st
from worker.config import WorkerSettings
from worker.pipeline import import_weights, run_update
from worker.promotion import UntrustedParent, promote, trusted_live_version
from worker.scheduling import new_update_id

KEY = "worker-signing-key-" + "7" * 16
SPEC = ModelSpec("mlp", (8,), ["a", "b"], {"hidden": [16]})


def keyed_store(tmp_path: Path) -> tuple[LocalStore, WorkerSettings]:
    settings = WorkerSettings(data_dir=tmp_path, epochs=1, device="cpu", signing_key=KEY)
    store = LocalStore(tmp_path / "store", signer=settings.signer())
    store.create_model(
        ModelRecord(name="m", architecture="mlp", input_shape=[8], classes=["a", "b"], options={"hidden": [16]})
    )
    for seed in (0, 1):  # two signed versions, the second live
        weights = st.dumps(build_model(SPEC, seed=seed).state_dict())
        version = import_weights(store, "m", weights, by="test", settings=settings)
        promote(store, "m", version.version, by="test")
    assert store.live_version("m") == 2
    x = torch.rand(40, 8, generator=torch.Generator().manual_seed(0))
    store.append_samples("m", x, ["a" if i % 2 else "b" for i in range(40)], 0.2)
    return store, settings


def forge_pointer(store: LocalStore, version: int) -> None:
    """What someone who can write to the data folder (or to Redis) but lacks the key can do."""
    live = store.root / "models" / "m" / "live.json"
    pointer = json.loads(live.read_text())
    live.write_text(json.dumps({**pointer, "version": version}))


def run(store: LocalStore, settings: WorkerSettings) -> UpdateRecord:
    record = UpdateRecord(update_id=new_update_id(), model="m", method="finetune", triggered_by="test")
    store.put_update(record)
    return run_update(store, "m", record.update_id, settings)


def test_a_signed_pointer_is_built_on(tmp_path: Path) -> None:
    store, settings = keyed_store(tmp_path)
    assert trusted_live_version(store, "m", settings.signer()) == 2
    done = run(store, settings)
    assert done.status == "succeeded", done.error
    assert store.get_version("m", done.version or 0).parent == 2


def test_an_update_refuses_a_forged_pointer_and_commits_nothing(tmp_path: Path) -> None:
    store, settings = keyed_store(tmp_path)
    forge_pointer(store, 1)
    with pytest.raises(UntrustedParent, match="replayed"):
        trusted_live_version(store, "m", settings.signer())
    done = run(store, settings)
    assert done.status == "failed" and "refusing to build on the live version" in (done.error or "")
    assert [v.version for v in store.list_versions("m")] == [1, 2]  # nothing built on the forged parent
    assert store.pending_counts("m").trainable > 0  # the samples wait for a trusted parent


def test_weights_changed_after_their_promotion_are_not_built_on(tmp_path: Path) -> None:
    store, settings = keyed_store(tmp_path)
    weights = store.root / "models" / "m" / "versions" / "2" / "model.safetensors"
    assert weights.is_file(), sorted(p.name for p in weights.parent.iterdir())
    weights.write_bytes(st.dumps(build_model(SPEC, seed=9).state_dict()))
    with pytest.raises(UntrustedParent, match="digest"):
        trusted_live_version(store, "m", settings.signer())
    with pytest.raises(UntrustedParent):
        import_weights(store, "m", st.dumps(build_model(SPEC, seed=3).state_dict()), by="test", settings=settings)


def test_without_a_key_the_pointer_is_taken_as_it_is(tmp_path: Path) -> None:
    store, _ = keyed_store(tmp_path)
    forge_pointer(store, 1)
    assert trusted_live_version(store, "m", None) == 1
