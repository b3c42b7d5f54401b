"""`make bench-scale`'s cluster point: spark-preprocess on the local Kubernetes cluster
(`make cluster-up`), a driver and two executors submitted as a SparkApplication through the
Spark Operator, on the same Parquet file and with the same partitions as the local[*] point.

- The program is ``ml-pipeline/bench/scale_preprocess.py`` itself, from a ConfigMap, run by
  the spark-preprocess image (the Spark image of the operator's namespace ``spark-jobs``, by
  digest): ``PreprocessJob.publish`` of the image's package, as the local point runs it.
- The file reaches the pods as a hostPath volume: one node, so the driver and both executors
  see the same folder (the Parquet file in, the features out), as they would share an object
  store in production; no copy, and nothing to serve. ``spark-jobs`` is not under the
  ``restricted`` Pod Security level (the environments' namespaces are).
- Time: from the submission to the state COMPLETED (polled every ``STATUS_SECONDS``), and
  the job's own seconds, which the program prints on the driver's log.
- Memory: the pods' processes (driver and executors) found through their cgroups (by pod
  UID), their resident memory summed and sampled as the local points' process trees are:
  the same measure. Beside it, the sum of each pod's cgroup peak (cgroup v2 ``memory.peak``,
  v1 ``memory.max_usage_in_bytes``), which also counts the page cache the pods' file reads
  and writes filled.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline_ops.base.errors import OpsError
from pipeline_ops.bench_scale import (
    POLL_SECONDS,
    PREPROCESS_WORKER,
    Run,
    resident_bytes,
    worker_result,
)
from pipeline_ops.cluster import spark_operator
from pipeline_ops.cluster.launcher import Cluster
from pipeline_ops.cluster.layout import Layout
from pipeline_ops.cluster.registry import pushed

NAMESPACE = spark_operator.JOBS_NAMESPACE
APP_LABEL = "sparkoperator.k8s.io/app-name"  # the operator's label on the driver and executors
FINAL_STATES = ("COMPLETED", "FAILED", "SUBMISSION_FAILED")
STATUS_SECONDS = 1.0
PROGRAM_DIR = "/opt/program"
DATA_DIR = "/data"
CGROUP_ROOT = Path("/sys/fs/cgroup")
# cgroup v1 keeps memory in its own hierarchy; v2 (unified) in the root
MEMORY_HIERARCHIES = (CGROUP_ROOT / "memory", CGROUP_ROOT)
NOT_UP = "the local cluster is not up: run `make cluster-up` first (as root), then make bench-scale"


@dataclass(frozen=True)
class Resources:
    """What the SparkApplication asks for. ``core_request``: the pods' CPU request, below a
    core: the node has the machine's two cores, part of them requested by the cluster's own
    pods, so three pods asking a core each would never be scheduled; Spark's task slots are
    the ``cores`` (one an executor: two slots, as local[*] has on two cores)."""

    driver_memory: str
    executor_memory: str
    memory_overhead: str
    executors: int = 2
    cores: int = 1
    core_request: str = "100m"


def spark_application(
    name: str, image: str, share: Path, arguments: list[str], resources: Resources
) -> dict[str, Any]:
    """The SparkApplication: ``scale_preprocess.py`` (ConfigMap ``name``) on ``image``, the
    host folder ``share`` mounted at ``DATA_DIR`` in the driver and every executor."""
    mounts = [{"name": "program", "mountPath": PROGRAM_DIR},
              {"name": "data", "mountPath": DATA_DIR},
              {"name": "tmp", "mountPath": "/tmp"}]  # fmt: skip
    pod = {"cores": resources.cores, "coreRequest": resources.core_request,
           "memoryOverhead": resources.memory_overhead, "volumeMounts": mounts,
           "labels": {"bench": "scale"}}  # fmt: skip
    return {
        "apiVersion": "sparkoperator.k8s.io/v1beta2",
        "kind": "SparkApplication",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "type": "Python", "pythonVersion": "3", "mode": "cluster", "sparkVersion": "4.0.1",
            "image": image, "imagePullPolicy": "IfNotPresent",
            "mainApplicationFile": f"local://{PROGRAM_DIR}/{PREPROCESS_WORKER.name}",
            "arguments": arguments,
            "sparkConf": {
                # the work starts once both executors are there, as local[*]'s cores are
                "spark.scheduler.minRegisteredResourcesRatio": "1.0",
                "spark.scheduler.maxRegisteredResourcesWaitingTime": "300s",
                "spark.local.dir": "/tmp/spark-local",  # the root is read-only
            },
            "volumes": [
                {"name": "program", "configMap": {"name": name}},
                {"name": "data", "hostPath": {"path": str(share), "type": "Directory"}},
                {"name": "tmp", "emptyDir": {}},
            ],
            "restartPolicy": {"type": "Never"},
            "driver": {**pod, "memory": resources.driver_memory,
                       "serviceAccount": spark_operator.SPARK_SERVICE_ACCOUNT},
            "executor": {**pod, "memory": resources.executor_memory,
                         "instances": resources.executors},
        },
    }  # fmt: skip


def program(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "data": {PREPROCESS_WORKER.name: PREPROCESS_WORKER.read_text()},
    }  # fmt: skip


# -- the pods' memory -----------------------------------------------------------------------
def pod_cgroup(uid: str, hierarchies: tuple[Path, ...] = MEMORY_HIERARCHIES) -> Path | None:
    """The memory cgroup of the pod ``uid``: the kubelet's cgroupfs layout
    (``kubepods/[burstable|besteffort/]pod<uid>``) or its systemd one
    (``kubepods.slice/...kubepods-<qos>-pod<uid with _>.slice``); None once it is gone."""
    systemd = uid.replace("-", "_")
    patterns = (
        f"kubepods/pod{uid}",
        f"kubepods/*/pod{uid}",
        f"kubepods.slice/*pod{systemd}.slice",
        f"kubepods.slice/*/*pod{systemd}.slice",
    )
    for root in hierarchies:
        for pattern in patterns:
            found = [p for p in root.glob(pattern) if p.is_dir()]
            if found:
                return found[0]
    return None


def cgroup_peak_bytes(cgroup: Path) -> int | None:
    """The cgroup's high-water mark of charged memory (resident and page cache)."""
    for name in ("memory.peak", "memory.max_usage_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            return int((cgroup / name).read_text().split()[0])
    return None


def cgroup_pids(cgroup: Path) -> list[int]:
    """Every process of the cgroup and of the cgroups below it (the pod's containers)."""
    pids: list[int] = []
    for procs in cgroup.rglob("cgroup.procs"):
        with contextlib.suppress(OSError, ValueError):
            pids.extend(int(line) for line in procs.read_text().split())
    return pids


@dataclass
class PodMemory:
    """The pods of one application, sampled: the peak of their processes' summed resident
    memory, and each pod's cgroup peak (kept after the pod is gone)."""

    cgroups: dict[str, Path] = field(default_factory=dict)  # pod name -> cgroup
    cgroup_peaks: dict[str, int] = field(default_factory=dict)
    peak_bytes: int = 0

    def track(self, pods: list[dict[str, Any]]) -> None:
        for pod in pods:
            name = pod["metadata"]["name"]
            if name not in self.cgroups and (found := pod_cgroup(pod["metadata"]["uid"])):
                self.cgroups[name] = found

    def sample(self) -> None:
        pids: list[int] = []
        for name, cgroup in self.cgroups.items():
            peak = cgroup_peak_bytes(cgroup)
            if peak is not None:
                self.cgroup_peaks[name] = max(peak, self.cgroup_peaks.get(name, 0))
            pids += cgroup_pids(cgroup)
        self.peak_bytes = max(self.peak_bytes, resident_bytes(pids))


# -- a point --------------------------------------------------------------------------------
def ready() -> tuple[Layout | None, str]:
    """(the cluster's layout, the Spark image by digest), or (None, why the point cannot run)."""
    cluster = Cluster()
    if cluster.phase != "up" or not cluster.node_ready():
        return None, NOT_UP
    image = pushed(cluster.layout).get(spark_operator.SPARK_REPOSITORY)
    if not image:
        return None, "no Spark image in the cluster's registry: `make cluster-up` pushes it"
    return cluster.layout, image


def run_application(
    layout: Layout,
    image: str,
    *,
    name: str,
    source: Path,
    partitions: int,
    resources: Resources,
    log: Path,
    timeout: float,
) -> Run:
    """Submit, follow to a final state while sampling the pods' memory, read the driver's
    log into ``log``, delete the application (and wait for its pods to go)."""
    kubectl = layout.kubectl()
    share = source.parent
    arguments = ["--engine", "spark", "--input", f"{DATA_DIR}/{source.name}",
                 "--out", f"{DATA_DIR}/out-{name}", "--partitions", str(partitions)]  # fmt: skip
    kubectl.apply([program(name)])
    memory = PodMemory()
    started = time.monotonic()
    kubectl.apply([spark_application(name, image, share, arguments, resources)])
    status: dict[str, Any] = {}
    pods: list[dict[str, Any]] = []
    stopped = None
    try:
        next_poll = 0.0
        while True:
            now = time.monotonic()
            if now >= next_poll:
                status = kubectl.get(NAMESPACE, "sparkapplication", name).get("status", {})
                pods = kubectl.items(NAMESPACE, "pods", "-l", f"{APP_LABEL}={name}")
                memory.track(pods)
                if status.get("applicationState", {}).get("state") in FINAL_STATES:
                    break
                next_poll = now + STATUS_SECONDS
            memory.sample()
            if now - started > timeout:
                stopped = "time"
                break
            time.sleep(POLL_SECONDS * 2)
        wall = time.monotonic() - started
        memory.sample()
        driver = status.get("driverInfo", {}).get("podName", f"{name}-driver")
        try:
            text = kubectl("-n", NAMESPACE, "logs", driver)
        except OpsError as error:
            text = str(error)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(text)
        return outcome(status, pods, memory, wall, worker_result(log), stopped, log)
    finally:
        with contextlib.suppress(OpsError):
            kubectl("-n", NAMESPACE, "delete", "sparkapplication,configmap", name,
                    "--ignore-not-found", "--wait=true", timeout=180)  # fmt: skip
            # the next point starts once this one's pods (and their memory) are gone
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and kubectl.items(
                NAMESPACE, "pods", "-l", f"{APP_LABEL}={name}"
            ):
                time.sleep(2)


def outcome(
    status: dict[str, Any],
    pods: list[dict[str, Any]],
    memory: PodMemory,
    wall: float,
    result: dict[str, Any],
    stopped: str | None,
    log: Path,
) -> Run:
    state = status.get("applicationState", {})
    result = {**result, "cgroup_peak_bytes": sum(memory.cgroup_peaks.values()),
              "pods": len(memory.cgroup_peaks)}  # fmt: skip
    run = Run("ok", wall, memory.peak_bytes, result)
    killed = [
        pod["metadata"]["name"]
        for pod in pods
        for box in pod.get("status", {}).get("containerStatuses", [])
        if (box.get("state", {}).get("terminated") or box.get("lastState", {}).get("terminated")
            or {}).get("reason") == "OOMKilled"
    ]  # fmt: skip
    if stopped == "time":
        run.outcome, run.note = "timed out", "ran past SCALE_BUDGET_SECONDS"
    elif killed:
        run.outcome, run.note = "out of memory", f"OOMKilled: {', '.join(killed)}"
    elif state.get("state") != "COMPLETED" or "seconds" not in result:
        run.outcome = "failed"
        message = str(state.get("errorMessage", ""))[:200]
        run.note = f"{state.get('state', 'no state')} {message}; driver log {log}".strip()
    return run


def describe_resources(resources: Resources, partitions: str) -> str:
    return (
        f"Spark on the local cluster: a driver ({resources.cores} core, "
        f"{resources.driver_memory}) and {resources.executors} executors ({resources.cores} "
        f"core, {resources.executor_memory} each; memory overhead {resources.memory_overhead} "
        f"a pod, CPU request {resources.core_request}), {partitions}"
    )
