"""Starting a real `clserve` process on loopback, for the tests and the benchmarks (one way, not one per caller).

It lives in `service` so that both may import it without turning the dependencies around (clbench and tests may
import service; service imports neither).  A process is started as a user would start it (``python -m service.cli``
with ``--host``, ``--port`` and ``--data-dir``), with the caller's environment minus every ``CL_`` variable (the
settings are the caller's to give), is ready when ``/readyz`` answers 200, and is stopped with SIGTERM (a graceful
shutdown), then SIGKILL if it does not stop in time.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

HOST = "127.0.0.1"


class NotReady(RuntimeError):
    """The process exited, or did not answer /readyz in time."""


def free_port() -> int:
    """A loopback port that was free a moment ago (another process may take it before it is bound)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without its ``CL_`` settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CL_")}
    env.update(extra or {})
    return env


@dataclass
class ClserveProcess:
    """A started `clserve` and where it listens."""

    process: subprocess.Popen[bytes]
    url: str
    port: int
    log: Path | None
    own_session: bool

    @property
    def pid(self) -> int:
        return self.process.pid

    def ready(self) -> bool:
        """Whether /readyz answers 200 now."""
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 60, interval: float = 0.1) -> None:
        """Return once ready; NotReady when the process exits first or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        where = f" (log: {self.log})" if self.log is not None else ""
        while not self.ready():
            if self.process.poll() is not None:
                raise NotReady(f"clserve on {self.url} exited with {self.process.returncode}{where}")
            if time.monotonic() > deadline:
                raise NotReady(f"clserve on {self.url} was not ready after {timeout} s{where}")
            time.sleep(interval)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (a graceful shutdown), SIGKILL after ``timeout`` seconds; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                return self.process.wait(timeout=timeout)
        self.kill()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL the process (its whole process group when it has a session of its own) and reap it."""
        if self.own_session:
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        elif self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def start_clserve(
    data_dir: Path,
    *,
    port: int | None = None,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
    own_session: bool = False,
) -> ClserveProcess:
    """Start `clserve` on loopback (not waiting for it): a free port unless ``port`` is given, ``env`` as its whole
    environment (default: `child_env()`), output appended to ``log`` (default: discarded), in a process group of its
    own with ``own_session`` (so that `ClserveProcess.kill` reaches whatever it started)."""
    port = port or free_port()
    command = [sys.executable, "-m", "service.cli", "--host", HOST, "--port", str(port), "--data-dir", str(data_dir)]
    command += list(args)
    environment = dict(env) if env is not None else child_env()
    if log is None:
        process = subprocess.Popen(
            command,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=own_session,
        )
    else:
        with log.open("ab") as out:
            process = subprocess.Popen(
                command, env=environment, stdout=out, stderr=subprocess.STDOUT, start_new_session=own_session
            )
    return ClserveProcess(process, f"http://{HOST}:{port}", port, log, own_session)


@contextmanager
def running_clserve(
    data_dir: Path,
    *,
    port: int | None = None,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
    ready_timeout: float = 60,
    stop_timeout: float = 30,
) -> Iterator[ClserveProcess]:
    """A ready `clserve` for the duration of the block (see `start_clserve`), stopped when it ends."""
    server = start_clserve(data_dir, port=port, args=args, env=env, log=log)
    try:
        server.wait_ready(ready_timeout)
        yield server
    finally:
        server.stop(stop_timeout)
