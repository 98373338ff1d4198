"""Static checks of the deployment files (no Docker engine, no cluster here): the compose file, the image, the
Prometheus configuration and alert rules, the Grafana provisioning and dashboard, the Kubernetes manifests.

The tools (promtool, docker-compose) are Debian packages that .ci/run installs; a missing tool fails the check."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from prometheus_client import CollectorRegistry

from service.capture import CaptureMetrics
from service.drift import DriftMetrics
from service.observability import ApiMetrics
from tests.deploy import smoke
from tests.deploy.sources import (
    COMPOSE,
    DASHBOARDS,
    GRAFANA,
    K8S,
    PROMETHEUS,
    PROMETHEUS_SERIES,
    ROOT,
    RULE_FILES,
    RULE_TESTS,
    TOOLS,
    dashboard_exprs,
    dashboard_panels,
    grafana_to_promql,
    load_dashboard,
    load_yaml_documents,
    require,
    rules,
    used_metric_names,
)
from worker.metrics import UpdateMetrics

DATASOURCE_UID = "continual-serve-prometheus"


def run(*command: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{' '.join(result.args)}\n{result.stdout}\n{result.stderr}"
    return result.stdout


# -- docker compose --------------------------------------------------------------------------------------------------


def compose_config(*profiles: str) -> dict[str, Any]:
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    return yaml.safe_load(ok(run(require("docker-compose"), "-f", str(COMPOSE), *flags, "config")))


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path → host path of a service's bind mounts (short or long syntax, as compose versions print)."""
    mounts: dict[str, Path] = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
            if source.startswith(("/", ".")):
                mounts[target] = Path(source).resolve()
        elif volume["type"] == "bind":
            mounts[volume["target"]] = Path(volume["source"]).resolve()
    return mounts


