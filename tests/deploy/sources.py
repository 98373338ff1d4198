"""What the deployment files say, read the way Prometheus and Grafana read them: the dashboard's and the alert
rules' PromQL expressions, and the metric names those expressions use."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))
GRAFANA = DEPLOY / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
K8S = DEPLOY / "k8s"
COMPOSE = ROOT / "docker-compose.yml"

# Series that Prometheus writes itself for every target (not exported by any process of ours).
PROMETHEUS_SERIES = {"up"}

# The Debian package that provides each tool the checks run (.ci/run installs them where missing).
TOOLS = {"promtool": "prometheus", "prometheus": "prometheus", "docker-compose": "docker-compose"}

_KEYWORDS = {"and", "or", "unless", "offset", "bool", "inf", "nan", "Inf", "NaN", "group_left", "group_right"}
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w.:$])[A-Za-z_:][\w:]*")


def require(tool: str) -> str:
    """The tool's path; a clear failure (never a skip) where it is missing."""
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed: `apt-get install {TOOLS[tool]}` (.ci/run installs it where missing)")
    return path


def load_yaml_documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def load_dashboard(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def dashboard_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # panels inside collapsed rows


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression: the panels' targets, the annotations, and the template variables' queries."""
    exprs = [t["expr"] for p in dashboard_panels(dashboard) for t in p.get("targets", []) if t.get("expr")]
    exprs += [a["expr"] for a in dashboard.get("annotations", {}).get("list", []) if a.get("expr")]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def rules(path: Path) -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def rule_exprs() -> list[str]:
    return [rule["expr"] for path in RULE_FILES for rule in rules(path)]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana `label_values(metric, label)` query) selects.

    Label matchers, string literals, ranges, grouping clauses and Grafana variables are removed first; what is
    left and is not a function, an aggregation or a keyword is a metric name."""
    expr = re.sub(r"\blabel_values\(\s*([A-Za-z_:][\w:]*)\s*,[^()]*\)", r"\1", expr)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    expr = re.sub(r"\{[^{}]*\}", "", expr)
    expr = re.sub(r"\[[^\[\]]*\]", "", expr)
    expr = _GROUPING.sub("", expr)
    names = set()
    for match in _IDENT.finditer(expr):
        if expr[match.end() :].lstrip().startswith("(") or match.group() in _KEYWORDS:
            continue  # a function or an aggregation, or a keyword
        names.add(match.group())
    return names


def used_metric_names() -> dict[str, set[str]]:
    """Metric name → where it is used ("alerts", or a dashboard's file name)."""
    used: dict[str, set[str]] = {}
    for expr in rule_exprs():
        for name in metric_names(expr):
            used.setdefault(name, set()).add("alerts")
    for path in DASHBOARDS:
        for expr in dashboard_exprs(load_dashboard(path)):
            for name in metric_names(expr):
                used.setdefault(name, set()).add(path.name)
    return used


def grafana_to_promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced by what they stand for, for promtool."""
    for variable, value in (("$__rate_interval", "1m"), ("$__interval", "15s"), ("$__range", "6h")):
        expr = expr.replace(variable, value)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)
