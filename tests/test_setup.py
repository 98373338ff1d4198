"""The README's two commands and CI's script, as a new user's machine sees them.

`make -n` prints what a target would run without running it, so these checks cost nothing and still catch a
Makefile that installs into the system's Python, or a CI script that reuses an environment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECK_DEPS = ROOT.parent / "shared" / "tools" / "check_deps.py"


def dry_run(target: str, **env: str) -> str:
    """What `make -n target` would run, with the given environment (VIRTUAL_ENV removed unless given)."""
    make = shutil.which("make")
    assert make is not None, "make is not installed"
    base = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    done = subprocess.run(
        [make, "-n", "--always-make", target], cwd=ROOT, env={**base, **env}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_inside_an_activated_venv_make_uses_it(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    commands = dry_run("test", VIRTUAL_ENV=str(venv))
    assert f"{venv}/bin/python -m pytest" in commands
    assert f"{venv}/bin/python -m pip install -e '.[dev]'" in commands
    assert f"{ROOT}/.venv" not in commands


def test_outside_a_venv_make_creates_its_own_and_never_touches_the_system_python() -> None:
    commands = dry_run("run")
    venv = ROOT / ".venv"
    assert f"python3 -m venv {venv}" in commands
    assert f"{venv}/bin/python -m pip install -e '.[dev]'" in commands
    assert f"{venv}/bin/clserve --demo" in commands
    for line in commands.splitlines():
        for command in line.split("||"):
            if "pip install" in command:
                assert command.strip().startswith(f"{venv}/bin/python -m pip install"), line


def test_torch_is_installed_first_and_only_when_missing() -> None:
    lines = dry_run("install", VIRTUAL_ENV="/v").splitlines()
    torch_line = next(i for i, line in enumerate(lines) if "torch==" in line)
    project_line = next(i for i, line in enumerate(lines) if "install -e" in line)
    assert torch_line < project_line
    assert '/v/bin/python -c "import torch"' in lines[torch_line] and "||" in lines[torch_line]


def test_ci_makes_a_new_environment_and_runs_lint_and_the_readme_test_command() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    lines = [line.strip() for line in script.splitlines() if line.strip() and not line.strip().startswith("#")]
    new_venv = lines.index("python3 -m venv .ci/venv")
    assert lines[new_venv - 1] == "rm -rf .ci/venv"  # never reused
    assert "--system-site-packages" not in script
    assert lines[new_venv + 1].startswith("source .ci/venv/bin/activate")
    assert lines[-2:] == ["make lint", "make test"]
    readme = (ROOT / "README.md").read_text()
    assert "make test   #" in readme  # the README's test command is the one CI runs


def test_lint_covers_the_tests_with_mypy() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"tests"]' in pyproject.split("[tool.mypy]")[1].split("\n\n")[0]
    commands = dry_run("lint", VIRTUAL_ENV="/v")
    assert "/v/bin/python -m ruff check" in commands and "/v/bin/python -m ruff format --check" in commands
    assert "/v/bin/python -m mypy" in commands


def test_every_import_is_declared() -> None:
    """The shared checker finds no import that a fresh `pip install -e '.[dev]'` would lack."""
    if not CHECK_DEPS.is_file():
        pytest.skip(f"{CHECK_DEPS} is not beside the checkout (CI always has it)")
    done = subprocess.run([sys.executable, str(CHECK_DEPS), "."], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"undeclared imports:\n{done.stdout}"
