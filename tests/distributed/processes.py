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

ACL_RULES = Path(__file__).resolve().parents[2] / "deploy" / "redis" / "app-user.acl"
APP_USER, APP_PASSWORD = "continual-serve", "app-password"
ADMIN_USER, ADMIN_PASSWORD = "test-admin", "admin-password"


def acl_rules(path: Path = ACL_RULES) -> list[str]:
    """The rules of the application's Redis user, as docker-compose.yml passes them (comment lines dropped)."""
    return [rule for line in path.read_text().splitlines() if not line.startswith("#") for rule in line.split()]


@dataclass
class RedisServer:
    """A redis-server of our own (never the system one): loopback, its own directory, no RDB snapshots.

    With ``acl``, users as docker-compose.yml makes them: the default user off, the application's user with the
    rules of deploy/redis/app-user.acl (what `url` connects as), plus an admin user for the tests' bookkeeping
    (flushing databases, reading the ACL log) that compose does not have."""

    directory: Path
    port: int = 0
    appendonly: bool = False
    acl: bool = False
    process: subprocess.Popen[bytes] | None = None
    _next_db: int = field(default=0, repr=False)

    DATABASES = 512

    @property
    def url(self) -> str:
        credentials = f"{APP_USER}:{APP_PASSWORD}@" if self.acl else ""
        return f"redis://{credentials}127.0.0.1:{self.port}"

    def admin(self, db: int = 0) -> redis.Redis:
        """A client that may run every command (the admin user with ``acl``)."""
        if self.acl:
            return redis.Redis(port=self.port, db=db, username=ADMIN_USER, password=ADMIN_PASSWORD)
        return redis.Redis(port=self.port, db=db)

    def _acl_args(self) -> list[str]:
        if not self.acl:
            return []
        return [
            *("--user", "default", "off"),
            *("--user", ADMIN_USER, "on", f">{ADMIN_PASSWORD}", "~*", "&*", "+@all"),
            *("--user", APP_USER, "on", f">{APP_PASSWORD}", *acl_rules()),
        ]

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
                *self._acl_args(),
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
        client = self.admin()
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

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
        client = self.admin(self._next_db)
        client.flushdb()
        client.close()
        return f"{self.url}/{self._next_db}"

    def denied(self) -> list[str]:
        """What the ACL refused since the last call (``acl``: command or key, and the user), then forget it."""
        client = self.admin()
        try:
            entries = client.acl_log()
            client.acl_log_reset()
        finally:
            client.close()
        return [f"{entry['reason']} {entry['object']} by {entry['username']}" for entry in entries]


@contextmanager
def redis_server(directory: Path, *, appendonly: bool = False, acl: bool = False) -> Iterator[RedisServer]:
    server = RedisServer(directory, appendonly=appendonly, acl=acl).start()
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
    redis_url: str,
    *,
    log: Path,
    concurrency: int = 1,
    as_deployed: bool = False,
    env: Mapping[str, str] | None = None,
) -> tuple[Process, int]:
    """A `celery -A worker.app worker -Q updates` (prefork) and the port of its /metrics; ``env`` adds or
    overrides ``CL_*`` settings; ``as_deployed`` keeps Celery's gossip, mingle and heartbeat on, as
    docker-compose.yml runs workers."""
    metrics_port = free_port()
    command = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", "updates", "--pool", "prefork"]
    command += ["--concurrency", str(concurrency), "--loglevel", "INFO", "--hostname", f"t{uuid.uuid4().hex[:8]}@lo"]
    if not as_deployed:
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
