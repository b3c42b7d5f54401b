"""Each image tested as a container, run the way its manifest runs it, against the real local
platform: `make image-test` here, and the image-test step of every stage workflow in CI.

How a container runs is read from argo-apps/base, not restated: the user and group, a
read-only root filesystem with the manifest's volumes (``/tmp``) as the only writable paths,
every capability dropped, no privilege escalation, the CPU and memory limits, and the plain
environment the manifest sets. Only the Vault contract differs: it points at the local Vault
with the stage's own identity (a service-account-shaped token, mounted read-only).

The checks, in pipeline order (each later stage uses what the earlier ones produced; a stage
tested alone, as in a stage workflow, gets its inputs from the host's own stage commands):

| image | checks |
|---|---|
| every image | `--help` exits 0; without Vault settings it exits 2 naming what is missing |
| data-fetch | replays the bundled sample into MongoDB; summary printed; collection count |
| spark-preprocess | the real job publishes features; then as the Spark Operator runs it: a |
|  | driver container and two executor containers (`driver`/`executor` modes), read-only roots |
| ml-training | trains on those features and registers a `challenger` in MLflow |
| model-serving | loads the challenger; /readyz, /version, scores a real pull request |
| load-gate | the Locust gate passes against that model-serving container |
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import requests
import yaml

from pipeline_ops.base.processes import free_port
from pipeline_ops.images.build import IMAGE_ORDER, built_images
from pipeline_ops.images.engine import ContainerEngine, EngineError
from pipeline_ops.local_env import MODEL_NAME, LocalEnvironment
from pipeline_ops.local_platform import LocalPlatform
from pipeline_ops.paths import LOCAL_DIR, PROJECT_ROOT, SAMPLES_DIR
from pipeline_ops.samples import first_sample_record
from pipeline_ops.validate.checks import walk_nodes

log = logging.getLogger(__name__)

MANIFESTS = PROJECT_ROOT / "argo-apps" / "base"
TOKEN_MOUNT = "/var/run/secrets/vault/token"
APP_UID = 10001
# CI's service levels for the gate against one container on a shared runner; the cluster's
# (AnalysisTemplate) are stricter. Same gate code, same image.
CI_GATE_ARGS = (
    "--users", "10", "--spawn-rate", "5", "--run-time", "20s", "--max-error-ratio", "0.01",
    "--max-p95-ms", "500", "--max-p99-ms", "1000", "--min-rps", "20",
)  # fmt: skip
# Spark on Kubernetes gives a pod memory + overhead: 40 % for Python applications.
SPARK_PYTHON_OVERHEAD = 0.4
SPARK_MIN_OVERHEAD_MB = 384


class ImageTestError(AssertionError):
    pass


# -- how a manifest runs a container ----------------------------------------------------------


@dataclass
class RunPolicy:
    """The parts of a pod spec that decide how its container runs."""

    user: int
    group: int
    read_only: bool
    writable: list[str]
    drop_all_capabilities: bool
    no_privilege_escalation: bool
    cpus: str
    memory_mb: int
    env: dict[str, str] = field(default_factory=dict)

    def docker_args(self) -> list[str]:
        args = [
            "--user", f"{self.user}:{self.group}", "--cpus", self.cpus,
            "--memory", f"{self.memory_mb}m",
        ]  # fmt: skip
        if self.read_only:
            args.append("--read-only")
        if self.drop_all_capabilities:
            args += ["--cap-drop", "ALL"]
        if self.no_privilege_escalation:
            args += ["--security-opt", "no-new-privileges"]
        return args


def _documents() -> Iterator[dict[str, Any]]:
    for path in sorted(MANIFESTS.glob("*.yaml")):
        yield from (d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict))


def _memory_mb(quantity: str) -> int:
    units = {
        "Ki": 1 / 1024,
        "Mi": 1,
        "Gi": 1024,
        "k": 1 / 1000,
        "M": 1,
        "G": 1000,
        "g": 1024,
        "m": 1,
    }
    for suffix, factor in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(int(quantity) / 2**20)


def _cpus(quantity: str | int) -> str:
    text = str(quantity)
    return str(int(text[:-1]) / 1000) if text.endswith("m") else text


def _plain_env(entries: list[dict[str, Any]] | None) -> dict[str, str]:
    return {
        e["name"]: str(e["value"])
        for e in entries or []
        if "value" in e and not e["name"].startswith("VAULT_")
    }


def manifest_policy(image: str, spark_role: str = "driver") -> RunPolicy:
    """How argo-apps/base runs ``image``: its pod template, or for a Spark application the
    driver's or executors' part of it."""
    for document in _documents():
        for node in walk_nodes(document):
            if node.get("image") == image and "driver" in node and "executor" in node:
                role = node[spark_role]
                pod, container = role.get("podSecurityContext", {}), role.get("securityContext", {})
                jvm_mb = _memory_mb(str(role["memory"]))
                overhead = max(SPARK_MIN_OVERHEAD_MB, int(jvm_mb * SPARK_PYTHON_OVERHEAD))
                cpu = role.get("coreLimit", role.get("cores", 1))
                memory = f"{jvm_mb + overhead}Mi"
                return _policy(
                    pod, container, cpu, memory, role.get("volumeMounts"), role.get("env")
                )
            for spec_container in node.get("containers", []) or []:
                if spec_container.get("image") == image:
                    limits = spec_container.get("resources", {}).get("limits", {})
                    return _policy(
                        node.get("securityContext", {}), spec_container.get("securityContext", {}),
                        limits.get("cpu", "1"), limits.get("memory", "512Mi"),
                        spec_container.get("volumeMounts"), spec_container.get("env"),
                    )  # fmt: skip
    raise ImageTestError(f"no manifest in {MANIFESTS} runs the image {image!r}")


def _policy(pod, container, cpu, memory, mounts, env) -> RunPolicy:
    capabilities = container.get("capabilities", {}).get("drop", [])
    return RunPolicy(
        user=int(container.get("runAsUser", pod.get("runAsUser", 0))),
        group=int(container.get("runAsGroup", pod.get("runAsGroup", 0))),
        read_only=bool(container.get("readOnlyRootFilesystem", False)),
        writable=[m["mountPath"] for m in mounts or []],
        drop_all_capabilities="ALL" in capabilities,
        no_privilege_escalation=container.get("allowPrivilegeEscalation") is False,
        cpus=_cpus(cpu),
        memory_mb=_memory_mb(str(memory)),
        env=_plain_env(env),
    )


# -- the bench: platform, images, containers --------------------------------------------------


@dataclass
class ContainerResult:
    returncode: int
    stdout: str
    stderr: str

    def summary(self) -> dict[str, Any]:
        """A stage's JSON summary: the last line of stdout that is a JSON object."""
        for line in reversed(self.stdout.strip().splitlines()):
            with contextlib.suppress(json.JSONDecodeError):
                value = json.loads(line)
                if isinstance(value, dict):
                    return value
        with contextlib.suppress(json.JSONDecodeError):
            return json.loads(self.stdout)
        raise ImageTestError(f"no JSON summary in stdout:\n{self.stdout[-2000:]}")


