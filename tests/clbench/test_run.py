"""`clbench run` follows the benchmark protocol on a reduced setting: exact JSON keys, forgetting, the upper bound.

The reduced setting (2 tasks, 1–2 epochs, one seed) keeps each case to seconds; times are printed, never asserted.
"""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cl_core.data import SCENARIOS, load_mnist5k
from cl_core.memory import DEFAULT_REPLAY
from clbench.cli import app
from clbench.run import RESULT_KEYS, RunSettings, run_one
from clbench.selection import QUICK_METHODS
from clbench.tune import empty_record

PROTOCOL_KEYS = {
    "protocol",
    "scenario",
    "method",
    "seed",
    "hparams",
    "acc_matrix",
    "acc",
    "bwt",
    "forgetting",
    "wall_s",
    "importance_s",
}


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]


def test_result_keys_are_exactly_the_protocols() -> None:
    assert set(RESULT_KEYS) == PROTOCOL_KEYS and len(RESULT_KEYS) == len(PROTOCOL_KEYS)


def test_run_writes_records_summary_and_plots_finetune_forgets_joint_learns(tmp_path: Path) -> None:
    args = ["run", "--scenario", "split-class", "--method", "finetune,joint", "--seeds", "0"]
    args += ["--epochs", "2", "--tasks", "2", "--step-rounds", "1", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = records(tmp_path)
    assert [(r["scenario"], r["method"], r["seed"]) for r in lines] == [
        ("split-class", "finetune", 0),
        ("split-class", "joint", 0),
    ]
    for record in lines:
        assert set(record) == PROTOCOL_KEYS, record.keys()
        assert record["protocol"] == 2
        assert isinstance(record["hparams"], dict) and record["hparams"]["epochs"] == 2
        assert all(0.0 <= a <= 1.0 for row in record["acc_matrix"] for a in row)
        assert record["wall_s"] > 0 and record["importance_s"] >= 0
    finetune, joint = lines
    assert len(finetune["acc_matrix"]) == 2 and len(finetune["acc_matrix"][0]) == 2
    assert finetune["bwt"] < -0.5, finetune  # class-IL without protection: the old classes are forgotten
    assert finetune["forgetting"] > 0.5
    assert len(joint["acc_matrix"]) == 1 and joint["bwt"] is None and joint["forgetting"] is None
    assert joint["acc"] > 0.9, joint  # the upper bound learns every class
    summary = (tmp_path / "summary.md").read_text()
    assert "## split-class" in summary and "van de Ven & Tolias 2019" in summary and "Hsu et al. 2018" in summary
    assert "clbench run --scenario split-class --method finetune,joint" in summary
    for png in ("heatmap_split-class.png", "tasks_split-class.png", "acc.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_quick_covers_every_scenario_with_the_quick_methods_on_one_seed(tmp_path: Path) -> None:
    args = [
        "run",
        "--quick",
        "--tasks",
        "1",
        "--epochs",
        "1",
        "--step-rounds",
        "0",
        "--no-plots",
        "--out",
        str(tmp_path),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = records(tmp_path)
    assert {(r["scenario"], r["method"]) for r in lines} == {(s, m) for s in SCENARIOS for m in QUICK_METHODS}
    assert {r["seed"] for r in lines} == {0}


def test_resume_keeps_finished_runs(tmp_path: Path) -> None:
    base = ["run", "--scenario", "split-task", "--method", "finetune", "--epochs", "1", "--tasks", "2"]
    base += ["--step-rounds", "0", "--no-plots", "--out", str(tmp_path)]
    assert CliRunner().invoke(app, [*base, "--seeds", "0"]).exit_code == 0
    first = records(tmp_path)
    result = CliRunner().invoke(app, [*base, "--seeds", "0,1", "--resume"])
    assert result.exit_code == 0, result.output
    lines = records(tmp_path)
    assert [r["seed"] for r in lines] == [0, 1] and lines[0] == first[0]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--method", "joint+replay", "joint"),
        ("--method", "sgd", "unknown method"),
        ("--scenario", "split-everything", "unknown scenario"),
        ("--seeds", "a,b", "seeds"),
    ],
)
def test_bad_arguments_fail_before_training(tmp_path: Path, option: str, value: str, message: str) -> None:
    result = CliRunner().invoke(app, ["run", option, value, "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "results.jsonl").exists()


def test_lambda_comes_from_the_record_unless_overridden() -> None:
    data = load_mnist5k()
    record = empty_record()
    record["entries"] = {"split-task": {"ewc": {"chosen": {"lam": 1234.0}}}}
    tuned = run_one(data, "split-task", "ewc", 0, RunSettings(epochs=1, tasks=2, tuned=record))
    assert tuned["hparams"]["method"]["lam"] == 1234.0 and tuned["hparams"]["lambda_source"] == "tuned"
    forced = run_one(data, "split-task", "ewc", 0, RunSettings(epochs=1, tasks=2, lam=5.0, tuned=record))
    assert forced["hparams"]["method"]["lam"] == 5.0 and forced["hparams"]["lambda_source"] == "--lambda"
    untuned = run_one(data, "split-domain", "ewc", 0, RunSettings(epochs=1, tasks=2, tuned=record))
    assert untuned["hparams"]["lambda_source"] == "default, not tuned"
    plain = run_one(data, "split-task", "finetune+replay", 0, RunSettings(epochs=1, tasks=2, lam=5.0, tuned=record))
    assert plain["hparams"]["lambda_source"] == "none" and plain["hparams"]["memory"]["total"] == 200
    assert tuned["hparams"]["train_samples"] == 4000  # run trains on the whole train split


def test_protocol_2_memory_is_one_total_and_protocol_1_stays_reproducible() -> None:
    data = load_mnist5k()
    v2 = run_one(data, "split-domain", "finetune+replay", 0, RunSettings(epochs=1, tasks=2))
    memory = v2["hparams"]["memory"]
    assert v2["protocol"] == 2
    assert (memory["total"], memory["per_class"], memory["balance"]) == (200, None, "class-task")
    assert memory["replay"] == DEFAULT_REPLAY
    v1 = run_one(data, "split-domain", "finetune+replay", 0, RunSettings(epochs=1, tasks=2, protocol=1))
    memory = v1["hparams"]["memory"]
    assert v1["protocol"] == 1 and (memory["per_class"], memory["total"], memory["replay"]) == (20, None, "concat")
    derpp = run_one(data, "split-class", "derpp", 0, RunSettings(epochs=1, tasks=2, memory=50))
    assert derpp["hparams"]["method"]["buffer_size"] == 50 and derpp["hparams"]["memory"] is None


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--protocol", "3", "unknown protocol"),
        ("--memory", "0", "--memory"),
        ("--memory", "-5", "--memory"),
        ("--replay", "sometimes", "unknown replay schedule"),
        ("--replay-ratio", "0", "--replay-ratio"),
        ("--method", "derpp+replay", "own memory"),
    ],
)
def test_bad_memory_settings_fail_before_training(tmp_path: Path, option: str, value: str, message: str) -> None:
    result = CliRunner().invoke(app, ["run", option, value, "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "results.jsonl").exists()


def test_protocol_1_with_a_batch_schedule_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", "--protocol", "1", "--replay", "batch", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "protocol 1" in result.output
