"""`make smoke`: the image and the compose file, built and run for real (minutes; needs a Docker engine).

Builds the image, brings up ``redis api worker prometheus`` under a compose project name of its own (host ports
chosen free, fresh secrets), has the demo profile create and train the model 'digits', teaches it digits 5-9 with
``clctl`` inside an API container, and checks, each as one named step:

* every container runs (API replicas and worker as uid 10001) and turns ``healthy``;
* both API replicas serve the new version;
* Prometheus scrapes both replicas and the worker, has loaded every alert rule, and answers
  ``cl_model_live_version`` and ``cl_model_forgetting_ratio`` from the ``continual-serve-api`` job and
  ``cl_updates_total`` from the ``continual-serve-worker`` job.

Everything is torn down at the end, volumes included, whatever happened.  Exit status 0 only if every step held.
Standard library only, so that it runs with any ``python3`` (``python3 -m tests.deploy.smoke --help``).  Uses
``docker-compose`` (Compose v1) where it is installed, else ``docker compose``; the compose file uses only syntax
both accept.  Not part of ``make test`` or ``.ci/run``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "continual-serve:cpu"  # the image docker-compose.yml names for the API and the worker
SERVICES = ("redis", "api", "worker", "prometheus")
REPLICAS = 2  # docker-compose.yml: api.deploy.replicas
APP_UID = 10001  # the Dockerfile's user
MODEL = "digits"
T = TypeVar("T")


class SmokeFailed(Exception):
    """A step did not hold; the message says which and what was seen."""


def log(message: str) -> None:
    print(f"[smoke] {message}", flush=True)


def run(
    command: Sequence[str],
    *,
    timeout: float = 300,
    check: bool = True,
    quiet: bool = False,
    env: dict[str, str] | None = None,
) -> str:
    """Run a command (``env`` added to this process' environment); its stdout, or SmokeFailed with its output when
    it fails."""
    if not quiet:
        log("$ " + " ".join(command))
    result = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if check and result.returncode != 0:
        raise SmokeFailed(f"{' '.join(command)} exited with {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def wait(condition: Callable[[], T | None], *, timeout: float, what: str, interval: float = 2.0) -> T:
    """Poll ``condition`` until it returns something truthy; SmokeFailed naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error = ""
    while True:
        try:
            value = condition()
            if value:
                return value
        except (OSError, ValueError, SmokeFailed) as exc:  # not up yet: refused, reset, half-written answer
            last_error = f" (last error: {exc})"
        if time.monotonic() > deadline:
            raise SmokeFailed(f"{what}: not within {timeout:.0f} s{last_error}")
        time.sleep(interval)


def get_json(url: str, *, timeout: float = 10) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive free loopback ports (for the replicas' published range)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = int(probe.getsockname()[1])
        if first + count > 65535:
            continue
        try:
            sockets = []
            for port in range(first, first + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise SmokeFailed(f"no {count} consecutive free ports on 127.0.0.1")


def compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return ["docker", "compose"]


class Deployment:
    """The compose project of this run: its name, its environment, its containers."""

    def __init__(self, project: str, env: dict[str, str]) -> None:
        self.project, self.env = project, env

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        command = [*compose_command(), "--project-name", self.project, "--file", str(ROOT / "docker-compose.yml")]
        log("$ " + " ".join([*command, *args]))
        result = subprocess.run(
            [*command, *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, **self.env},
        )
        if check and result.returncode != 0:
            raise SmokeFailed(f"compose {' '.join(args)} exited with {result.returncode}:\n{result.stderr}")
        return result.stdout

    def containers(self) -> list[dict[str, Any]]:
        """`docker inspect` of every container of the project."""
        ids = run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={self.project}"], quiet=True)
        if not ids.split():
            return []
        inspected: list[dict[str, Any]] = json.loads(run(["docker", "inspect", *ids.split()], quiet=True))
        return inspected

    def of(self, service: str) -> list[dict[str, Any]]:
        return [c for c in self.containers() if c["Config"]["Labels"].get("com.docker.compose.service") == service]


# -- the steps ---------------------------------------------------------------------------------------------------------


def build(build_args: Sequence[str]) -> None:
    command = ["docker", "build", "--tag", IMAGE, "--build-arg", "VARIANT=cpu"]
    for arg in build_args:
        command += ["--build-arg", arg]
    command.append(str(ROOT))
    log("$ " + " ".join(command))
    started = time.monotonic()
    # the build's own output goes to the terminal as it comes: it is the longest step
    result = subprocess.run(command, cwd=ROOT, timeout=1800, check=False)
    if result.returncode != 0:
        raise SmokeFailed(f"docker build exited with {result.returncode}")
    log(f"image {IMAGE} built in {time.monotonic() - started:.0f} s")


def healthy(deployment: Deployment) -> None:
    """Every service's containers run, the API has its replicas, and every container with a health check is
    healthy (Prometheus has none in the compose file: running is enough)."""

    def states() -> dict[str, list[str]] | None:
        by_service: dict[str, list[str]] = {}
        for container in deployment.containers():
            service = container["Config"]["Labels"].get("com.docker.compose.service", "?")
            state = container["State"]
            if state["Status"] in ("exited", "dead"):
                raise SmokeFailed(f"{container['Name']} exited with {state['ExitCode']}")
            by_service.setdefault(service, []).append(state.get("Health", {}).get("Status", state["Status"]))
        done = all(by_service.get(s) and all(h in ("healthy", "running") for h in by_service[s]) for s in SERVICES)
        ready = done and len(by_service["api"]) == REPLICAS
        log(f"containers: {by_service}")
        return by_service if ready else None

    try:
        seen = wait(states, timeout=240, what="every container running and healthy", interval=5)
    except SmokeFailed as exc:
        raise SmokeFailed(f"{exc}; last states: {_states(deployment)}") from exc
    for service in ("redis", "api", "worker"):
        if any(h != "healthy" for h in seen[service]):
            raise SmokeFailed(f"{service} has no passing health check: {seen[service]}")
    log(f"healthy: {seen}")


def _states(deployment: Deployment) -> list[str]:
    return [
        f"{c['Name']}={c['State'].get('Health', {}).get('Status', c['State']['Status'])}"
        for c in deployment.containers()
    ]


def run_as_app_user(deployment: Deployment) -> None:
    """The API replicas' and the worker's main process (pid 1 of each container) run as uid 10001."""
    for service in ("api", "worker"):
        for container in deployment.of(service):
            status = run(["docker", "exec", container["Id"], "cat", "/proc/1/status"], quiet=True)
            uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
            if set(uids) != {str(APP_UID)}:
                raise SmokeFailed(f"{container['Name']}: pid 1 runs as uids {uids}, expected {APP_UID}")
            log(f"{container['Name']}: pid 1 runs as uid {APP_UID}")


def served(port: int) -> int | None:
    """The version of the model an API replica serves (its /readyz), or None."""
    try:
        answer = get_json(f"http://127.0.0.1:{port}/readyz", timeout=5)
    except (urllib.error.URLError, OSError, ValueError):
        return None
    version = answer.get("models", {}).get(MODEL)
    return None if version is None else int(version)


def replicas_serve(ports: Sequence[int], version: int, timeout: float) -> None:
    wait(
        lambda: all(served(port) == version for port in ports),
        timeout=timeout,
        what=f"both API replicas (127.0.0.1:{ports[0]}, :{ports[1]}) serving {MODEL} version {version}",
        interval=3,
    )
    log(f"both replicas serve {MODEL} version {version}")


def teach_new_classes(deployment: Deployment, key: str) -> None:
    """clctl, inside an API container, against that container's own API: digits 5-9 as one file, one update."""
    (api, *_) = deployment.of("api")
    # `-e NAME` without a value passes this process' value: the key is not on a command line or in the log
    env = ["-e", "CL_URL=http://127.0.0.1:8000", "-e", "CL_API_KEY"]
    data = "/tmp/digits-5-9.npz"
    clctl = ["docker", "exec", *env, api["Id"], "clctl"]
    run([*clctl, "demo-data", "--digits", "5-9", "--out", data], timeout=120, env={"CL_API_KEY": key})
    output = run([*clctl, "samples", MODEL, "--file", data, "--wait"], timeout=600, env={"CL_API_KEY": key})
    log(output.strip().splitlines()[-1] if output.strip() else "clctl samples printed nothing")


def prometheus_query(port: int, query: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    answer = get_json(url)
    if answer.get("status") != "success":
        raise SmokeFailed(f"Prometheus answered {answer} to {query}")
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def prometheus_sees_everything(port: int, version: int) -> None:
    """Targets, rules, and the three metrics from the jobs that own them."""

    def targets_up() -> dict[str, int] | None:
        up = prometheus_query(port, 'up{job=~"continual-serve-.*"} == 1')
        jobs = [series["metric"]["job"] for series in up]
        counts = {job: jobs.count(job) for job in ("continual-serve-api", "continual-serve-worker")}
        return counts if counts == {"continual-serve-api": REPLICAS, "continual-serve-worker": 1} else None

    log(f"targets up: {wait(targets_up, timeout=120, what='Prometheus scraping both replicas and the worker')}")

    rules = get_json(f"http://127.0.0.1:{port}/api/v1/rules")["data"]["groups"]
    loaded = sorted(r["name"] for g in rules for r in g["rules"] if r["type"] == "alerting")
    expected = sorted(alert_names())
    if loaded != expected:
        raise SmokeFailed(f"Prometheus loaded the alerts {loaded}, the rules file has {expected}")
    log(f"{len(loaded)} alert rules loaded")

    def live_versions() -> list[dict[str, Any]] | None:
        series = prometheus_query(port, f'cl_model_live_version{{job="continual-serve-api",model="{MODEL}"}}')
        values = [float(s["value"][1]) for s in series]
        return series if len(series) == REPLICAS and all(v == version for v in values) else None

    wait(live_versions, timeout=120, what=f"cl_model_live_version == {version} from both replicas in Prometheus")
    log(f"cl_model_live_version: {version} on both replicas")

    forgetting = wait(
        lambda: prometheus_query(port, f'cl_model_forgetting_ratio{{job="continual-serve-api",model="{MODEL}"}}'),
        timeout=60,
        what="cl_model_forgetting_ratio from the continual-serve-api job",
    )
    values = [float(s["value"][1]) for s in forgetting]
    if not all(math.isfinite(v) and 0 <= v <= 1 for v in values):
        raise SmokeFailed(f"cl_model_forgetting_ratio is not a ratio: {values}")
    log(f"cl_model_forgetting_ratio: {values}")

    query = f'sum(cl_updates_total{{job="continual-serve-worker",model="{MODEL}",outcome="succeeded"}})'

    def succeeded() -> float | None:
        result = prometheus_query(port, query)
        count = float(result[0]["value"][1]) if result else 0.0
        return count if count >= 2 else None

    count = wait(
        succeeded,
        timeout=60,
        what="cl_updates_total from the continual-serve-worker job counting the demo's 2 successful updates",
    )
    log(f"cl_updates_total (succeeded): {count:.0f}")


def alert_names() -> list[str]:
    """The alert names of deploy/prometheus/rules/*.yml (read without a YAML parser: `- alert: Name` lines)."""
    names = []
    for path in sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml")):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith("- alert:"):
                names.append(stripped.split(":", 1)[1].strip())
    return names


# -- the run -----------------------------------------------------------------------------------------------------------


def smoke(build_args: Sequence[str], *, skip_build: bool) -> None:
    if not skip_build:
        build(build_args)
    api_port, prometheus_port = free_ports(REPLICAS), free_ports(1)
    key = secrets.token_hex(16)
    env = {
        "CL_API_PORTS": f"{api_port}-{api_port + REPLICAS - 1}",
        "PROMETHEUS_PORT": str(prometheus_port),
        "CL_ADMIN_KEY": key,
        "REDIS_PASSWORD": secrets.token_hex(16),
        "GRAFANA_ADMIN_PASSWORD": secrets.token_hex(16),
    }
    deployment = Deployment(f"cl-smoke-{secrets.token_hex(4)}", env)
    try:
        deployment.compose("up", "--detach", "--no-build", *SERVICES)
        healthy(deployment)
        run_as_app_user(deployment)
        # the demo profile's one-shot API process creates 'digits' and has a worker train its first version
        deployment.compose("--profile", "demo", "up", "--detach", "--no-build", "--no-deps", "demo")
        ports = [api_port + i for i in range(REPLICAS)]
        replicas_serve(ports, 1, timeout=420)
        teach_new_classes(deployment, key)
        replicas_serve(ports, 2, timeout=60)
        prometheus_sees_everything(prometheus_port, 2)
    except SmokeFailed:
        for service in (*SERVICES, "demo"):
            print(deployment.compose("logs", "--tail", "30", service, check=False), file=sys.stderr)
        raise
    finally:
        deployment.compose("--profile", "demo", "down", "--volumes", "--remove-orphans", "--timeout", "20", check=False)
        left = deployment.containers()
        if left:
            raise SmokeFailed(f"containers left after teardown: {[c['Name'] for c in left]}")
        log(f"project {deployment.project} torn down (volumes included)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--build-arg",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="passed to docker build, e.g. TORCH_INDEX_URL=https://idx.example/simple (repeatable)",
    )
    parser.add_argument("--no-build", action="store_true", help=f"use the existing {IMAGE} image")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        smoke(args.build_arg, skip_build=args.no_build)
    except (SmokeFailed, subprocess.TimeoutExpired) as exc:
        log(f"FAILED after {time.monotonic() - started:.0f} s: {exc}")
        return 1
    log(f"passed in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