class ImageTestBench:
    """The local platform plus the images under test, and how to run them as containers."""

    def __init__(
        self,
        engine: ContainerEngine,
        images: dict[str, str],
        env: LocalEnvironment,
        work_dir: Path,
    ):
        self.engine = engine
        self.images = images
        self.env = env
        self.work_dir = work_dir
        self.data_dir = env.data_dir
        self._containers: list[str] = []

    # -- containers ------------------------------------------------------------------------
    def _volumes(self, policy: RunPolicy, name: str) -> list[str]:
        """Each manifest volume as a fresh host folder owned by the app's user (an emptyDir
        with fsGroup), plus the shared data folder (features) at its own path."""
        args = []
        for mount in policy.writable:
            folder = self.work_dir / "volumes" / f"{name}{mount.replace('/', '_')}"
            folder.mkdir(parents=True, exist_ok=True)
            _give(folder, policy)
            args += ["-v", f"{folder}:{mount}"]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for path in [self.data_dir, *self.data_dir.rglob("*")]:
            _give(path, policy)
        return [*args, "-v", f"{self.data_dir}:{self.data_dir}"]

    def _vault(self, stage: str | None, policy: RunPolicy) -> list[str]:
        if stage is None:
            return []
        contract = self.env.stage_env(stage)
        token = self.work_dir / "tokens" / stage
        token.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(contract["VAULT_TOKEN_FILE"], token)
        _give(token, policy, read_only=True)
        contract["VAULT_TOKEN_FILE"] = TOKEN_MOUNT
        args = ["-v", f"{token}:{TOKEN_MOUNT}:ro"]
        for key, value in contract.items():
            args += ["-e", f"{key}={value}"]
        return args

    def docker_run(
        self,
        image: str,
        args: list[str],
        *,
        vault_stage: str | None = None,
        policy: RunPolicy | None = None,
        env: dict[str, str] | None = None,
        entrypoint: str | None = None,
        detach: bool = False,
        timeout: float = 900,
    ) -> ContainerResult:
        policy = policy or manifest_policy(image)
        name = f"image-test-{image}-{uuid.uuid4().hex[:8]}"
        command = [
            "run", "--name", name, "--network", "host", *policy.docker_args(),
            *self._volumes(policy, name), *self._vault(vault_stage, policy),
        ]  # fmt: skip
        for key, value in {**policy.env, **(env or {})}.items():
            command += ["-e", f"{key}={value}"]
        if detach:
            command.append("--detach")
        if entrypoint:
            command += ["--entrypoint", entrypoint]
        command += [self.images[image], *args]
        self._containers.append(name)
        try:
            result = self.engine.docker(*command, check=False, timeout=timeout)
        except subprocess.TimeoutExpired as error:
            raise ImageTestError(
                f"{image} {' '.join(args)} ran longer than {timeout:.0f}s"
            ) from error
        return ContainerResult(result.returncode, result.stdout, result.stderr)

    def logs(self, name_or_id: str) -> str:
        result = self.engine.docker("logs", name_or_id, check=False)
        return (result.stdout + result.stderr)[-3000:]

    def remove_containers(self) -> None:
        for name in self._containers:
            self.engine.docker("rm", "--force", name, check=False)
        self._containers.clear()


