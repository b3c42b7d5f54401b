"""The Spark Operator for real: a SparkApplication (PySpark, two executors, the
spark-preprocess image by digest) is submitted by the operator's controller, its driver pod
gets the program's volume through the operator's webhook, and it completes."""

from __future__ import annotations

import json
import secrets

import pytest
from kube_namespace import wait_for

from pipeline_ops.base.errors import OpsError
from pipeline_ops.cluster import spark_operator
from pipeline_ops.cluster.launcher import Cluster
from pipeline_ops.cluster.registry import pushed

pytestmark = pytest.mark.cluster

NAMESPACE = spark_operator.JOBS_NAMESPACE
PROGRAM = """
from pyspark.sql import SparkSession

spark = SparkSession.builder.appName("two-executors").getOrCreate()
total = spark.sparkContext.parallelize(range(1000), 4).map(lambda x: x * 2).sum()
hosts = spark.sparkContext.parallelize(range(4), 4).map(
    lambda _: __import__("socket").gethostname()).distinct().count()
executors = spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size() - 1
print(f"total={total} executors={executors} executor_hosts={hosts}", flush=True)
spark.stop()
"""


def test_a_spark_application_with_two_executors_completes_through_the_operator(
    cluster: Cluster,
) -> None:
    layout = cluster.layout
    name = f"two-executors-{secrets.token_hex(3)}"
    image = pushed(layout)[spark_operator.SPARK_REPOSITORY]
    program = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "data": {"app.py": PROGRAM},
    }  # fmt: skip
    pod = {"coreRequest": "100m", "memory": "512m",
           "volumeMounts": [{"name": "program", "mountPath": "/opt/program"},
                            {"name": "tmp", "mountPath": "/tmp"}]}  # fmt: skip
    application = {
        "apiVersion": "sparkoperator.k8s.io/v1beta2",
        "kind": "SparkApplication",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "type": "Python", "pythonVersion": "3", "mode": "cluster", "sparkVersion": "4.0.1",
            "image": image, "imagePullPolicy": "IfNotPresent",
            "mainApplicationFile": "local:///opt/program/app.py",
            "sparkConf": {
                # run the job on both executors: wait for them to register first
                "spark.scheduler.minRegisteredResourcesRatio": "1.0",
                "spark.scheduler.maxRegisteredResourcesWaitingTime": "180s",
                "spark.local.dir": "/tmp/spark-local",
            },
            "volumes": [{"name": "program", "configMap": {"name": name}},
                        {"name": "tmp", "emptyDir": {}}],
            "restartPolicy": {"type": "Never"},
            "driver": {**pod, "cores": 1,
                       "serviceAccount": spark_operator.SPARK_SERVICE_ACCOUNT},
            "executor": {**pod, "cores": 1, "instances": 2},
        },
    }  # fmt: skip
    for manifest in (program, application):
        layout.kubectl()("apply", "-f", "-", stdin=json.dumps(manifest))

    def state() -> dict:
        return json.loads(
            layout.kubectl()("-n", NAMESPACE, "get", "sparkapplication", name, "-o", "json")
        ).get("status", {})

    try:
        status = wait_for(
            "COMPLETED or FAILED",
            lambda: (
                (s := state()).get("applicationState", {}).get("state")
                in ("COMPLETED", "FAILED", "SUBMISSION_FAILED")
                and s
            ),
            timeout=420,
        )
        driver = status.get("driverInfo", {}).get("podName", f"{name}-driver")
        try:
            logs = layout.kubectl()("-n", NAMESPACE, "logs", driver, "--tail=200")
        except OpsError as error:
            logs = str(error)
        assert status["applicationState"]["state"] == "COMPLETED", (status, logs[-3000:])
        assert "total=999000 executors=2 executor_hosts=2" in logs
        assert len(status["executorState"]) == 2, status
        # the webhook mounted the program's volume into the driver pod
        mounts = layout.kubectl()(
            "-n", NAMESPACE, "get", "pod", driver, "-o",
            "jsonpath={.spec.containers[0].volumeMounts[*].mountPath}",
        ).split()  # fmt: skip
        assert "/opt/program" in mounts
    finally:
        layout.kubectl()("-n", NAMESPACE, "delete", "sparkapplication,configmap", name,
                "--wait=false")  # fmt: skip
