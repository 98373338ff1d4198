"""The README's production-data-loop walk-through, its clctl commands as written, against a real `clserve --demo`:
capture on, predictions with ids, no drift on known digits, feedback, an update with MAS from the traffic, then
traffic of unseen digits flagged as drift and labeled by feedback."""

from __future__ import annotations

import shlex
import subprocess
import time
from pathlib import Path

import pytest

from service.client import Client
from tests.e2e.conftest import clserve, subprocess_env, wait_until
from tests.e2e.test_demo import clctl_command, live_version

ROOT = Path(__file__).resolve().parents[2]


def loop_walkthrough() -> list[str]:
    """The commands of the section's first ```bash block, comments removed."""
    section = (ROOT / "README.md").read_text().split("\n## The production data loop", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [command for line in block.splitlines() if (command := line.split("#", 1)[0].strip())]


def test_the_walkthrough_is_clctl_commands_and_one_curl() -> None:
    commands = loop_walkthrough()
    assert [c.split()[0] for c in commands if not c.startswith("clctl")] == ["curl"]
    assert any("feedback" in c for c in commands) and any("drift" in c for c in commands)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_readme_data_loop_as_written(tmp_path: Path) -> None:
    log = tmp_path / "clserve.log"
    with clserve(tmp_path / "data", ["--demo"], log=log) as url, Client(url) as client:
        wait_until(lambda: live_version(client, "digits") == 1, timeout=300, what="the demo's first version")
        outputs: dict[str, list[str]] = {}
        for command in loop_walkthrough():
            argv = shlex.split(command)
            if argv[0] == "curl":
                continue  # the same figures are checked through the client below
            if argv[1] == "drift":
                time.sleep(3)  # the window is tested in the background
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
            outputs.setdefault(argv[1], []).append(result.stdout)
        assert "wrote 300 predictions (300 captured" in outputs["predict"][0], outputs["predict"]
        assert "monitoring" in outputs["drift"][0] and "yes" not in outputs["drift"][0], outputs["drift"][0]
        assert "accepted 100 of 100" in outputs["feedback"][0], outputs["feedback"]
        assert "succeeded: version 2" in outputs["update"][0], outputs["update"]
        [second] = [v for v in client.versions("digits") if v["version"] == 2]
        assert second["samples"]["captured"] == 200, second["samples"]  # MAS from the traffic left unlabeled
        assert second["samples"]["labeled"] + second["samples"]["held_out"] == 100, second["samples"]
        assert "yes" in outputs["drift"][1], outputs["drift"][1]  # digits 5-9: drift
        assert "new classes: 5, 6, 7, 8, 9" in outputs["feedback"][1], outputs["feedback"][1]
        assert "the update policy started update" in outputs["feedback"][1], outputs["feedback"][1]