def _give(path: Path, policy: RunPolicy, read_only: bool = False) -> None:
    """Let the container's user use ``path``, as a pod's fsGroup does: owned by it when we
    are root, else opened to everyone (a CI runner's unprivileged user)."""
    with contextlib.suppress(FileNotFoundError):
        if os.geteuid() == 0:
            os.chown(path, policy.user, policy.group, follow_symlinks=False)
            if read_only:
                path.chmod(0o400)
        elif not path.is_symlink():
            path.chmod(0o444 if read_only else (0o777 if path.is_dir() else 0o666))


def _expect(condition: bool, message: str, result: ContainerResult | None = None) -> None:
    if not condition:
        detail = (
            f"\n--- stdout\n{result.stdout[-2500:]}\n--- stderr\n{result.stderr[-2500:]}"
            if result
            else ""
        )
        raise ImageTestError(message + detail)


# -- the checks -------------------------------------------------------------------------------

CONFIG_ERROR_ARGS = {"load-gate": ["--users", "-1"]}  # the gate reads no Vault: a bad argument


def check_help(bench: ImageTestBench, image: str) -> str:
    """The image's own user is the unprivileged 10001 (so `runAsNonRoot` holds even where a
    manifest sets no user), and its entrypoint answers `--help`."""
    config = json.loads(bench.engine.docker("image", "inspect", bench.images[image]).stdout)[0]
    user = config["Config"].get("User") or "root"
    _expect(user.split(":")[0] == str(APP_UID), f"{image} runs as {user!r}, not {APP_UID}")
    result = bench.docker_run(image, ["--help"])
    _expect(result.returncode == 0, f"{image} --help exited {result.returncode}", result)
    _expect("usage:" in result.stdout, f"{image} --help printed no usage", result)
    return f"user {user}; --help exits 0"


def check_config_error(bench: ImageTestBench, image: str) -> str:
    """Without Vault settings (or, for the gate, with a bad argument) the entrypoint stops at
    start with exit code 2 and says what is wrong."""
    result = bench.docker_run(image, CONFIG_ERROR_ARGS.get(image, []), timeout=120)
    _expect(
        result.returncode == 2,
        f"{image} without configuration exited {result.returncode}, not 2",
        result,
    )
    said = result.stderr + result.stdout
    expected = "--users" if image in CONFIG_ERROR_ARGS else "VAULT_"
    _expect(expected in said, f"{image}'s configuration error does not name {expected}", result)
    return "configuration error exits 2 and names it"


def sample_count() -> int:
    return sum(
        sum(1 for line in gzip.open(path, "rt") if line.strip())
        for path in SAMPLES_DIR.glob("*.prs.jsonl.gz")
    )