def ports(service: dict[str, Any]) -> list[tuple[str, int]]:
    """(host address, container port) of each published port (short or long syntax)."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, str):
            host_ip, _, target = port.split("/")[0].split(":")
            out.append((host_ip, int(target)))
        else:
            out.append((port.get("host_ip", ""), int(port["target"])))
    return out


@pytest.mark.parametrize("profiles", [(), ("gpu", "demo")], ids=["default", "gpu+demo"])
def test_compose_file_validates(profiles: tuple[str, ...]) -> None:
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    ok(run(require("docker-compose"), "-f", str(COMPOSE), *flags, "config", "-q"))


def test_compose_runs_redis_two_api_replicas_a_worker_prometheus_and_grafana() -> None:
    services = compose_config("gpu", "demo")["services"]
    assert {"redis", "api", "worker", "prometheus", "grafana"} <= set(services)

    redis_command = " ".join(services["redis"]["command"])
    for flag in (
        "--maxmemory-policy noeviction",
        "--appendonly yes",
        "--user default off",
        "--user continual-serve on",
    ):
        assert flag in redis_command
    password = services["redis"]["environment"]["REDIS_PASSWORD"]
    assert password

    api, worker, gpu = services["api"], services["worker"], services["worker-gpu"]
    assert api["deploy"]["replicas"] == 2
    assert api["image"] == worker["image"] and api["image"] != gpu["image"]  # one image per variant
    assert api["build"]["args"]["VARIANT"] == "cpu" and gpu["build"]["args"]["VARIANT"] == "cuda"
    assert worker["command"][:6] == ["celery", "-A", "worker.app", "worker", "-Q", "updates"]
    assert gpu["command"] == worker["command"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert gpu["profiles"] == ["gpu"] and services["demo"]["profiles"] == ["demo"]
    for service in (api, worker, gpu, services["demo"]):
        url = urlsplit(service["environment"]["CL_REDIS_URL"])
        assert (url.hostname, url.port, url.password) == ("redis", 6379, password)
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "CL_API_KEYS" in api["environment"] and "CL_API_KEYS" not in worker["environment"]
    # workers have no /healthz: their health check looks at the metrics port instead of the image's
    assert "9100/metrics" in " ".join(worker["healthcheck"]["test"])
    # everything published is bound to loopback; Redis is not published
    assert "ports" not in services["redis"]
    for name, service in services.items():
        for host_ip, _ in ports(service):
            assert host_ip == "127.0.0.1", name


def test_prometheus_scrapes_the_compose_services_where_they_listen() -> None:
    services = compose_config("gpu")["services"]
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    worker_port = int(services["worker"]["environment"]["CL_WORKER_METRICS_PORT"])
    assert services["worker"]["environment"]["CL_WORKER_METRICS_HOST"] == "0.0.0.0"  # reachable from Prometheus
    expected = {"continual-serve-api": (["api"], 8000), "continual-serve-worker": (["worker"], worker_port)}
    for job, (names, port) in expected.items():
        (sd,) = jobs[job]["dns_sd_configs"]
        assert (sd["names"], sd["type"], sd["port"]) == (names, "A", port)
    assert ports(services["api"]) == [("127.0.0.1", 8000)]
    # the GPU worker answers to the name `worker` too, so it is scraped with the others
    assert "worker" in services["worker-gpu"]["networks"]["default"]["aliases"]

    assert bind_mounts(services["prometheus"])["/etc/prometheus"] == PROMETHEUS.resolve()
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]


def test_grafana_is_provisioned_from_deploy() -> None:
    services = compose_config()["services"]
    grafana = services["grafana"]
    mounts = bind_mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == (GRAFANA / "provisioning").resolve()

    (datasource,) = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())["datasources"]
    assert datasource["uid"] == DATASOURCE_UID and datasource["type"] == "prometheus"
    url = urlsplit(datasource["url"])
    assert url.hostname in services and url.port == 9090

    (provider,) = yaml.safe_load((GRAFANA / "provisioning/dashboards/continual-serve.yml").read_text())["providers"]
    folder = provider["options"]["path"]
    assert mounts[folder] == (GRAFANA / "dashboards").resolve()
    home = Path(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home.parent == Path(folder) and (GRAFANA / "dashboards" / home.name).is_file()


# -- the image -------------------------------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_non_root_with_cpu_and_cuda_variants_and_a_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    instructions = [line for line in re.sub(r"\\\n", " ", text).splitlines() if line and not line.startswith("#")]
    stages = [line for line in instructions if line.startswith("FROM ")]
    assert len(stages) >= 2
    final = instructions[instructions.index(stages[-1]) :]
    (user,) = [line.split()[1] for line in final if line.startswith("USER ")]
    assert user.split(":")[0] not in ("root", "0")
    (healthcheck,) = [line for line in final if line.startswith("HEALTHCHECK ")]
    assert "/healthz" in healthcheck
    assert any(line.startswith("ARG VARIANT=cpu") for line in instructions)
    assert "download.pytorch.org/whl/cpu" in text and "download.pytorch.org/whl/$CUDA_TAG" in text
    assert final[-1] == 'CMD ["clserve"]'
    # every COPY source of the build survives .dockerignore
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for line in instructions:
        if line.startswith("COPY ") and "--from=" not in line:
            for source in line.split()[1:-1]:
                assert source.rstrip("/") in allowed, source
                assert (ROOT / source).exists(), source


def dockerfile_instructions() -> list[str]:
    text = (ROOT / "Dockerfile").read_text()
    return [line for line in re.sub(r"\\\n", " ", text).splitlines() if line and not line.lstrip().startswith("#")]


def build_stage_defaults() -> dict[str, str]:
    """The build stage's ARG defaults (an ARG without one is absent)."""
    instructions = dockerfile_instructions()
    stages = [i for i, line in enumerate(instructions) if line.startswith("FROM ")]
    build = instructions[stages[0] : stages[1]]
    return dict(line.split()[1].split("=", 1) for line in build if line.startswith("ARG ") and "=" in line)


