"""The few Kubernetes operations the cluster run needs, through kubectl and the Argo Rollouts
plugin: batch runs from their schedules, a Spark run from its schedule, the Rollout's state,
promotion, AnalysisRuns."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

from pipeline_ops.cluster import ClusterError
from pipeline_ops.cluster.addons import kubectl
from pipeline_ops.cluster.layout import Layout, binary

T = TypeVar("T")
ROLLOUT = "model-serving"


def wait_until(what: str, probe: Callable[[], T | None], timeout: float, every: float = 2) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(every)
    raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}")


def get(layout: Layout, namespace: str, kind: str, name: str) -> dict[str, Any]:
    return json.loads(kubectl(layout, "-n", namespace, "get", kind, name, "-o", "json"))


def items(layout: Layout, namespace: str, kind: str, *selector: str) -> list[dict[str, Any]]:
    """Objects of ``kind`` in ``namespace`` (every namespace if empty) matching ``selector``."""
    # after the verb: kubectl takes an unknown flag before it (--all-namespaces belongs to
    # `get`) for the start of a plugin's name, and fails
    where = ["-n", namespace] if namespace else ["--all-namespaces"]
    listing = json.loads(kubectl(layout, "get", kind, *where, *selector, "-o", "json"))
    return listing["items"]


def summary_of(logs: str) -> dict[str, Any] | None:
    """The JSON summary a stage CLI prints last on stdout (pipeline_common.cli)."""
    starts = [m.start() for m in re.finditer(r"(?m)^\{$", logs)]
    for start in reversed(starts):
        end = logs.find("\n}", start)
        if end < 0:
            continue
        try:
            return json.loads(logs[start : end + 2])
        except json.JSONDecodeError:
            continue
    return None


def run_cronjob(layout: Layout, namespace: str, cronjob: str, name: str, timeout: float) -> str:
    """A Job from ``cronjob`` now (what its schedule would start); waits; its logs."""
    kubectl(layout, "-n", namespace, "create", "job", f"--from=cronjob/{cronjob}", name)

    def finished() -> dict[str, Any] | None:
        status = get(layout, namespace, "job", name).get("status", {})
        done = status.get("succeeded") or any(
            c["type"] == "Failed" and c["status"] == "True" for c in status.get("conditions", [])
        )
        return status if done else None

    status = wait_until(f"job {namespace}/{name}", finished, timeout)
    logs = kubectl(layout, "-n", namespace, "logs", f"job/{name}", "--tail=400")
    if not status.get("succeeded"):
        raise ClusterError(f"job {namespace}/{name} failed; its log ends:\n{logs[-3000:]}")
    return logs


def run_scheduled_spark(layout: Layout, namespace: str, name: str, timeout: float) -> dict:
    """A SparkApplication from the ScheduledSparkApplication's template (what its schedule
    submits), through the Spark Operator; its final status."""
    scheduled = get(layout, namespace, "scheduledsparkapplication", "spark-preprocess")
    application = {
        "apiVersion": "sparkoperator.k8s.io/v1beta2",
        "kind": "SparkApplication",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": scheduled["metadata"].get("labels", {})},
        "spec": scheduled["spec"]["template"],
    }  # fmt: skip
    kubectl(layout, "apply", "-f", "-", stdin=json.dumps(application))

    def finished() -> dict[str, Any] | None:
        status = get(layout, namespace, "sparkapplication", name).get("status", {})
        state = status.get("applicationState", {}).get("state")
        return status if state in ("COMPLETED", "FAILED", "SUBMISSION_FAILED") else None

    status = wait_until(f"SparkApplication {namespace}/{name}", finished, timeout, every=5)
    if status["applicationState"]["state"] != "COMPLETED":
        driver = status.get("driverInfo", {}).get("podName", f"{name}-driver")
        try:
            logs = kubectl(layout, "-n", namespace, "logs", driver, "--tail=200")
        except ClusterError as error:
            logs = str(error)
        raise ClusterError(
            f"spark-preprocess {name}: {status['applicationState']}; driver log:\n{logs[-3000:]}"
        )
    return status


def rollout(layout: Layout, namespace: str) -> dict[str, Any]:
    return get(layout, namespace, "rollout", ROLLOUT)


def plugin(layout: Layout, namespace: str, *args: str) -> str:
    """``kubectl argo rollouts ARGS`` (the plugin, as users run it)."""
    result = subprocess.run(
        [str(binary("kubectl-argo-rollouts")), "--kubeconfig", str(layout.kubeconfig),
         "-n", namespace, *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if result.returncode != 0:
        raise ClusterError(f"kubectl argo rollouts {' '.join(args)}: {result.stderr[-1500:]}")
    return result.stdout


def analysis_runs(layout: Layout, namespace: str) -> list[dict[str, Any]]:
    """Every AnalysisRun of the Rollout, oldest first, as the report shows them."""
    runs = sorted(items(layout, namespace, "analysisrun"),
                  key=lambda r: r["metadata"]["creationTimestamp"])  # fmt: skip
    shown = []
    for run in runs:
        status = run.get("status", {})
        shown.append({
            "name": run["metadata"]["name"],
            "kind": run["metadata"].get("labels", {}).get("rollout-type", ""),
            "phase": status.get("phase"),
            "message": status.get("message", ""),
            "metrics": [
                {"name": m["name"], "phase": m.get("phase"),
                 "measurements": [x.get("value", x.get("message", ""))
                                  for x in m.get("measurements", [])]}
                for m in status.get("metricResults", [])
            ],
        })  # fmt: skip
    return shown


def service_url(layout: Layout, namespace: str, service: str) -> str:
    spec = get(layout, namespace, "service", service)["spec"]
    return f"http://{spec['clusterIP']}:{spec['ports'][0]['port']}"
