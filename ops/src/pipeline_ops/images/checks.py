"""What each image is checked for, run as a container the way its manifest runs it, in
pipeline order (``pipeline_ops.stages``): each later stage uses what the earlier ones
produced; a stage tested alone, as in a stage workflow, gets its inputs from the host's own
stage commands.

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
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import requests

from pipeline_ops import stages
from pipeline_ops.base import processes
from pipeline_ops.base.errors import WaitTimeout
from pipeline_ops.base.polling import wait_until
from pipeline_ops.base.processes import free_port
from pipeline_ops.images.bench import ContainerResult, ImageTestBench, ImageTestError, expect
from pipeline_ops.images.policy import (
    main_application_file,
    manifest_policy,
    memory_mb,
    spark_role_spec,
)
from pipeline_ops.local_env import MODEL_NAME
from pipeline_ops.paths import SAMPLES_DIR
from pipeline_ops.samples import first_sample_record

APP_UID = 10001
# CI's service levels for the gate against one container on a shared runner; the cluster's
# (AnalysisTemplate) are stricter. Same gate code, same image.
CI_GATE_ARGS = (
    "--users", "10", "--spawn-rate", "5", "--run-time", "20s", "--max-error-ratio", "0.01",
    "--max-p95-ms", "500", "--max-p99-ms", "1000", "--min-rps", "20",
)  # fmt: skip
GATE = stages.LOAD_GATE.name
QUALITY_GATE = stages.QUALITY_GATE
SERVING = stages.stage("model-serving")  # what the gate runs against
# each stage reads what the one before it in the list publishes
UPSTREAM = {s.name: stages.STAGES[i - 1].name for i, s in enumerate(stages.STAGES) if i}
CONFIG_ERROR_ARGS = {GATE: ["--users", "-1"]}  # the gate reads no Vault: a bad argument

Check = Callable[[], str]


# -- every image ------------------------------------------------------------------------------


def check_help(bench: ImageTestBench, image: str) -> str:
    """The image's own user is the unprivileged 10001 (so `runAsNonRoot` holds even where a
    manifest sets no user), and its entrypoint answers `--help`."""
    config = json.loads(bench.engine.docker("image", "inspect", bench.images[image]).stdout)[0]
    user = config["Config"].get("User") or "root"
    expect(user.split(":")[0] == str(APP_UID), f"{image} runs as {user!r}, not {APP_UID}")
    result = bench.docker_run(image, ["--help"])
    expect(result.returncode == 0, f"{image} --help exited {result.returncode}", result)
    expect("usage:" in result.stdout, f"{image} --help printed no usage", result)
    return f"user {user}; --help exits 0"


def check_config_error(bench: ImageTestBench, image: str) -> str:
    """Without Vault settings (or, for the gate, with a bad argument) the entrypoint stops at
    start with exit code 2 and says what is wrong."""
    result = bench.docker_run(image, CONFIG_ERROR_ARGS.get(image, []), timeout=120)
    expect(
        result.returncode == 2,
        f"{image} without configuration exited {result.returncode}, not 2",
        result,
    )
    said = result.stderr + result.stdout
    expected = "--users" if image in CONFIG_ERROR_ARGS else "VAULT_"
    expect(expected in said, f"{image}'s configuration error does not name {expected}", result)
    return "configuration error exits 2 and names it"


# -- each stage -------------------------------------------------------------------------------


def sample_count() -> int:
    return sum(
        sum(1 for line in gzip.open(path, "rt") if line.strip())
        for path in SAMPLES_DIR.glob("*.prs.jsonl.gz")
    )


def check_data_fetch(bench: ImageTestBench, image: str) -> str:
    from pymongo import MongoClient

    result = bench.docker_run(
        image, ["--source", "replay", "--progress", "none"], vault_stage=image
    )
    expect(result.returncode == 0, f"{image} exited {result.returncode}", result)
    summary = result.summary()
    secret = bench.env.stage_secrets()[image]
    client: MongoClient[dict[str, Any]] = MongoClient(
        secret["mongo_uri"], serverSelectionTimeoutMS=5000
    )
    with client:
        stored = client[secret["mongo_database"]]["pull_requests"].count_documents({})
    expected = sample_count()
    expect(
        stored == expected,
        f"MongoDB holds {stored} pull requests, the sample has {expected}",
        result,
    )
    return f"replayed the sample: {stored} pull requests in MongoDB ({json.dumps(summary)[:120]})"


def check_spark_preprocess(bench: ImageTestBench, image: str) -> str:
    result = bench.docker_run(image, ["--log-level", "WARNING"], vault_stage=image)
    expect(result.returncode == 0, f"{image} exited {result.returncode}", result)
    summary = result.summary()
    expect(summary.get("feature_rows", summary.get("rows", 0)) > 0 or "run_id" in summary,
           f"{image} published no features", result)  # fmt: skip
    return f"published features run {summary.get('run_id')}"


def check_spark_kubernetes_shape(bench: ImageTestBench, image: str, executors: int = 2) -> str:
    """The job as the Spark Operator runs it, as far as containers show it: the image's
    `driver` mode runs the manifest's application file, and ``executors`` containers in
    `executor` mode (the environment Spark's Kubernetes backend gives executor pods) do the
    work, each with the manifest's read-only root and limits. The executors register with
    the driver directly, as they do on Kubernetes; a standalone master (no workers, it
    launches nothing) only gives the driver a scheduler that accepts them."""
    master_port, master_ui, driver_port = free_port(), free_port(), free_port()
    master = bench.docker_run(
        image, ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                "--port", str(master_port), "--webui-port", str(master_ui)],
        entrypoint="spark-class", detach=True,
    )  # fmt: skip
    expect(master.returncode == 0, "the Spark master did not start", master)
    driver = bench.docker_run(
        image,
        ["driver", "--master", f"spark://127.0.0.1:{master_port}",
         "--conf", "spark.driver.host=127.0.0.1", "--conf", f"spark.driver.port={driver_port}",
         "--conf", "spark.ui.enabled=false", main_application_file(image),
         "--log-level", "INFO"],
        vault_stage=image, policy=manifest_policy(image, "driver"),
        env={"SPARK_DRIVER_BIND_ADDRESS": "127.0.0.1", "SPARK_LOCAL_IP": "127.0.0.1"}, detach=True,
    )  # fmt: skip
    expect(driver.returncode == 0, "the driver container did not start", driver)
    driver_id = driver.stdout.strip()
    app_id = _wait_for_application(bench, master_ui, driver_id)
    policy = manifest_policy(image, "executor")
    # Spark's Kubernetes backend hands each executor pod the JVM options as SPARK_JAVA_OPT_n,
    # among them the module options Java 17 needs; they come from the image's own Spark.
    java_options = {
        f"SPARK_JAVA_OPT_{i}": option
        for i, option in enumerate(_spark_module_options(bench, image))
    }
    executor_heap_mb = memory_mb(str(spark_role_spec(image, "executor")["memory"]))
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
        expect(started.returncode == 0, f"executor {number} did not start", started)
        executor_ids.append(started.stdout.strip())
    exit_code = _driver_outcome(bench, driver_id, executor_ids, timeout=900)
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
    expect(exit_code == 0, f"the driver: {exit_code}:\n{driver_log}\n{detail}")
    working = [i + 1 for i, log in enumerate(executor_logs) if "Running task" in log]
    expect(
        len(working) == executors, f"only executors {working} of {executors} ran tasks:\n{detail}"
    )
    summary = ContainerResult(0, full_log.stdout, "").summary()
    return f"driver + {executors} executors (read-only roots) published run {summary.get('run_id')}"


def _spark_module_options(bench: ImageTestBench, image: str) -> list[str]:
    script = (
        "from pyspark.java_gateway import launch_gateway\n"
        "gateway = launch_gateway()\n"
        "print(gateway.jvm.org.apache.spark.launcher.JavaModuleOptions.defaultModuleOptions())\n"
        "gateway.shutdown()\n"
    )
    result = bench.docker_run(image, ["-c", script], entrypoint="python", timeout=120)
    expect(result.returncode == 0, "could not read Spark's JVM module options", result)
    return result.stdout.strip().splitlines()[-1].split()


def _wait_for_application(bench: ImageTestBench, master_ui: int, driver: str) -> str:
    def registered() -> str | None:
        with contextlib.suppress(requests.RequestException, ValueError):
            apps = requests.get(f"http://127.0.0.1:{master_ui}/json/", timeout=2).json()
            if apps.get("activeapps"):
                return str(apps["activeapps"][0]["id"])
        state = bench.state(driver)
        if not state["Running"]:
            raise ImageTestError(
                f"the driver exited {state['ExitCode']} before registering:\n{bench.logs(driver)}"
            )
        return None

    try:
        return wait_until("the driver to register its application", registered, 180, every=1)
    except WaitTimeout as error:
        raise ImageTestError(f"{error}:\n{bench.logs(driver)}") from error


def _exit_state(bench: ImageTestBench, container: str) -> str:
    state = bench.state(container)
    return f"(exit code {state['ExitCode']}, out of memory: {state['OOMKilled']})"


def _driver_outcome(
    bench: ImageTestBench, driver: str, executors: list[str], timeout: float
) -> int | str:
    """The driver's exit code; or why it cannot finish (every executor gone while it waits
    for them, as when executors cannot start)."""
    executors_gone_at: list[float] = []

    def finished() -> tuple[int | str] | None:
        state = bench.state(driver)
        if not state["Running"]:
            return (int(state["ExitCode"]),)
        if any(bench.state(e)["Running"] for e in executors):
            executors_gone_at.clear()
        elif not executors_gone_at:
            executors_gone_at.append(time.monotonic())  # a finishing driver stops them first
        elif time.monotonic() - executors_gone_at[0] > 60:
            return ("still running a minute after every executor was gone",)
        return None

    try:
        (outcome,) = wait_until("the Spark driver to finish", finished, timeout)
    except WaitTimeout:
        return f"still running after {timeout:.0f} s"
    return outcome


def check_ml_training(bench: ImageTestBench, image: str) -> str:
    from mlflow import MlflowClient

    started = time.time()
    result = bench.docker_run(image, ["--log-level", "WARNING"], vault_stage=image)
    expect(result.returncode == 0, f"{image} exited {result.returncode}", result)
    summary = result.summary()
    expect(summary.get("registered") is True, f"{image} registered no model: {summary}", result)
    client = MlflowClient(bench.env.platform.service("mlflow").url)
    version = client.get_model_version_by_alias(MODEL_NAME, "challenger")
    fresh = version.creation_timestamp / 1000 >= started - 5
    expect(fresh, f"the challenger (version {version.version}) is older than this run", result)
    return f"registered {MODEL_NAME} version {version.version} as challenger"


def _ready(url: str) -> bool:
    with contextlib.suppress(requests.RequestException):
        return requests.get(f"{url}/readyz", timeout=2).status_code == 200
    return False


@contextlib.contextmanager
def serving_container(
    bench: ImageTestBench, image: str = SERVING.name, alias: str = "challenger"
) -> Iterator[str]:
    """model-serving as its Rollout runs it, on a free loopback port; yields its URL."""
    port = free_port()
    result = bench.docker_run(
        image, ["--host", "127.0.0.1", "--port", str(port)], vault_stage=image,
        env={"SERVING_MODEL_ALIAS": alias}, detach=True,
    )  # fmt: skip
    expect(result.returncode == 0, f"{image} did not start", result)
    container = result.stdout.strip()
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if _ready(url):
            return True
        state = bench.state(container)
        if not state["Running"]:
            raise ImageTestError(f"{image} exited {state['ExitCode']}:\n{bench.logs(container)}")
        return False

    try:
        try:
            wait_until(f"{image} to be ready", ready, 180, every=1)
        except WaitTimeout as error:
            raise ImageTestError(f"{error}:\n{bench.logs(container)}") from error
        yield url
    finally:
        bench.engine.docker("stop", "--time", "20", container, check=False)


def check_model_serving(
    bench: ImageTestBench, image: str, then: Callable[[str], str] | None = None
) -> str:
    with serving_container(bench, image) as url:
        ready = requests.get(f"{url}/readyz", timeout=5).json()
        version = requests.get(f"{url}/version", timeout=5).json()
        expect(
            version.get("model_name") == MODEL_NAME, f"/version names {version.get('model_name')}"
        )
        record = first_sample_record()
        response = requests.post(f"{url}/v1/score", json=record, timeout=10)
        expect(
            response.status_code == 200,
            f"/v1/score answered {response.status_code}: {response.text[:500]}",
        )
        [verdict] = response.json()["results"]
        scored = verdict["number"] == record["number"] and verdict["score"] is not None
        expect(scored, f"/v1/score gave no score for pull request {record['number']}: {verdict}")
        said = f"serves version {ready['model_version']}; "
        said += f"scored #{record['number']}: {verdict['score']:.3f}"
        if then:
            said += "; " + then(url)
        return said


def check_load_gate(bench: ImageTestBench, url: str) -> str:
    result = bench.docker_run(
        GATE, ["--host", url, *CI_GATE_ARGS, "--report-dir", f"/tmp/{GATE}"], timeout=300
    )
    expect(result.returncode == 0, f"the load gate failed (exit {result.returncode})", result)
    passed = "load gate passed: " + result.stdout.strip().splitlines()[-1][:160]
    # the image's second program, as the analysis template runs it (the container's command)
    quality = bench.docker_run(
        GATE, ["--host", url, "--report-dir", f"/tmp/{QUALITY_GATE}"],
        entrypoint=QUALITY_GATE, timeout=120,
    )  # fmt: skip
    expect(quality.returncode == 0, f"the quality gate failed (exit {quality.returncode})", quality)
    return passed + "; " + quality.stdout.strip().splitlines()[-1][:160]


# What each stage's image is run for beyond `help` and `config-error`: every stage of
# pipeline_ops.stages has its entry (tests/pipeline_ops/images/test_checks.py holds it to it).
STAGE_CHECKS: dict[str, tuple[tuple[str, Callable[[ImageTestBench, str], str]], ...]] = {
    stages.stage("data-fetch").name: (("runs", check_data_fetch),),
    stages.stage("spark-preprocess").name: (
        ("runs", check_spark_preprocess),
        ("kubernetes", check_spark_kubernetes_shape),
    ),
    stages.stage("ml-training").name: (("runs", check_ml_training),),
    stages.stage("model-serving").name: (("runs", check_model_serving),),
}


# -- in pipeline order ------------------------------------------------------------------------


def _host_stage(bench: ImageTestBench, stage: str) -> None:
    """Produce a stage's output with the host's own command (a stage tested alone)."""
    from pipeline_ops.runner import run_stage_process

    cli = Path(sys.executable).parent / stages.stage(stage).cli
    run_stage_process(bench.env, stage, [str(cli)])


def stage_checks(bench: ImageTestBench, selected: list[str]) -> Iterator[tuple[str, str, Check]]:
    """(image, check name, check) in pipeline order; upstream outputs come from the images
    under test when they are among ``selected``, else from the host's stage commands."""
    done: set[str] = set()

    def ensure(stage: str) -> None:
        if stage in done:
            return
        if stage in UPSTREAM:
            ensure(UPSTREAM[stage])
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

    for image in [i.name for i in stages.IMAGES if i.name in selected]:
        yield image, "help", partial(check_help, bench, image)
        yield image, "config-error", partial(check_config_error, bench, image)
        if image in STAGE_CHECKS:
            if image in UPSTREAM:
                yield image, "inputs", partial(ensure_inputs, UPSTREAM[image])
            for name, check in STAGE_CHECKS[image]:
                run = partial(check, bench, image)
                if check is check_model_serving and GATE in selected:  # then the gate on it
                    run = partial(
                        check_model_serving, bench, image, partial(check_load_gate, bench)
                    )
                yield image, name, run
            done.add(image)
        elif image == GATE and SERVING.name not in selected:
            yield image, "runs", partial(_gate_against_host_serving, bench, ensure)


def _gate_against_host_serving(bench: ImageTestBench, ensure: Callable[[str], None]) -> str:
    """The gate against the host's own model-serving (the gate's image tested alone)."""
    from pipeline_ops.runner import stage_process_env

    ensure(UPSTREAM[SERVING.name])
    port = free_port()
    env = {**stage_process_env(bench.env, SERVING.name), "SERVING_MODEL_ALIAS": "challenger"}
    serving = Path(sys.executable).parent / SERVING.cli
    server = processes.start(
        SERVING.name, [serving, "--host", "127.0.0.1", "--port", str(port)],
        log_file=bench.work_dir / f"{SERVING.name}.log", env=env, ports={"main": port},
    )  # fmt: skip
    try:
        processes.wait_healthy(server, lambda: _ready(server.url), 120, what="ready", every=1)
        return check_load_gate(bench, server.url)
    finally:
        processes.stop(server)
