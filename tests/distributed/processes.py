"""Real processes for the distributed tests: a private redis-server, Celery workers and `clserve` replicas, all on
loopback, each stopped by the test that started it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import redis

from service.launcher import start_clserve
from tests.e2e.conftest import free_port, subprocess_env, wait_until


@dataclass
class RedisServer:
    """A redis-server of our own (never the system one): loopback, its own directory, no RDB snapshots."""

    directory: Path
    port: int = 0
    appendonly: bool = False
    process: subprocess.Popen[bytes] | None = None
    _next_db: int = field(default=0, repr=False)

    DATABASES = 512

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.directory.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # the free port may be taken between choosing and binding it
            self.port = self.port or free_port()
            command = [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--appendfsync",
                "always",
                "--dir",
                str(self.directory),
                "--databases",
                str(self.DATABASES),
                "--maxmemory-policy",
                "noeviction",
                "--logfile",
                str(self.directory / "redis.log"),
            ]
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_until(self.responds, timeout=10, what=f"redis-server on {self.port}", process=self.process)
                return self
            except AssertionError:
                self.stop()
                self.port = 0
        raise RuntimeError(f"could not start redis-server (log: {self.directory / 'redis.log'})")

    def responds(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=1).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        """Shut down (with AOF on, everything acknowledged so far is on disk)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def fresh_url(self) -> str:
        """A URL of an empty database no other test uses."""
        self._next_db = (self._next_db + 1) % self.DATABASES
        redis.Redis(port=self.port, db=self._next_db).flushdb()
        return f"{self.url}/{self._next_db}"


@contextmanager
def redis_server(directory: Path, *, appendonly: bool = False) -> Iterator[RedisServer]:
    server = RedisServer(directory, appendonly=appendonly).start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Process:
    """A started process group (its own session), its log, and what tells that it is ready."""

    process: subprocess.Popen[bytes]
    log: Path
    what: str
    ready: Callable[[], bool]

    def wait_ready(self, timeout: float = 120) -> None:
        wait_until(self.ready, timeout=timeout, what=f"{self.what} (log: {self.log})", process=self.process)

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM, then SIGKILL of the whole group (pool processes included) if it takes longer."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout)
        self.kill_all()

    def kill_all(self) -> None:
        """kill -9 the process and everything it started."""
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(p) for p in path.read_text().split()] if path.exists() else []


def _spawn(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=subprocess_env(**env), start_new_session=True
        )


def start_worker(
    redis_url: str, *, log: Path, concurrency: int = 1, env: Mapping[str, str] | None = None
) -> tuple[Process, int]:
    """A `celery -A worker.app worker -Q updates` (prefork) and the port of its /metrics; ``env`` adds or
    overrides ``CL_*`` settings."""
    metrics_port = free_port()
    command = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", "updates", "--pool", "prefork"]
    command += ["--concurrency", str(concurrency), "--loglevel", "INFO", "--hostname", f"t{uuid.uuid4().hex[:8]}@lo"]
    command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    settings = {
        "CL_REDIS_URL": redis_url,
        "CL_DEVICE": "cpu",
        "CL_WORKER_METRICS_PORT": str(metrics_port),
        "CL_UPDATE_LOCK_TTL_S": "3",
        "CL_CELERY_LOCK_RETRY_S": "0.5",
        "CL_CELERY_RESTORE_INTERVAL_S": "1",
        **(env or {}),
    }
    process = _spawn(command, log, settings)
    return Process(process, log, "celery worker", lambda: b" ready." in log.read_bytes()), metrics_port


def start_replica(redis_url: str, data_dir: Path, *, log: Path, **env: str) -> tuple[Process, str]:
    """A `clserve` API replica in distributed mode (its own process group) and its base URL."""
    server = start_clserve(data_dir, env=subprocess_env(CL_REDIS_URL=redis_url, **env), log=log, own_session=True)
    return Process(server.process, log, f"clserve on {server.url}", server.ready), server.url


@contextmanager
def running(*processes: Process) -> Iterator[None]:
    """Wait until every (already started) process is ready; stop them all when the block ends."""
    try:
        for process in processes:
            process.wait_ready()
        yield
    finally:
        for process in processes:
            process.stop()


def wait_for(condition, *, timeout: float, what: str, interval: float = 0.05):  # type: ignore[no-untyped-def]
    """Poll ``condition`` until it returns something truthy; returns it."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(interval)
