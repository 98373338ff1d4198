"""docker-compose.yml's Redis user (deploy/redis/app-user.acl): an API replica and a Celery worker run as it, as
compose runs them (Celery's gossip, mingle and heartbeat on, remote control, signed promotions), and Redis refuses
none of their commands.  The store's own commands are covered by the contract tests' "redis-acl" backend."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.distributed.conftest import create_model, post_samples, predict, request_update, wait_served, wait_update
from tests.distributed.processes import running, start_replica, start_worker
from tests.e2e.conftest import subprocess_env

pytestmark = pytest.mark.slow

KEY = "acl-test-signing-key-" + "5" * 16
FAST = {"CL_EPOCHS": "2", "CL_BATCH_SIZE": "16", "CL_LR": "0.01", "CL_SIGNING_KEY": KEY, "CL_DEVICE": "cpu"}


@pytest.mark.timeout(240)
def test_an_update_runs_and_is_served_as_the_compose_redis_user(acl_redis_url: str, tmp_path: Path) -> None:
    worker, _ = start_worker(acl_redis_url, log=tmp_path / "worker.log", concurrency=1, as_deployed=True, env=FAST)
    replica, api = start_replica(
        acl_redis_url,
        tmp_path / "data",
        log=tmp_path / "api.log",
        CL_POLICY_MIN_SAMPLES_PER_NEW_CLASS="1000000",
        CL_RELOAD_INTERVAL_S="1",
        **FAST,
    )
    with running(worker, replica):
        create_model(api, "m")
        post_samples(api, "m", ["a", "b"])
        status = wait_update(api, "m", request_update(api, "m"))
        assert status["status"] == "succeeded", status
        wait_served(api, "m", 1, timeout=30)
        assert predict(api, "m").json()["version"] == 1
        inspect = subprocess.run(  # Celery's remote control over the broker, as `celery inspect` uses it
            [sys.executable, "-m", "celery", "-A", "worker.app", "inspect", "ping", "--timeout", "10"],
            env=subprocess_env(CL_REDIS_URL=acl_redis_url),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert inspect.returncode == 0 and "pong" in inspect.stdout, inspect.stdout + inspect.stderr
    for log in (tmp_path / "worker.log", tmp_path / "api.log"):
        assert "NOPERM" not in log.read_text() and "no permissions" not in log.read_text(), log
    # the fixture fails the test if Redis refused any command of these processes (its ACL log)