def check_data_fetch(bench: ImageTestBench) -> str:
    from pymongo import MongoClient

    result = bench.docker_run(
        "data-fetch", ["--source", "replay", "--progress", "none"], vault_stage="data-fetch"
    )
    _expect(result.returncode == 0, f"data-fetch exited {result.returncode}", result)
    summary = result.summary()
    secret = bench.env.stage_secrets()["data-fetch"]
    client: MongoClient[dict[str, Any]] = MongoClient(
        secret["mongo_uri"], serverSelectionTimeoutMS=5000
    )
    with client:
        stored = client[secret["mongo_database"]]["pull_requests"].count_documents({})
    expected = sample_count()
    _expect(
        stored == expected,
        f"MongoDB holds {stored} pull requests, the sample has {expected}",
        result,
    )
    return f"replayed the sample: {stored} pull requests in MongoDB ({json.dumps(summary)[:120]})"


def check_spark_preprocess(bench: ImageTestBench) -> str:
    result = bench.docker_run(
        "spark-preprocess", ["--log-level", "WARNING"], vault_stage="spark-preprocess"
    )
    _expect(result.returncode == 0, f"spark-preprocess exited {result.returncode}", result)
    summary = result.summary()
    _expect(summary.get("feature_rows", summary.get("rows", 0)) > 0 or "run_id" in summary,
            "spark-preprocess published no features", result)  # fmt: skip
    return f"published features run {summary.get('run_id')}"


def _main_application_file() -> str:
    for document in _documents():
        for node in walk_nodes(document):
            if node.get("image") == "spark-preprocess" and "mainApplicationFile" in node:
                return str(node["mainApplicationFile"])
    raise ImageTestError("no SparkApplication template for spark-preprocess in argo-apps/base")


def check_spark_kubernetes_shape(bench: ImageTestBench, executors: int = 2) -> str:
    """The job as the Spark Operator runs it, as far as containers show it: the image's
    `driver` mode runs the manifest's application file, and ``executors`` containers in
    `executor` mode (the environment Spark's Kubernetes backend gives executor pods) do the
    work, each with the manifest's read-only root and limits. The executors register with
    the driver directly, as they do on Kubernetes; a standalone master (no workers, it
    launches nothing) only gives the driver a scheduler that accepts them."""
    image = "spark-preprocess"
    master_port, master_ui, driver_port = free_port(), free_port(), free_port()
    master = bench.docker_run(
        image, ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                "--port", str(master_port), "--webui-port", str(master_ui)],
        entrypoint="spark-class", detach=True,
    )  # fmt: skip
    _expect(master.returncode == 0, "the Spark master did not start", master)
    driver = bench.docker_run(
        image,
        ["driver", "--master", f"spark://127.0.0.1:{master_port}",
         "--conf", "spark.driver.host=127.0.0.1", "--conf", f"spark.driver.port={driver_port}",
         "--conf", "spark.ui.enabled=false", _main_application_file(), "--log-level", "INFO"],
        vault_stage=image, policy=manifest_policy(image, "driver"),
        env={"SPARK_DRIVER_BIND_ADDRESS": "127.0.0.1", "SPARK_LOCAL_IP": "127.0.0.1"}, detach=True,
    )  # fmt: skip
    _expect(driver.returncode == 0, "the driver container did not start", driver)
    driver_id = driver.stdout.strip()
    app_id = _wait_for_application(bench, master_ui, driver_id)
    policy = manifest_policy(image, "executor")
    # Spark's Kubernetes backend hands each executor pod the JVM options as SPARK_JAVA_OPT_n,
    # among them the module options Java 17 needs; they come from the image's own Spark.
    java_options = {
        f"SPARK_JAVA_OPT_{i}": option for i, option in enumerate(_spark_module_options(bench))
    }
    executor_heap_mb = _memory_mb(str(_spark_role(image, "executor")["memory"]))
    executor_ids = []
    for number in range(1, executors + 1):
        # Each pod has an address of its own: one loopback address per executor (sharing
        # one would make Spark read another executor's shuffle files as host-local disk).
        address = f"127.0.0.{10 + number}"
        started = bench.docker_run(
            image, ["executor"], policy=policy, detach=True,
            env={
                "SPARK_DRIVER_URL": f"spark://CoarseGrainedScheduler@127.0.0.1:{driver_port}",
                "SPARK_EXECUTOR_ID": str(number), "SPARK_EXECUTOR_CORES": "1",
                "SPARK_APPLICATION_ID": app_id, "SPARK_EXECUTOR_POD_IP": address,
                "SPARK_EXECUTOR_MEMORY": f"{executor_heap_mb}m", "SPARK_LOCAL_IP": address,
                **java_options,
            },
        )  # fmt: skip
        _expect(started.returncode == 0, f"executor {number} did not start", started)
        executor_ids.append(started.stdout.strip())
    exit_code = _wait_for_driver(bench, driver_id, executor_ids, timeout=900)
    full_log = bench.engine.docker("logs", driver_id, check=False)
    (bench.work_dir / "spark-driver.log").write_text(full_log.stdout + full_log.stderr)
    errors = [
        line for line in full_log.stderr.splitlines() if " ERROR " in line or "Error:" in line
    ]
    driver_log = "\n".join(errors[:20]) + "\n" + bench.logs(driver_id)
    executor_logs = [
        f"{_exit_state(bench, e)}\n{bench.engine.docker('logs', e, check=False).stderr}"
        for e in executor_ids
    ]
    bench.engine.docker("rm", "--force", master.stdout.strip(), *executor_ids, check=False)
    detail = "\n".join(
        f"--- executor {i + 1} {log.splitlines()[0]}\n{log[-1500:]}"
        for i, log in enumerate(executor_logs)
    )
    _expect(exit_code == 0, f"the driver: {exit_code}:\n{driver_log}\n{detail}")
    working = [i + 1 for i, log in enumerate(executor_logs) if "Running task" in log]
    _expect(
        len(working) == executors, f"only executors {working} of {executors} ran tasks:\n{detail}"
    )
    summary = ContainerResult(0, full_log.stdout, "").summary()
    return f"driver + {executors} executors (read-only roots) published run {summary.get('run_id')}"


