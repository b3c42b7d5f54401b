"""The PrometheusRules of argo-apps as the rule files promtool reads: `make validate` checks
them (`promtool check rules`) and the rule unit tests run over them (`promtool test rules`,
tests/argo_apps). One file per PrometheusRule, ``<name>.rules.yaml``: its ``spec`` (the
groups) as is, which is what the Prometheus Operator hands Prometheus. And the dashboard's
queries, as Prometheus would run them for one namespace (its Grafana variables filled in):
validate parses them, the cluster run's test asks the cluster's Prometheus for each."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from pipeline_ops.stages import stage

RULE_KIND = "PrometheusRule"
DASHBOARD = Path(f"argo-apps/base/{stage('model-serving').name}-dashboard.json")
# Grafana's range for rate(): at least four scrape intervals (15 s)
RATE_INTERVAL = "1m"


def prometheus_rules(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o.get("kind") == RULE_KIND]


def write_rule_files(
    objects: list[dict[str, Any]], folder: Path, annotations: tuple[str, ...] | None = None
) -> list[Path]:
    """Each PrometheusRule among ``objects`` as a rule file in ``folder``. ``annotations``:
    keep only these annotations of each alert (promtool's tests compare an alert's
    annotations whole; a test then states what it means to check, its summary, and not
    every sentence of advice)."""
    written = []
    for rule in prometheus_rules(objects):
        groups = rule["spec"]["groups"]
        if annotations is not None:
            groups = [
                {**group, "rules": [_keeping(r, annotations) for r in group["rules"]]}
                for group in groups
            ]
        path = folder / f"{rule['metadata']['name']}.rules.yaml"
        path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
        written.append(path)
    return written


def alerts(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every alerting rule by its name."""
    return {
        rule["alert"]: rule
        for obj in prometheus_rules(objects)
        for group in obj["spec"]["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def _keeping(rule: dict[str, Any], annotations: tuple[str, ...]) -> dict[str, Any]:
    if "annotations" not in rule:
        return rule
    kept = {k: v for k, v in rule["annotations"].items() if k in annotations}
    return {**rule, "annotations": kept}


def dashboard_queries(dashboard: Path, namespace: str) -> dict[str, str]:
    """Every panel query of a Grafana dashboard, by "panel title/refId", with its variables
    (``$namespace``, ``$__rate_interval``) filled in."""
    model = json.loads(dashboard.read_text())
    queries = {}
    for panel in model["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$namespace", namespace)
            queries[f"{panel['title']}/{target['refId']}"] = expr.replace(
                "$__rate_interval", RATE_INTERVAL
            )
    return queries


def dashboard_rule_file(dashboard: Path, folder: Path) -> Path:
    """The dashboard's queries as recording rules, so that promtool parses each one."""
    queries = dashboard_queries(dashboard, "mlops")
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr} for i, expr in enumerate(queries.values())
    ]
    path = folder / f"{dashboard.stem}.dashboard.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": dashboard.stem, "rules": rules}]}))
    return path
