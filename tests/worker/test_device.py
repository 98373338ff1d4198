"""An update on the device that CL_DEVICE names: training, importance, the gate and the commit, three updates in a
row (first version, new classes, a label-shuffled batch the gate rejects).

The CUDA case is skipped where no CUDA device is visible and runs where one is; the CPU case runs everywhere, so
the test's own steps are exercised on every CI run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cl_core.data import load_mnist5k
from registry import UpdateRecord
from tests.worker.test_pipeline import make_store, post
from worker.config import WorkerSettings
from worker.pipeline import load_version, run_update
from worker.scheduling import new_update_id

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CL_DEVICE=cuda)")


@pytest.fixture(scope="module")
def digits() -> dict[int, torch.Tensor]:
    train = load_mnist5k().train
    return {d: train.inputs[train.labels == d][:100] for d in range(10)}


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_an_update_runs_on_the_device_cl_device_names(
    device: str, tmp_path: Path, digits: dict[int, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CL_DEVICE", device)
    settings = WorkerSettings(epochs=4, max_forgetting=0.05)
    assert settings.device == device
    store = make_store(tmp_path)

    def update(method: str = "auto") -> UpdateRecord:
        record = UpdateRecord(update_id=new_update_id(), model="digits", method=method, triggered_by="test")
        store.put_update(record)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        result = run_update(store, "digits", record.update_id, settings)
        if device == "cuda":
            assert torch.cuda.max_memory_allocated() > 0, "nothing ran on the GPU"
        return result

    post(store, digits, [0, 1, 2])
    first = update()
    assert first.status == "succeeded", first.error
    post(store, digits, [3, 4], n=60)
    second = update()
    assert second.status in ("succeeded", "rejected"), second.error  # committed either way; the gate decided
    post(store, digits, [0, 1, 2, 3, 4], n=60, shuffle=True)
    third = update("finetune")
    assert third.status == "rejected" and "forgetting gate" in (third.error or ""), third.error

    # committed versions are device-independent: CPU tensors, finite weights and importance, held-out figures
    for version in (1, 2, 3):
        loaded = load_version(store, "digits", version)
        assert all(t.device.type == "cpu" for t in loaded.model.state_dict().values())
        assert all(bool(torch.isfinite(t).all()) for t in loaded.model.state_dict().values())
        assert all(t.device.type == "cpu" for t in loaded.learner_state.values())
    for version in (1, 2):  # `auto`: online EWC's Fisher, and the exemplar memory
        state = load_version(store, "digits", version).learner_state
        importance = [v for k, v in state.items() if k.startswith("method.importance.")]
        assert importance and all(bool(torch.isfinite(v).all()) and bool((v >= 0).all()) for v in importance)
        assert any(bool((v > 0).any()) for v in importance)
        assert len(state["memory.ids"]) > 0
    v1, v2 = store.get_version("digits", 1), store.get_version("digits", 2)
    assert v1.metrics["accuracy"] > 0.8
    assert v2.spec["classes"] == ["0", "1", "2", "3", "4"] and v2.metrics["gate"]["samples"] > 0
    assert store.get_version("digits", 3).metrics["gate"]["passed"] is False
