"""Real processes on loopback: a `clserve` started as a user would (`service.launcher`), stopped by the test."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from service.launcher import child_env, free_port, running_clserve

__all__ = ["clserve", "free_port", "subprocess_env", "wait_until"]


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a process the tests start: no inherited ``CL_`` settings, one thread, unbuffered, updates
    of ``CL_EPOCHS`` epochs (see tests/conftest.py) unless ``extra`` says otherwise."""
    fixed = {"OMP_NUM_THREADS": "1", "CL_TORCH_THREADS": "1", "PYTHONUNBUFFERED": "1", "CL_TRAIN_BUDGET": "epochs"}
    return child_env({**fixed, **extra})


@contextmanager
def clserve(data_dir: Path, args: Sequence[str] = (), *, log: Path, **env: str) -> Iterator[str]:
    """Run `clserve` on a free loopback port until the block ends; yields its base URL."""
    with running_clserve(data_dir, args=args, env=subprocess_env(**env), log=log) as server:
        yield server.url


def wait_until(condition, *, timeout: float, what: str, process: subprocess.Popen[bytes] | None = None) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not ready after {timeout} s")
        time.sleep(0.2)