@pytest.mark.parametrize(
    ("args", "index"),
    [
        ({}, "https://download.pytorch.org/whl/cpu"),
        ({"TORCH_INDEX_URL": "https://idx.example/pytorch/whl/cpu"}, "https://idx.example/pytorch/whl/cpu"),
        ({"VARIANT": "cuda"}, "https://download.pytorch.org/whl/cu128"),
        ({"VARIANT": "cuda", "CUDA_TAG": "cu126"}, "https://download.pytorch.org/whl/cu126"),
        ({"VARIANT": "cuda", "TORCH_INDEX_URL": "https://idx.example/simple"}, "https://idx.example/simple"),
    ],
    ids=["default", "mirror", "cuda", "cuda-tag", "cuda-mirror"],
)
def test_the_build_takes_pytorch_from_the_index_its_arguments_name(
    args: dict[str, str], index: str, tmp_path: Path
) -> None:
    """The Dockerfile's PyTorch step, run by a shell with a stand-in `pip` that prints what it was asked."""
    (step,) = [
        line.removeprefix("RUN ") for line in dockerfile_instructions() if 'pip install --index-url "$index"' in line
    ]
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "pip").write_text('#!/bin/sh\necho "pip $*"\n')
    (fake / "pip").chmod(0o755)
    env = {"PATH": f"{fake}:/usr/bin:/bin", **build_stage_defaults(), **args}
    result = subprocess.run(["sh", "-c", step], capture_output=True, text=True, env=env, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert f"pip install --index-url {index} torch==2.13.0" in result.stdout.splitlines()


def test_an_unknown_variant_stops_the_build() -> None:
    (step,) = [
        line.removeprefix("RUN ") for line in dockerfile_instructions() if 'pip install --index-url "$index"' in line
    ]
    env = {"PATH": "/usr/bin:/bin", **build_stage_defaults(), "VARIANT": "rocm"}
    result = subprocess.run(["sh", "-c", step], capture_output=True, text=True, env=env, timeout=30, check=False)
    assert result.returncode != 0 and "VARIANT must be cpu or cuda, got 'rocm'" in result.stderr


def test_wheels_beside_the_dockerfile_come_before_every_index() -> None:
    instructions = dockerfile_instructions()
    copy = instructions.index("COPY wheels/ /tmp/wheels/")
    (find_links,) = [i for i, line in enumerate(instructions) if line.startswith("ENV PIP_FIND_LINKS=")]
    first_pip = min(i for i, line in enumerate(instructions) if "pip install" in line)
    assert copy < find_links < first_pip
    assert instructions[find_links].startswith('ENV PIP_FIND_LINKS="/tmp/wheels')
    assert (ROOT / "wheels" / "README.md").is_file()  # the folder exists (COPY needs it) and says what it is for
    defaults = build_stage_defaults()
    assert defaults["TORCH_INDEX_URL"] == "" and "PIP_INDEX_URL" not in defaults and "PIP_NO_INDEX" not in defaults


def test_make_smoke_builds_with_the_given_arguments_and_ci_does_not_run_it() -> None:
    dry = ok(run("make", "-n", "smoke", "BUILD_ARGS=TORCH_INDEX_URL=https://idx.example/simple PIP_NO_INDEX=1"))
    expected = "-m tests.deploy.smoke --build-arg TORCH_INDEX_URL=https://idx.example/simple --build-arg PIP_NO_INDEX=1"
    assert expected in dry
    assert "smoke" not in (ROOT / ".ci" / "run").read_text()
    assert "tests.deploy.smoke" not in ok(run("make", "-n", "test", "lint"))


def test_the_smoke_test_runs_what_compose_and_the_image_define() -> None:
    services = compose_config("demo")["services"]
    assert set(smoke.SERVICES) <= set(services) and "grafana" not in smoke.SERVICES
    assert services["api"]["deploy"]["replicas"] == smoke.REPLICAS
    assert services["api"]["image"] == services["worker"]["image"] == smoke.IMAGE
    assert "demo" in services and services["demo"]["command"] == ["clserve", "--demo"]
    assert sorted(smoke.alert_names()) == sorted(r["alert"] for path in RULE_FILES for r in rules(path))
    (user,) = [line.split()[1] for line in dockerfile_instructions() if line.startswith("USER ")]
    assert user == f"{smoke.APP_UID}:{smoke.APP_UID}"
    # the published ports are variables with the laptop defaults, so that the smoke test can choose free ones
    compose = COMPOSE.read_text()
    assert "${CL_API_PORTS:-8000-8001}:8000" in compose and "${PROMETHEUS_PORT:-9090}:9090" in compose


# -- Prometheus ------------------------------------------------------------------------------------------------------


def test_prometheus_config_and_rules_pass_promtool() -> None:
    promtool = require("promtool")
    out = ok(run(promtool, "check", "config", "prometheus.yml", cwd=PROMETHEUS))
    assert f"{len(RULE_FILES)} rule files found" in out
    ok(run(promtool, "check", "rules", *map(str, RULE_FILES)))


def test_alert_rules_pass_their_unit_tests() -> None:
    assert RULE_TESTS
    ok(run(require("promtool"), "test", "rules", *map(str, RULE_TESTS)))


def test_every_alert_has_a_case_where_it_fires_and_one_where_it_does_not() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {rule["alert"] for path in RULE_FILES for rule in rules(path) if "alert" in rule}
    required = {
        "ModelForgettingHigh",
        "HeldoutAccuracyDroppedAfterPromotion",
        "UpdatesFailing",
        "UpdateQueueGrowing",
        "ModelWithoutLiveVersion",
    }
    assert required <= alerts
    assert alerts - fires == set(), "never shown to fire"
    assert alerts - quiet == set(), "never shown to stay quiet"
    for path in RULE_FILES:
        for rule in rules(path):
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


# -- Grafana ---------------------------------------------------------------------------------------------------------


@pytest.fixture(params=DASHBOARDS, ids=[p.name for p in DASHBOARDS])
def dashboard(request: pytest.FixtureRequest) -> dict[str, Any]:
    return load_dashboard(request.param)


def test_dashboard_structure(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"]
    panels = list(dashboard_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    (model,) = [v for v in dashboard["templating"]["list"] if v["name"] == "model"]
    assert model["type"] == "query" and model["datasource"]["uid"] == DATASOURCE_UID
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        area = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["description"], panel["id"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
            expr = target["expr"]
            # per-model figures follow the `model` variable (the HTTP metrics have no model label)
            if "model" in re.sub(r"by \([^)]*\)", "", expr) or re.search(r"\bcl_(model|update|predict)", expr):
                assert 'model=~"$model"' in expr, f"{panel['title']}: {expr}"


def test_dashboard_shows_what_the_issue_asks_for(dashboard: dict[str, Any]) -> None:
    exprs = "\n".join(dashboard_exprs(dashboard))
    for name in (
        "cl_model_live_version",  # live version and its timeline
        "cl_model_heldout_class_accuracy_ratio",  # per-class accuracy
        "cl_model_heldout_accuracy_ratio",  # average accuracy
        "cl_model_acc_ratio",
        "cl_model_bwt_ratio",
        "cl_model_forgetting_ratio",
        "cl_update_duration_seconds_bucket",  # update durations
        "cl_updates_total",  # and outcomes
        "cl_update_queue_depth",
        "cl_http_requests_total",  # request rate and errors
        "cl_http_request_duration_seconds_bucket",  # latency percentiles
    ):
        assert name in exprs, name
    assert re.search(r'status=~"5\.\."', exprs) and "histogram_quantile(0.99" in exprs


def test_dashboard_queries_are_valid_promql(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """promtool parses every query (as a recording rule), once Grafana's variables are filled in."""
    exprs = [e for e in dashboard_exprs(dashboard) if not e.startswith("label_values(")]
    group = {
        "name": "dashboard",
        "rules": [{"record": f"dashboard:q{i}", "expr": grafana_to_promql(e)} for i, e in enumerate(exprs)],
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [group]}))
    assert f"{len(exprs)} rules found" in ok(run(require("promtool"), "check", "rules", str(path)))


# -- the metric names, against the code that declares them ---------------------------------------------------------


def declared_sample_names(registry: CollectorRegistry) -> set[str]:
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}
    return {m.name + s for m in registry.collect() for s in suffixes.get(m.type, ("",))}


def test_every_metric_the_dashboard_and_alerts_use_is_declared_by_the_api_or_the_workers() -> None:
    api_registry, worker_registry = CollectorRegistry(), CollectorRegistry()
    ApiMetrics(api_registry)
    CaptureMetrics(api_registry)  # capture and drift are measured where predictions are served
    DriftMetrics(api_registry)
    UpdateMetrics(worker_registry)
    api, worker = declared_sample_names(api_registry), declared_sample_names(worker_registry)
    used = used_metric_names()
    assert set(used) - PROMETHEUS_SERIES - api - worker == set()
    assert set(used) & api & worker == set()
    assert set(used) & worker, "the update metrics (workers) are used"


# -- Kubernetes ------------------------------------------------------------------------------------------------------

MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
# the oldest and the newest Kubernetes whose schemas the validator bundles
K8S_VERSIONS = sorted(
    {
        min(kubernetes_validate.utils.all_versions(), key=lambda v: tuple(map(int, v.split(".")))),
        kubernetes_validate.utils.latest_version(),
    }
)


def k8s_objects() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in load_yaml_documents(path)]


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in k8s_objects() if o["kind"] == kind}


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    return workload["spec"]["template"]["spec"]["containers"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_manifests_pass_the_kubernetes_schema(path: Path, version: str) -> None:
    documents = load_yaml_documents(path)
    assert documents
    for document in documents:
        kubernetes_validate.validate(document, version, strict=True)


def test_the_schema_check_rejects_a_misspelt_field() -> None:
    deployment = dict(by_kind("Deployment")["continual-serve-api"])
    broken = yaml.safe_load(yaml.safe_dump(deployment).replace("readinessProbe:", "readynessProbe:"))
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in MANIFESTS)


