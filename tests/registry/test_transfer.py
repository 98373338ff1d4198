"""Export → import moves a model exactly (versions, method state, experiences, live pointer, pending samples)."""

import io
import json
import zipfile

import pytest
import torch

from registry import Conflict, ModelRecord, Store, VersionRecord
from registry import tensors as st
from registry.transfer import export_model, import_model


def populated(store: Store) -> None:
    store.create_model(ModelRecord(name="m", architecture="mlp", input_shape=[3], classes=["a"]))
    store.append_samples("m", torch.rand(10, 3), ["a"] * 5 + ["b"] * 5, 0.2)
    claim = store.claim("m")
    for n in (1, 2):
        store.commit_version(
            VersionRecord(
                model="m", version=0, parent=n - 1 or None, spec={"classes": ["a", "b"]}, learner={}, method="x"
            ),
            st.dumps({"w": torch.full((2,), float(n))}),
            st.dumps({"method.importance.w": torch.ones(2) * n}),
        )
    store.ack("m", claim, 2, "u2")
    store.promote("m", 1, by="someone")
    store.append_samples("m", torch.rand(4, 3), ["c", None, "c", None], 0.0)


def test_export_import_round_trip(store: Store) -> None:
    populated(store)
    archive = export_model(store, "m")
    imported = import_model(store, archive, name="copy")
    assert imported.name == "copy" and store.live_version("copy") == 1
    assert [v.version for v in store.list_versions("copy")] == [1, 2]
    for v in (1, 2):
        assert store.read_weights("copy", v) == store.read_weights("m", v)
        assert store.read_state("copy", v) == store.read_state("m", v)
    original, copied = store.experience_samples("m", 2), store.experience_samples("copy", 2)
    assert copied.labels == original.labels and torch.equal(copied.inputs, original.inputs)
    assert store.claim("copy").train.labels == ["c", None, "c", None]
    with pytest.raises(Conflict):
        import_model(store, archive, name="copy")


def test_bad_archives_are_rejected_and_leave_nothing(store: Store) -> None:
    with pytest.raises(ValueError, match="not a model archive"):
        import_model(store, b"junk")
    populated(store)
    data = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(export_model(store, "m"))) as source, zipfile.ZipFile(data, "w") as target:
        for info in source.infolist():
            content = source.read(info)
            if info.filename == "versions/2/state.safetensors":
                content = b"broken"
            target.writestr(info, content)
    with pytest.raises(ValueError, match="safetensors"):
        import_model(store, data.getvalue(), name="other")
    assert [m.name for m in store.list_models()] == ["m"]


def test_the_preprocessing_spec_travels_and_a_hostile_one_is_refused(store: Store) -> None:
    spec = {"mode": "RGB", "size": [4, 4], "scale": [-1.0, 1.0], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    store.create_model(ModelRecord(name="m", architecture="mlp", input_shape=[48], classes=[], preprocessing=spec))
    archive = export_model(store, "m")
    assert import_model(store, archive, name="copy").preprocessing == spec
    assert store.get_model("copy").preprocessing == spec

    def with_spec(bad: object) -> bytes:
        data = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(archive)) as source, zipfile.ZipFile(data, "w") as target:
            for info in source.infolist():
                content = source.read(info)
                if info.filename == "manifest.json":
                    manifest = json.loads(content)
                    manifest["model"]["preprocessing"] = bad
                    content = json.dumps(manifest).encode()
                target.writestr(info, content)
        return data.getvalue()

    hostile = [
        {**spec, "size": [100_000, 100_000]},  # every image would be resized to 10^10 pixels
        {**spec, "size": [4, 5]},  # no longer fills the input shape
        {**spec, "std": [0.0, 1.0, 1.0]},
        {**spec, "mode": "CMYK"},
        {**spec, "extra": 1},
        "L",
    ]
    for bad in hostile:
        with pytest.raises(ValueError, match="preprocessing"):
            import_model(store, with_spec(bad), name="other")
    assert sorted(m.name for m in store.list_models()) == ["copy", "m"]


def test_the_capture_setting_travels_and_a_hostile_one_is_refused(store: Store) -> None:
    capture = {"rate": 0.25, "max_samples": 100}
    store.create_model(ModelRecord(name="m", architecture="mlp", input_shape=[3], classes=[], capture=capture))
    archive = export_model(store, "m")
    assert import_model(store, archive, name="copy").capture == capture

    def with_capture(bad: object) -> bytes:
        data = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(archive)) as source, zipfile.ZipFile(data, "w") as target:
            for info in source.infolist():
                content = source.read(info)
                if info.filename == "manifest.json":
                    manifest = json.loads(content)
                    manifest["model"]["capture"] = bad
                    content = json.dumps(manifest).encode()
                target.writestr(info, content)
        return data.getvalue()

    for bad in ({"rate": 2, "max_samples": 10}, {"rate": 0.1, "max_samples": -1}, {"rate": 0.1}, "on", [1, 2]):
        with pytest.raises(ValueError, match="capture"):
            import_model(store, with_capture(bad), name="other")
    assert sorted(m.name for m in store.list_models()) == ["copy", "m"]


def test_a_model_moves_between_local_and_redis_stores(tmp_path, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    from registry import LocalStore
    from registry.redis_store import RedisStore

    local, redis = LocalStore(tmp_path / "a"), RedisStore(redis_url)
    try:
        populated(local)
        import_model(redis, export_model(local, "m"))
        back = LocalStore(tmp_path / "b")
        import_model(back, export_model(redis, "m"))
        for store in (redis, back):
            assert store.live_version("m") == 1
            assert [v.version for v in store.list_versions("m")] == [1, 2]
            for v in (1, 2):
                assert store.read_weights("m", v) == local.read_weights("m", v)
                assert store.read_state("m", v) == local.read_state("m", v)
            assert store.experience_samples("m", 2).labels == local.experience_samples("m", 2).labels
            assert store.claim("m").train.labels == local.claim("m").train.labels
    finally:
        redis.close()
