"""What only the directory store promises: durability across restarts, atomic files, format marker."""

from pathlib import Path

import pytest
import torch

from registry import LocalStore, ModelRecord, StoreUnavailable, VersionRecord
from registry import tensors as st
from registry.local import write_atomic


def test_everything_survives_a_restart(tmp_path: Path) -> None:
    first = LocalStore(tmp_path)
    first.create_model(ModelRecord(name="m", architecture="mlp", input_shape=[2], classes=[]))
    first.append_samples("m", torch.rand(3, 2), ["x", "y", None], 0.0)
    v = first.commit_version(
        VersionRecord(model="m", version=0, parent=None, spec={}, learner={}, method="auto"), b"w", b"s"
    )
    first.promote("m", v.version, by="me")
    second = LocalStore(tmp_path)
    assert second.live_version("m") == 1 and second.read_weights("m", 1) == b"w"
    assert second.claim("m").train.labels == ["x", "y", None]


def test_atomic_write_never_leaves_a_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    write_atomic(target, b"old")

    with pytest.raises(TypeError):
        write_atomic(target, object())  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_half_written_version_is_invisible(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.create_model(ModelRecord(name="m", architecture="mlp", input_shape=[2], classes=[]))
    staging = tmp_path / "models" / "m" / "versions" / ".commit-crashed"
    staging.mkdir(parents=True)
    (staging / "model.safetensors").write_bytes(st.dumps({}))
    assert store.list_versions("m") == []
    v = store.commit_version(
        VersionRecord(model="m", version=0, parent=None, spec={}, learner={}, method="x"), b"", b""
    )
    assert v.version == 1


def test_refuses_an_unknown_format(tmp_path: Path) -> None:
    (tmp_path / "FORMAT").write_text('{"format": 99}')
    with pytest.raises(StoreUnavailable, match="format 99"):
        LocalStore(tmp_path)