def test_api_deployment_has_probes_resources_and_secrets() -> None:
    api = by_kind("Deployment")["continual-serve-api"]
    assert api["spec"]["replicas"] >= 2
    (container,) = containers(api)
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    assert port == 8000
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ("http", port)
    secret_keys = {e["name"]: e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"] if "valueFrom" in e}
    assert secret_keys == {"CL_REDIS_URL": "CL_REDIS_URL", "CL_API_KEYS": "CL_API_KEYS"}
    service = by_kind("Service")["continual-serve-api"]
    assert service["spec"]["selector"].items() <= api["spec"]["template"]["metadata"]["labels"].items()


def test_worker_deployments_export_metrics_and_one_requests_a_gpu() -> None:
    deployments = by_kind("Deployment")
    cpu, gpu = deployments["continual-serve-worker"], deployments["continual-serve-worker-gpu"]
    config = by_kind("ConfigMap")["continual-serve"]["data"]
    assert (config["CL_WORKER_METRICS_HOST"], config["CL_WORKER_METRICS_PORT"]) == ("0.0.0.0", "9100")
    for worker in (cpu, gpu):
        (container,) = containers(worker)
        assert container["command"][:6] == ["celery", "-A", "worker.app", "worker", "-Q", "updates"]
        assert {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"] == 9100
        assert container["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
        assert worker["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "9100"
    (gpu_container,) = containers(gpu)
    assert gpu_container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"name": "CL_DEVICE", "value": "cuda"} in gpu_container["env"]
    assert "nvidia.com/gpu" not in str(containers(cpu)[0]["resources"])
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    images = {i["name"]: i for i in kustomization["images"]}
    assert images[gpu_container["image"].split(":")[0]]["newTag"] == "cuda"
    assert images[containers(cpu)[0]["image"].split(":")[0]]["newTag"] == "cpu"
    service = by_kind("Service")["continual-serve-worker"]
    for worker in (cpu, gpu):
        assert service["spec"]["selector"].items() <= worker["spec"]["template"]["metadata"]["labels"].items()


def test_every_pod_runs_non_root_with_resources_and_existing_secrets_and_config() -> None:
    secrets, configmaps = by_kind("Secret"), by_kind("ConfigMap")
    workloads = [*by_kind("Deployment").values(), *by_kind("StatefulSet").values()]
    assert "continual-serve-redis" in by_kind("StatefulSet")
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, workload["metadata"]["name"]
        for container in pod["containers"]:
            name = f"{workload['metadata']['name']}/{container['name']}"
            assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"], name
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets[ref["name"]]["stringData"], name
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in configmaps, name
    redis_url = urlsplit(by_kind("Secret")["continual-serve"]["stringData"]["CL_REDIS_URL"])
    assert redis_url.hostname in by_kind("Service") and redis_url.port == 6379


# -- CI and docs -----------------------------------------------------------------------------------------------------


def test_ci_installs_the_tools_these_checks_run() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    for tool, package in TOOLS.items():
        assert f"[{tool}]={package}" in ci


def test_readme_operations_section_explains_every_alert_and_panel() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "## Operations" in readme
    operations = readme.split("## Operations", 1)[1].split("\n## ", 1)[0]
    assert "docker compose up" in operations and "clctl promote" in operations
    for words in ("make smoke", "TORCH_INDEX_URL", "PIP_INDEX_URL", "PIP_NO_INDEX", "wheels/"):
        assert words in operations, words  # the smoke test and the air-gapped build
    for path in RULE_FILES:
        for rule in rules(path):
            assert rule["alert"] in operations, rule["alert"]
    for path in DASHBOARDS:
        for panel in dashboard_panels(load_dashboard(path)):
            if panel["type"] != "row":
                assert panel["title"] in operations, panel["title"]
