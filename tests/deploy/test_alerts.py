"""The alert rules in a real Prometheus (Debian's `prometheus`, the package that brings promtool), scraping a real
API replica and a real Celery worker on the suite's redis-server: a real forgetting event raises
`ModelForgettingHigh`, and two update requests at once do not raise `UpdatesFailing`.

Prometheus runs on a test copy of deploy/prometheus/prometheus.yml whose `dns_sd_configs` (the names `api` and
`worker` resolve only inside Compose) become loopback `static_configs`, with every scrape and evaluation interval at
1 s and every alert's `for:` at 2 s; the rules' expressions are the project's, unchanged.  Its data lives in the
test's temporary directory and it is stopped with the test's processes.
"""

from __future__ import annotations

import copy
import re
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from service.client import Client
from tests.deploy.sources import PROMETHEUS, RULE_FILES, require
from tests.distributed.processes import Process, RedisServer, running, start_replica, start_worker, wait_for
from tests.e2e.conftest import free_port
from tests.service.conftest import blobs

INTERVAL = "1s"  # scrape and rule evaluation
FOR = "2s"  # every alert's `for:`
API_JOB, WORKER_JOB = "continual-serve-api", "continual-serve-worker"
SETTINGS = {
    "CL_DEVICE": "cpu",
    "CL_EPOCHS": "20",
    "CL_BATCH_SIZE": "16",
    "CL_LR": "0.01",
    # updates start only when asked, so that each test decides what runs when
    "CL_POLICY_MIN_SAMPLES_PER_NEW_CLASS": "1000000",
    # label screening would set the relabelled batch aside before training (its own tests are elsewhere): this file
    # needs a real forgetting event that the gate rejects and an operator then forces live
    "CL_SCREENING": "false",
}
CLASSES = ["a", "b", "c"]


def test_config(deploy_config: dict[str, Any], *, port: int, api: str, worker: str, rules: Path) -> dict[str, Any]:
    """deploy's prometheus.yml with loopback targets, short intervals and the test copy of the rules."""
    config = copy.deepcopy(deploy_config)
    config["global"].update(scrape_interval=INTERVAL, scrape_timeout=INTERVAL, evaluation_interval=INTERVAL)
    config["rule_files"] = [str(rules / "*.yml")]
    targets = {API_JOB: api, WORKER_JOB: worker, "prometheus": f"127.0.0.1:{port}"}
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == set(targets), f"deploy's scrape jobs changed: {sorted(jobs)}"
    for name, job in jobs.items():
        job.pop("dns_sd_configs", None)
        job["static_configs"] = [{"targets": [targets[name]]}]
    return config


def test_rules(path: Path) -> dict[str, Any]:
    """A rule file with every `for:` shortened (expressions, labels and annotations unchanged)."""
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = FOR
    return document


# keep pytest from collecting the two builders above as tests
test_config.__test__ = False  # type: ignore[attr-defined]
test_rules.__test__ = False  # type: ignore[attr-defined]


@dataclass
class Prometheus:
    url: str

    def get(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.url}{path}", params=params, timeout=10)
        response.raise_for_status()
        answer = response.json()
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get("/api/v1/query", query=expr)["result"]
        return result

    def alerts(self, name: str, model: str) -> list[dict[str, Any]]:
        """Active alerts (pending or firing) of that name for that model."""
        return [
            a
            for a in self.get("/api/v1/alerts")["alerts"]
            if a["labels"]["alertname"] == name and a["labels"].get("model") == model
        ]

    def last_evaluation(self, alert: str) -> float:
        """When Prometheus last evaluated the group holding ``alert`` (Unix seconds, its clock)."""
        for group in self.get("/api/v1/rules")["groups"]:
            if any(rule["name"] == alert for rule in group["rules"]):
                return _unix(group["lastEvaluation"])
        raise AssertionError(f"no rule {alert} loaded")

    def evaluated_after(self, alert: str, moment: float) -> None:
        """Wait until the group of ``alert`` has been evaluated on data of ``moment`` or later."""
        wait_for(lambda: self.last_evaluation(alert) > moment, timeout=30, what=f"an evaluation of {alert}")

    def seen(self, expr: str) -> float:
        """Wait until ``expr`` has a result; the (Prometheus) time of the query that had it."""
        result = wait_for(lambda: self.query(expr), timeout=60, what=f"{expr} in Prometheus")
        return float(result[0]["value"][0])


_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def _unix(timestamp: str) -> float:
    """RFC 3339 with up to nanoseconds (Prometheus' lastEvaluation) → Unix seconds."""
    match = _RFC3339.match(timestamp)
    assert match, f"not an RFC 3339 time: {timestamp}"
    seconds, fraction, zone = match.groups()
    parsed = datetime.fromisoformat(seconds + ("+00:00" if zone == "Z" else zone))
    return parsed.timestamp() + float(f"0{fraction}" if fraction else 0)