def _spark_module_options(bench: ImageTestBench) -> list[str]:
    script = (
        "from pyspark.java_gateway import launch_gateway\n"
        "gateway = launch_gateway()\n"
        "print(gateway.jvm.org.apache.spark.launcher.JavaModuleOptions.defaultModuleOptions())\n"
        "gateway.shutdown()\n"
    )
    result = bench.docker_run("spark-preprocess", ["-c", script], entrypoint="python", timeout=120)
    _expect(result.returncode == 0, "could not read Spark's JVM module options", result)
    return result.stdout.strip().splitlines()[-1].split()


def _spark_role(image: str, role: str) -> dict[str, Any]:
    for document in _documents():
        for node in walk_nodes(document):
            if node.get("image") == image and role in node:
                return node[role]
    raise ImageTestError(f"no Spark {role} for {image}")


def _wait_for_application(bench: ImageTestBench, master_ui: int, driver: str) -> str:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException, ValueError):
            apps = requests.get(f"http://127.0.0.1:{master_ui}/json/", timeout=2).json()
            if apps.get("activeapps"):
                return apps["activeapps"][0]["id"]
        state = json.loads(bench.engine.docker("inspect", driver).stdout)[0]["State"]
        if not state["Running"]:
            raise ImageTestError(
                f"the driver exited {state['ExitCode']} before registering:\n{bench.logs(driver)}"
            )
        time.sleep(1)
    raise ImageTestError(f"the driver registered no application in 180 s:\n{bench.logs(driver)}")


def _exit_state(bench: ImageTestBench, container: str) -> str:
    state = json.loads(bench.engine.docker("inspect", container).stdout)[0]["State"]
    return f"(exit code {state['ExitCode']}, out of memory: {state['OOMKilled']})"


def _wait_for_driver(
    bench: ImageTestBench, driver: str, executors: list[str], timeout: float
) -> int | str:
    """The driver's exit code; or why it cannot finish (every executor gone while it waits
    for them, as when executors cannot start)."""
    deadline = time.monotonic() + timeout
    executors_gone_at = None
    while time.monotonic() < deadline:
        state = json.loads(bench.engine.docker("inspect", driver).stdout)[0]["State"]
        if not state["Running"]:
            return int(state["ExitCode"])
        alive = [
            e for e in executors
            if json.loads(bench.engine.docker("inspect", e).stdout)[0]["State"]["Running"]
        ]  # fmt: skip
        if alive:
            executors_gone_at = None
        elif executors_gone_at is None:
            executors_gone_at = time.monotonic()  # a finishing driver stops them first
        elif time.monotonic() - executors_gone_at > 60:
            return "still running a minute after every executor was gone"
        time.sleep(2)
    return f"still running after {timeout:.0f} s"


