"""`clbench speed` runs end to end and reports exact values (times are printed, never asserted)."""

import json
from pathlib import Path

from typer.testing import CliRunner

from clbench.cli import app


def test_speed_reports_every_path_with_loop_exact_values(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["speed", "--samples", "12", "--repeats", "1", "--steps", "3", "--no-libraries", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "speed.json").read_text())
    quantities = {row["quantity"] for row in report["importance"]}
    assert quantities == {"fisher-true", "fisher-empirical", "mas"}
    for row in report["importance"]:
        assert row["max_abs_diff"] is not None and row["max_abs_diff"] < 1e-5, row
    variants = [row["variant"] for row in report["steps"]]
    assert len(variants) == 3 and report["steps"][0]["ratio_to_plain"] == 1.0
