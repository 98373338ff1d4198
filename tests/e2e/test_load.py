"""Bounded load on loopback: no request fails while versions are swapped or updates and promotions run."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from clbench.load import mixed_load, prepare_model, sample_input, serve, swap_under_load


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_predictions_survive_twenty_version_swaps_under_load() -> None:
    with tempfile.TemporaryDirectory() as tmp, serve(Path(tmp), {"CL_TORCH_THREADS": "1"}) as url:
        versions = prepare_model(url, "mlp")
        assert swap_under_load(url, {"inputs": [sample_input("mlp")]}, versions, swaps=20) == 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_no_prediction_fails_at_concurrency_32_while_updates_and_promotions_run() -> None:
    result = mixed_load(requests=2000)
    assert result["requests"] == 2000 and result["failed"] == 0, result
    assert result["updates"] >= 1 and result["promotions"] >= 1, result
