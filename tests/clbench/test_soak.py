"""`clbench soak` runs end to end on both stores: every figure is measured and fitted (times are printed, never
asserted: the growth targets are the benchmark's, not a test's)."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clbench.cli import app
from clbench.soak import backlog_checkpoints


def test_backlog_checkpoints_start_empty_and_reach_the_total() -> None:
    marks = backlog_checkpoints(100_000)
    assert marks[0] == 0 and marks[-1] == 100_000
    assert marks == sorted(set(marks)) and 100 in marks and 1000 in marks
    assert backlog_checkpoints(0) == [0]


@pytest.mark.slow
def test_soak_measures_every_figure_on_both_stores(tmp_path: Path) -> None:
    args = [
        "soak",
        "--updates",
        "3",
        "--posts",
        "12",
        "--probe-every",
        "2",
        "--hidden",
        "8",
        "--clients",
        "2",
        "--probe-posts",
        "3",
    ]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "soak.json").read_text())
    assert [s["store"] for s in report["stores"]] == ["local", "redis"]
    for soak in report["stores"]:
        assert [p["versions"] for p in soak["updates"]] == [1, 2, 3]
        assert all(p["store_bytes"] > 0 and p["update_s"] > 0 for p in soak["updates"])
        assert {p["endpoint"] for p in soak["reads"]} == {"summary", "versions", "updates", "report"}
        assert soak["posts"][0]["backlog"] == 0 and soak["posted"] >= 12
        assert "one-sample post ms" in soak["growth"] and "update s" in soak["growth"]
    assert report["stores"][1]["updates"][0]["keys"] > 0  # Redis: the key count is measured
    assert (tmp_path / "soak.png").stat().st_size > 10_000
    assert "law" in result.output


def test_soak_refuses_an_unknown_store_and_a_malformed_setting() -> None:
    runner = CliRunner()
    bad_store = runner.invoke(app, ["soak", "--store", "local,../etc"])
    assert bad_store.exit_code == 2 and "--store takes" in bad_store.output
    bad_setting = runner.invoke(app, ["soak", "--store", "local", "--setting", "PATH=/tmp"])
    assert bad_setting.exit_code == 2 and "CL_NAME=value" in bad_setting.output