def start_prometheus(directory: Path, *, api: str, worker: str) -> tuple[Process, Prometheus]:
    binary = require("prometheus")
    port = free_port()
    rules = directory / "rules"
    rules.mkdir(parents=True)
    for path in RULE_FILES:
        (rules / path.name).write_text(yaml.safe_dump(test_rules(path), sort_keys=False))
    deploy_config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    config = directory / "prometheus.yml"
    config.write_text(yaml.safe_dump(test_config(deploy_config, port=port, api=api, worker=worker, rules=rules)))
    command = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={directory / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=1h",
    ]
    log = directory / "prometheus.log"
    url = f"http://127.0.0.1:{port}"
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return Process(process, log, f"prometheus on {url}", lambda: _ready(url)), Prometheus(url)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Stack:
    api: Client
    prometheus: Prometheus


@pytest.fixture(scope="module")
def stack(session_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A replica and a worker on a database of their own, and a Prometheus scraping both."""
    redis_url = session_redis.fresh_url()
    directory = tmp_path_factory.mktemp("alerts")
    worker, metrics_port = start_worker(redis_url, log=directory / "worker.log", env=SETTINGS)
    replica, url = start_replica(redis_url, directory / "data", log=directory / "api.log", **SETTINGS)
    server, prometheus = start_prometheus(
        directory / "prometheus", api=url.removeprefix("http://"), worker=f"127.0.0.1:{metrics_port}"
    )
    with running(server, worker, replica), Client(url) as api:
        for job in (API_JOB, WORKER_JOB):
            wait_for(lambda j=job: prometheus.query(f'up{{job="{j}"}} == 1'), timeout=60, what=f"{job} scraped")
        yield Stack(api, prometheus)


def first_version(api: Client, model: str) -> None:
    api.create_model(model, "mlp", [8], options={"hidden": [16]})
    inputs, labels = blobs(CLASSES, 60)
    api.post_samples(model, inputs, labels)
    status = api.wait_update(model, api.start_update(model)["update_id"], timeout=90)
    assert status["status"] == "succeeded", status


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_promoting_a_version_the_gate_rejected_fires_model_forgetting_high(stack: Stack) -> None:
    api, prometheus, model = stack.api, stack.prometheus, "forgets"
    first_version(api, model)
    # inputs like the first ones with every label moved to the next class: fine-tuning on them forgets a, b and
    # c (the gate scores on held-out data of both batches: the first, with its right labels, outweighs these)
    inputs, labels = blobs(CLASSES, 15, seed=1)
    api.post_samples(model, inputs, [CLASSES[(CLASSES.index(y) + 1) % 3] for y in labels])
    rejected = api.wait_update(model, api.start_update(model, "finetune")["update_id"], timeout=90)
    assert rejected["status"] == "rejected" and "forgetting gate" in rejected["error"], rejected

    # while version 1 serves, nothing has been forgotten: the alert stays quiet
    seen = prometheus.seen(f'cl_model_live_version{{job="{API_JOB}",model="{model}"}} == 1')
    prometheus.evaluated_after("ModelForgettingHigh", seen)
    assert prometheus.alerts("ModelForgettingHigh", model) == []

    api.promote(model, rejected["version"], force=True)  # an operator overrides the gate
    firing = wait_for(
        lambda: [a for a in prometheus.alerts("ModelForgettingHigh", model) if a["state"] == "firing"],
        timeout=60,
        what="ModelForgettingHigh firing",
    )
    forgetting = api.versions(model)[-1]["metrics"]["forgetting"]
    assert forgetting > 0.05
    assert float(firing[0]["value"]) == pytest.approx(forgetting)
    assert firing[0]["labels"]["severity"] == "warning"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_two_update_requests_at_once_do_not_fire_updates_failing(stack: Stack) -> None:
    api, prometheus, model = stack.api, stack.prometheus, "races"
    first_version(api, model)
    inputs, labels = blobs(CLASSES, 20, seed=2)
    api.post_samples(model, inputs, labels)
    update_ids: list[str] = []
    start = threading.Barrier(2)

    def request() -> None:
        with Client(str(api.http.base_url)) as own:
            start.wait()
            update_ids.append(own.start_update(model)["update_id"])

    threads = [threading.Thread(target=request) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(update_ids) == 2
    finished = [api.wait_update(model, u, timeout=90) for u in update_ids]
    outcomes = {f"{s['status']}: {s['error']}" for s in finished}
    assert "succeeded" in {s["status"] for s in finished}, outcomes

    # Prometheus has the worker's count of all three updates of the model, and has evaluated the rules on it
    seen = prometheus.seen(f'sum(cl_updates_total{{job="{WORKER_JOB}",model="{model}"}}) == 3')
    prometheus.evaluated_after("UpdatesFailing", seen)
    assert prometheus.alerts("UpdatesFailing", model) == [], outcomes