def check_ml_training(bench: ImageTestBench) -> str:
    from mlflow import MlflowClient

    started = time.time()
    result = bench.docker_run("ml-training", ["--log-level", "WARNING"], vault_stage="ml-training")
    _expect(result.returncode == 0, f"ml-training exited {result.returncode}", result)
    summary = result.summary()
    _expect(
        summary.get("registered") is True, f"ml-training registered no model: {summary}", result
    )
    client = MlflowClient(bench.env.platform.service("mlflow").url)
    version = client.get_model_version_by_alias(MODEL_NAME, "challenger")
    fresh = version.creation_timestamp / 1000 >= started - 5
    _expect(fresh, f"the challenger (version {version.version}) is older than this run", result)
    return f"registered {MODEL_NAME} version {version.version} as challenger"


@contextlib.contextmanager
def serving_container(bench: ImageTestBench, alias: str = "challenger") -> Iterator[str]:
    """model-serving as its Rollout runs it, on a free loopback port; yields its URL."""
    port = free_port()
    result = bench.docker_run(
        "model-serving", ["--host", "127.0.0.1", "--port", str(port)], vault_stage="model-serving",
        env={"SERVING_MODEL_ALIAS": alias}, detach=True,
    )  # fmt: skip
    _expect(result.returncode == 0, "model-serving did not start", result)
    container = result.stdout.strip()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            state = json.loads(bench.engine.docker("inspect", container).stdout)[0]["State"]
            if not state["Running"]:
                raise ImageTestError(
                    f"model-serving exited {state['ExitCode']}:\n{bench.logs(container)}"
                )
            time.sleep(1)
        else:
            raise ImageTestError(f"model-serving not ready after 180 s:\n{bench.logs(container)}")
        yield url
    finally:
        bench.engine.docker("stop", "--time", "20", container, check=False)


def check_model_serving(bench: ImageTestBench, then: Callable[[str], str] | None = None) -> str:
    with serving_container(bench) as url:
        ready = requests.get(f"{url}/readyz", timeout=5).json()
        version = requests.get(f"{url}/version", timeout=5).json()
        _expect(
            version.get("model_name") == MODEL_NAME, f"/version names {version.get('model_name')}"
        )
        record = first_sample_record()
        response = requests.post(f"{url}/v1/score", json=record, timeout=10)
        _expect(
            response.status_code == 200,
            f"/v1/score answered {response.status_code}: {response.text[:500]}",
        )
        [verdict] = response.json()["results"]
        scored = verdict["number"] == record["number"] and verdict["score"] is not None
        _expect(scored, f"/v1/score gave no score for pull request {record['number']}: {verdict}")
        said = f"serves version {ready['model_version']}; "
        said += f"scored #{record['number']}: {verdict['score']:.3f}"
        if then:
            said += "; " + then(url)
        return said


def check_load_gate(bench: ImageTestBench, url: str) -> str:
    result = bench.docker_run(
        "load-gate", ["--host", url, *CI_GATE_ARGS, "--report-dir", "/tmp/load-gate"], timeout=300
    )
    _expect(result.returncode == 0, f"the load gate failed (exit {result.returncode})", result)
    return "load gate passed: " + result.stdout.strip().splitlines()[-1][:160]


# -- running them -----------------------------------------------------------------------------


@contextlib.contextmanager
def open_bench(
    engine: ContainerEngine, images: dict[str, str], work_dir: Path | None = None
) -> Iterator[ImageTestBench]:
    """A fresh local platform (Vault seeded, MongoDB, MLflow) for the images under test,
    stopped at the end with every container the bench started."""
    work_dir = Path(work_dir or LOCAL_DIR / "images" / "test" / time.strftime("%Y%m%d-%H%M%S"))
    platform = LocalPlatform(work_dir / "platform")
    try:
        platform.up(["vault", "mongo", "mlflow"])
        env = LocalEnvironment(platform, work_dir / "data")
        env.configure_vault()
        bench = ImageTestBench(engine, images, env, work_dir)
        try:
            yield bench
        finally:
            bench.remove_containers()
    finally:
        platform.down()


