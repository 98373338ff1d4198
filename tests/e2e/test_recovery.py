"""Crash recovery and graceful shutdown of the embedded server (real processes, loopback)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from service.client import Client
from service.launcher import start_clserve
from tests.e2e.conftest import free_port, subprocess_env, wait_until
from tests.service.conftest import blobs

MANUAL = {"CL_BATCH_SIZE": "16", "CL_POLICY_MIN_SAMPLES_PER_NEW_CLASS": "100000"}  # updates only on request
SLOW = {**MANUAL, "CL_EPOCHS": "1000"}
QUICK = {**MANUAL, "CL_EPOCHS": "30"}


def start(data_dir: Path, port: int, log: Path, **env: str) -> subprocess.Popen[bytes]:
    """`clserve` on ``port`` (the same one across restarts), ready; the test signals and reaps the process."""
    server = start_clserve(data_dir, port=port, env=subprocess_env(**env), log=log)
    try:
        server.wait_ready(60)
    except BaseException:
        server.kill()
        raise
    return server.process


def trained_model(client: Client) -> None:
    client.create_model("m", "mlp", [8], options={"hidden": [16]})
    x, y = blobs(["a", "b"], 30)
    client.post_samples("m", x, y)
    status = client.wait_update("m", client.start_update("m")["update_id"], timeout=120)
    assert status["status"] == "succeeded", status


def running(client: Client, update_id: str) -> bool:
    status = client.update("m", update_id)
    return status["status"] == "running" and status["progress"] > 0.06


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_kill_minus_nine_during_an_update_then_restart(tmp_path: Path) -> None:
    port, log, data = free_port(), tmp_path / "clserve.log", tmp_path / "data"
    process = start(data, port, log, **QUICK)
    url = f"http://127.0.0.1:{port}"
    try:
        with Client(url) as client:
            trained_model(client)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        process = start(data, port, log, **SLOW)  # a long update this time
        with Client(url) as client:
            client.post_samples("m", *blobs(["c"], 30, seed=2))
            update_id = client.start_update("m")["update_id"]
            wait_until(lambda: running(client, update_id), timeout=60, what="the update running")
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        process = start(data, port, log, **QUICK)  # restart: the update is re-queued
        with Client(url) as client:
            assert client.predict("m", [blobs(["a"], 1)[0][0]])["version"] == 1  # the live version is intact
            status = client.wait_update("m", update_id, timeout=120)
            assert status["status"] in ("succeeded", "rejected") and status["version"] == 2, status
            assert [v["version"] for v in client.versions("m")] == [1, 2]
            assert client.model("m")["pending"]["labeled"] == 0  # every accepted sample was trained
    finally:
        process.kill()
        process.wait()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigterm_stops_at_a_safe_point_and_the_update_resumes(tmp_path: Path) -> None:
    port, log, data = free_port(), tmp_path / "clserve.log", tmp_path / "data"
    process = start(data, port, log, **SLOW)
    url = f"http://127.0.0.1:{port}"
    try:
        with Client(url) as client:
            client.create_model("m", "mlp", [8], options={"hidden": [16]})
            client.post_samples("m", *blobs(["a", "b"], 30))
            update_id = client.start_update("m")["update_id"]
            wait_until(lambda: running(client, update_id), timeout=60, what="the update running")
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once shut down
        assert time.monotonic() - started < 30  # it did not wait for 1000 epochs
        assert "Application shutdown complete" in log.read_text()
        process = start(data, port, log, **QUICK)
        with Client(url) as client:
            status = client.wait_update("m", update_id, timeout=120)
            assert status["status"] == "succeeded" and status["version"] == 1, status
    finally:
        process.kill()
        process.wait()
