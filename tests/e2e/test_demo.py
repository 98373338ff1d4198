"""The README's walk-through, end to end: its commands run as written, as a user runs them, against a real
`clserve --demo` process; then the forgetting gate and a rollback on the same service."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from service.client import Client, ServiceError
from service.demo import WALKTHROUGH_COMMANDS, demo_digits
from tests.e2e.conftest import clserve, subprocess_env, wait_until

ROOT = Path(__file__).resolve().parents[2]
OLD, NEW = ["0", "1", "2", "3", "4"], ["5", "6", "7", "8", "9"]


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def live_version(client: Client, name: str) -> int | None:
    try:
        return client.model(name)["live_version"]
    except ServiceError:
        return None  # not created yet


def readme_walkthrough() -> list[str]:
    """The commands of the README's walk-through: its first ```bash block, comments removed."""
    section = (ROOT / "README.md").read_text().split("\n## Walk-through", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [command for line in block.splitlines() if (command := line.split("#", 1)[0].strip())]


def printed_walkthrough(log: Path) -> list[str]:
    """The commands `clserve --demo` printed once the model served (the indented lines of its walk-through)."""
    text = log.read_text()
    assert "In another terminal:" in text, text[-2000:]
    block = text.split("In another terminal:", 1)[1].split("Docs (offline):", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.startswith("  ")]


def clctl_command() -> list[str]:
    """`clctl` as installed beside this interpreter (the entry point), else the module."""
    script = Path(sys.executable).parent / "clctl"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "service.clctl"]


def test_the_demo_prints_the_readme_walkthrough() -> None:
    assert readme_walkthrough() == [command for command, _ in WALKTHROUGH_COMMANDS]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_readme_walkthrough_as_written_then_the_gate_and_a_rollback(tmp_path: Path) -> None:
    log = tmp_path / "clserve.log"
    # the service's defaults: the training budget by validation and the stability–plasticity choice
    with clserve(tmp_path / "data", ["--demo"], log=log, CL_TRAIN_BUDGET="validation") as url, Client(url) as client:
        wait_until(lambda: live_version(client, "digits") == 1, timeout=300, what="the demo's first version")
        wait_until(lambda: "Docs (offline):" in log.read_text(), timeout=30, what="the printed walk-through")
        first = client.metrics("digits")["per_class_accuracy"]
        assert list(first) == OLD and mean(list(first.values())) > 0.9, first

        # what the demo printed: the address it really listens on, then the README's commands
        printed = printed_walkthrough(log)
        assert printed[0] == f"export CL_URL={url}", printed
        assert printed[1:] == readme_walkthrough()

        # the README's commands, as written, in a fresh directory, with CL_URL exported as the demo says
        outputs = {}
        for command in readme_walkthrough():
            argv = shlex.split(command)
            assert argv[0] == "clctl", command
            result = subprocess.run(
                [*clctl_command(), *argv[1:]],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=600,
                env=subprocess_env(CL_URL=url, COLUMNS="200"),
                check=False,
            )
            assert result.returncode == 0, (command, result.stdout, result.stderr)
            outputs[argv[1]] = result.stdout
        assert "0, 1, 2, 3, 4" in outputs["models"], outputs["models"]  # classes in natural order
        assert "accepted 2000" in outputs["samples"] and "succeeded: version 2" in outputs["samples"]
        assert "version 1 is live (was 2)" in outputs["promote"]

        # the file made one update, trained on all of it: digits 5-9 learned, 0-4 kept (held-out data)
        updates = client.updates("digits")
        assert len(updates) == 2 and [u["status"] for u in updates] == ["succeeded", "succeeded"], updates
        second = client.versions("digits")[1]
        assert second["samples"]["labeled"] + second["samples"]["held_out"] == 2000, second["samples"]
        per_class = second["metrics"]["per_class_accuracy"]
        assert list(per_class) == OLD + NEW
        assert mean([per_class[c] for c in NEW]) > 0.85, per_class  # new classes learned
        assert mean([per_class[c] for c in OLD]) > 0.80, per_class  # old classes kept (stated bound)
        assert second["metrics"]["bwt"] is not None

        # version 2 again; label-shuffled samples (every digit posted as digit + 3) are quarantined by label
        # screening: nothing is left to learn, the update is rejected without a version, and version 2 keeps serving
        client.promote("digits", 2)
        assert client.metrics("digits")["matrix"]["rows"] == [1, 2]
        inputs, labels = demo_digits(list(range(10)))
        wrong = [str((int(y) + 3) % 10) for y in labels[:1500]]
        list(client.post_samples_chunked("digits", inputs[:1500], wrong))
        bad = client.wait_update("digits", client.start_update("digits")["update_id"], timeout=300)
        assert bad["status"] == "rejected" and "label screening" in bad["error"] and bad["version"] is None, bad
        assert len(client.quarantine("digits")) == 1500
        probe, _ = demo_digits([7], split="test")
        answer = client.predict("digits", probe[:20])
        assert answer["version"] == 2
        assert mean([p["label"] == "7" for p in answer["predictions"]]) > 0.7

        # roll back: the old version is served again (it knows only 0-4)
        client.promote("digits", 1)
        answer = client.predict("digits", probe[:20])
        assert answer["version"] == 1 and {p["label"] for p in answer["predictions"]} <= set(OLD)
        versions = client.versions("digits")
        assert [v["status"] for v in versions] == ["live", "candidate"]
