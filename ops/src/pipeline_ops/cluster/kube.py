"""The few Kubernetes operations the cluster run needs, through the cluster's one client
(``Layout.kubectl()``): batch runs from their schedules (a user's "run it now"), the Spark run
its schedule submits, the Rollout's state, AnalysisRuns."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from pipeline_ops import stages
from pipeline_ops.base import commands
from pipeline_ops.base.errors import OpsError
from pipeline_ops.base.polling import wait_until
from pipeline_ops.cluster import ClusterError
from pipeline_ops.cluster.layout import Layout

ROLLOUT = stages.stage("model-serving").name


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


def run_cronjob(
    layout: Layout,
    namespace: str,
    cronjob: str,
    name: str,
    timeout: float,
    settings: dict[str, str] | None = None,
) -> str:
    """A Job from ``cronjob`` now (what its schedule would start: README's "run it now"),
    or, with ``settings``, an experiment: the same Job with these environment variables
    added to its containers (a data scientist's run with settings of its own); waits; its
    logs."""
    kubectl = layout.kubectl()
    create = ("-n", namespace, "create", "job", f"--from=cronjob/{cronjob}", name)
    if settings:
        job = json.loads(kubectl(*create, "--dry-run=client", "-o", "json"))
        for container in job["spec"]["template"]["spec"]["containers"]:
            container.setdefault("env", []).extend(
                {"name": key, "value": value} for key, value in settings.items()
            )
        kubectl("create", "-f", "-", stdin=json.dumps(job))
    else:
        kubectl(*create)

    def finished() -> dict[str, Any] | None:
        status = kubectl.get(namespace, "job", name).get("status", {})
        done = status.get("succeeded") or any(
            c["type"] == "Failed" and c["status"] == "True" for c in status.get("conditions", [])
        )
        return status if done else None

    status = wait_until(f"job {namespace}/{name}", finished, timeout)
    logs = kubectl("-n", namespace, "logs", f"job/{name}", "--tail=400")
    if not status.get("succeeded"):
        raise ClusterError(f"job {namespace}/{name} failed; its log ends:\n"
                           f"{commands.tail(logs, 3000)}")  # fmt: skip
    return logs


SCHEDULED_BY = "sparkoperator.k8s.io/scheduled-app-name"  # the operator's label on its runs


def scheduled_spark_run(
    layout: Layout, namespace: str, after: datetime, timeout: float
) -> dict[str, Any]:
    """The first SparkApplication that the ScheduledSparkApplication's schedule submits at or
    after ``after`` (the Spark Operator's schedule controller; nothing here creates it),
    followed to its end: its name, when it was created, its final status."""
    kubectl = layout.kubectl()
    preprocess = stages.stage("spark-preprocess").name
    since = after.replace(microsecond=0)

    def submitted() -> dict[str, Any] | None:
        runs = [r for r in kubectl.items(namespace, "sparkapplication", "-l",
                                         f"{SCHEDULED_BY}={preprocess}")
                if when(r["metadata"]["creationTimestamp"]) >= since]  # fmt: skip
        return min(runs, key=lambda r: r["metadata"]["creationTimestamp"]) if runs else None

    schedule = kubectl.get(namespace, "scheduledsparkapplication", preprocess)["spec"]["schedule"]
    run = wait_until(f"the schedule of {preprocess} ({schedule}) to submit a run", submitted,
                     timeout=_schedule_wait(schedule), every=5)  # fmt: skip
    name = run["metadata"]["name"]

    def finished() -> dict[str, Any] | None:
        status = kubectl.get(namespace, "sparkapplication", name).get("status", {})
        state = status.get("applicationState", {}).get("state")
        return status if state in ("COMPLETED", "FAILED", "SUBMISSION_FAILED") else None

    status = wait_until(f"SparkApplication {namespace}/{name}", finished, timeout, every=5)
    if status["applicationState"]["state"] != "COMPLETED":
        driver = status.get("driverInfo", {}).get("podName", f"{name}-driver")
        try:
            logs = kubectl("-n", namespace, "logs", driver, "--tail=200")
        except OpsError as error:
            logs = str(error)
        raise ClusterError(f"spark-preprocess {name}: {status['applicationState']}; driver "
                           f"log:\n{commands.tail(logs, 3000)}")  # fmt: skip
    return {"name": name, "schedule": schedule, "created": run["metadata"]["creationTimestamp"],
            "status": status}  # fmt: skip


def _schedule_wait(schedule: str) -> float:
    """How long a run of ``schedule`` may take to come: one period of a ``*/N`` minutes
    schedule, and a minute more (an earlier run still going is waited for, Forbid)."""
    minutes = schedule.split()[0]
    period = int(minutes[2:]) if minutes.startswith("*/") else 1
    return 60.0 * (2 * period + 1)


def when(stamp: str) -> datetime:
    """An API server timestamp (RFC 3339, ``Z``: objects' and audit events') as a datetime."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def rollout(layout: Layout, namespace: str) -> dict[str, Any]:
    return layout.kubectl().get(namespace, "rollout", ROLLOUT)


def analysis_runs(layout: Layout, namespace: str) -> list[dict[str, Any]]:
    """Every AnalysisRun of the Rollout, oldest first, as the report shows them."""
    runs = sorted(layout.kubectl().items(namespace, "analysisrun"),
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
    spec = layout.kubectl().get(namespace, "service", service)["spec"]
    return f"http://{spec['clusterIP']}:{spec['ports'][0]['port']}"
