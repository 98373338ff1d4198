"""`clbench profile` times one full update per method, and the step-cost measurement compares with fine-tune
(times are printed, never asserted)."""

import json
from pathlib import Path

from typer.testing import CliRunner

from cl_core.data import load_mnist5k
from clbench.cli import app
from clbench.overhead import measure_step_costs


def test_profile_reports_every_method(tmp_path: Path) -> None:
    args = ["profile", "--method", "finetune,ewc,mas+replay+wa", "--samples", "64", "--epochs", "1"]
    args += ["--repeats", "1", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    costs = json.loads((tmp_path / "profile.json").read_text())
    assert [c["method"] for c in costs] == ["finetune", "ewc", "mas+replay+wa"]
    for cost in costs:
        assert cost["total_s"] >= cost["train_s"] > 0
        assert (cost["samples"], cost["epochs"], cost["repeats"]) == (64, 1, 1)
    assert costs[0]["importance_s"] == 0.0 and costs[1]["importance_s"] > 0.0


def test_step_costs_are_relative_to_finetune() -> None:
    costs = measure_step_costs(["joint", "ewc", "finetune+replay"], load_mnist5k().train, rounds=1, samples=256)
    assert [c.method for c in costs] == ["finetune", "ewc", "finetune+replay"]  # joint steps like fine-tune
    assert costs[0].ratio_to_finetune == 1.0
    assert all(c.median_ms > 0 and c.steps > 0 for c in costs)