def _host_stage(bench: ImageTestBench, stage: str) -> None:
    """Produce a stage's output with the host's own command (a stage tested alone)."""
    import sys

    from pipeline_ops.runner import run_stage_process

    run_stage_process(bench.env, stage, [str(Path(sys.executable).parent / stage)])


def stage_checks(
    bench: ImageTestBench, stages: list[str]
) -> Iterator[tuple[str, str, Callable[[], str]]]:
    """(image, check name, check) in pipeline order; upstream outputs come from the images
    under test when they are among ``stages``, else from the host's stage commands."""
    upstream = {
        "spark-preprocess": "data-fetch",
        "ml-training": "spark-preprocess",
        "model-serving": "ml-training",
    }
    functional: dict[str, Callable[[], str]] = {
        "data-fetch": lambda: check_data_fetch(bench),
        "spark-preprocess": lambda: check_spark_preprocess(bench),
        "spark-preprocess-on-kubernetes": lambda: check_spark_kubernetes_shape(bench),
        "ml-training": lambda: check_ml_training(bench),
        "model-serving": lambda: check_model_serving(
            bench, (lambda url: check_load_gate(bench, url)) if "load-gate" in stages else None
        ),
    }
    done: set[str] = set()

    def ensure(stage: str) -> None:
        if stage in done:
            return
        if stage in upstream:
            ensure(upstream[stage])
        _host_stage(bench, stage)
        done.add(stage)

    def ensure_inputs(stage: str) -> str:
        made_here = stage not in done
        ensure(stage)
        return (
            f"{stage}'s output made by the host's command"
            if made_here
            else f"from the {stage} image"
        )

    for image in [s for s in IMAGE_ORDER if s in stages]:
        yield image, "help", partial(check_help, bench, image)
        yield image, "config-error", partial(check_config_error, bench, image)
        if image in functional:
            if image in upstream:
                yield image, "inputs", partial(ensure_inputs, upstream[image])
            yield image, "runs", functional[image]
            if f"{image}-on-kubernetes" in functional:
                yield image, "kubernetes", functional[f"{image}-on-kubernetes"]
            done.add(image)
        elif image == "load-gate" and "model-serving" not in stages:
            yield image, "runs", lambda: _gate_against_host_serving(bench, ensure)


def _gate_against_host_serving(bench: ImageTestBench, ensure: Callable[[str], None]) -> str:
    import sys

    from pipeline_ops.runner import stage_process_env

    ensure("ml-training")
    port = free_port()
    env = {**stage_process_env(bench.env, "model-serving"), "SERVING_MODEL_ALIAS": "challenger"}
    serving = str(Path(sys.executable).parent / "model-serving")
    server = subprocess.Popen(
        [serving, "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(1)
        return check_load_gate(bench, url)
    finally:
        server.terminate()
        server.wait(timeout=30)


def run_image_tests(
    engine: ContainerEngine, stages: list[str] | None, overrides: dict[str, str]
) -> int:
    stages = stages or list(IMAGE_ORDER)
    unknown = sorted(set(stages) - set(IMAGE_ORDER))
    if unknown:
        raise EngineError(
            f"unknown image {', '.join(unknown)}; choose from {', '.join(IMAGE_ORDER)}"
        )
    engine.up()
    built = built_images()
    images = {
        name: overrides.get(name) or (built[name].reference if name in built else "")
        for name in stages
    }
    missing = [n for n, ref in images.items() if not ref]
    if missing:
        raise EngineError(
            f"no image for {', '.join(missing)}: run `make images` or pass --image NAME=REF"
        )
    failures = 0
    with open_bench(engine, images) as bench:
        for image, name, check in stage_checks(bench, stages):
            started = time.monotonic()
            try:
                said = check()
            except (ImageTestError, EngineError) as error:
                failures += 1
                print(
                    f"FAIL {image:<17} {name:<13} {time.monotonic() - started:6.1f}s  {error}",
                    flush=True,
                )
                continue
            print(
                f"ok   {image:<17} {name:<13} {time.monotonic() - started:6.1f}s  {said}",
                flush=True,
            )
    print(f"{failures} check(s) failed" if failures else "all image checks passed")
    return 1 if failures else 0
