"""docker-compose.yml's Redis, without Docker: its command, as compose resolves it, run by `sh` with a real
redis-server (the ACL file mounted where compose mounts it is read from deploy/redis here). The default user is off,
the application's user reaches Redis with the password and may run the store's commands but not the dangerous ones,
and the container's health check answers."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from tests.deploy.sources import ROOT
from tests.deploy.test_static import compose_config
from tests.e2e.conftest import free_port, wait_until

PASSWORD = "compose-test-password"


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return compose_config("gpu", "demo")["services"]


@pytest.fixture
def compose_redis(services: dict[str, Any], tmp_path: Path) -> Iterator[int]:
    """redis-server started by the compose service's own shell command; its port."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (.ci/run installs it: apt-get install redis-server)")
    service = services["redis"]
    mounts = {target: source for source, target in _bind_mounts(service)}
    shell = service["command"][2].replace("$$", "$")  # compose's escape for a literal $
    for target, source in mounts.items():
        shell = shell.replace(target, source)
    port = free_port()
    shell += f" --port {port} --bind 127.0.0.1 --dir {tmp_path} --logfile {tmp_path / 'redis.log'}"
    assert service["command"][:2] == ["sh", "-c"]
    env = {"PATH": os.environ["PATH"], "REDIS_PASSWORD": PASSWORD}
    process = subprocess.Popen(["sh", "-c", shell], env=env, start_new_session=True)
    try:
        wait_until(lambda: _pings(port), timeout=20, what=f"compose's redis command (log {tmp_path})", process=process)
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)


def _bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str) and volume.split(":")[0].startswith(("/", ".")):
            source, target = volume.split(":")[:2]
            out.append((str(Path(source).resolve()), target))
        elif isinstance(volume, dict) and volume["type"] == "bind":
            out.append((str(Path(volume["source"]).resolve()), volume["target"]))
    return out


def _pings(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, username="continual-serve", password=PASSWORD).ping())
    except redis.RedisError:
        return False


def test_the_app_connects_as_its_acl_user_and_the_acl_file_is_mounted(services: dict[str, Any]) -> None:
    redis_service = services["redis"]
    mounts = dict((target, Path(source)) for source, target in _bind_mounts(redis_service))
    assert mounts["/etc/redis/app-user.acl"] == ROOT / "deploy" / "redis" / "app-user.acl"
    command = redis_service["command"][2]
    assert "--user default off" in command and "--user continual-serve on" in command
    assert "/etc/redis/app-user.acl" in command and "requirepass" not in command
    for name in ("api", "worker", "worker-gpu", "demo"):
        url = urlsplit(services[name]["environment"]["CL_REDIS_URL"])
        assert url.username == "continual-serve", name
        key = services[name]["environment"]["CL_SIGNING_KEY"]
        assert len(key) >= 32 and key == services["api"]["environment"]["CL_SIGNING_KEY"], name


def test_compose_redis_lets_the_app_user_in_and_nobody_else(compose_redis: int, services: dict[str, Any]) -> None:
    app = redis.Redis(port=compose_redis, username="continual-serve", password=PASSWORD)
    assert app.set("cl:{m}:live", 1) and app.get("cl:{m}:live") == b"1"
    for command in (
        ("FLUSHALL",),
        ("CONFIG", "GET", "*"),
        ("KEYS", "*"),
        ("ACL", "LIST"),
        ("SCRIPT", "FLUSH"),
        ("SHUTDOWN", "NOSAVE"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            app.execute_command(*command)
    with pytest.raises(redis.exceptions.NoPermissionError):
        app.eval("return 1", 0)  # no code of one's own: only the scripts the store and Celery load
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=compose_redis).ping()  # the default user, no password
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=compose_redis, password=PASSWORD).ping()  # the default user is off whatever the password
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=compose_redis, username="continual-serve", password="wrong").ping()
    health = services["redis"]["healthcheck"]["test"]
    assert health[0] == "CMD"
    answer = subprocess.run(
        [health[1], "-p", str(compose_redis), *health[2:]],  # redis-cli's options before the command
        env={"PATH": os.environ["PATH"], "REDISCLI_AUTH": PASSWORD},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert answer.stdout.strip() == "PONG", answer.stdout + answer.stderr
