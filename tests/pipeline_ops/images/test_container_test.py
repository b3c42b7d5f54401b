"""Every image run as its manifest runs it, against the real local platform, in pipeline
order: each stage's container consumes what the previous stage's container produced. The
same checks are what the stage workflows run on the image they just built."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pytest

from pipeline_ops import stages
from pipeline_ops.images import checks
from pipeline_ops.images.bench import ImageTestBench, ImageTestError
from pipeline_ops.images.build import BuiltImage
from pipeline_ops.images.engine import ContainerEngine
from pipeline_ops.images.policy import manifest_policy

pytestmark = pytest.mark.images


@pytest.mark.parametrize("image", stages.IMAGE_NAMES)
def test_every_image_answers_help_and_refuses_to_start_without_configuration(
    bench: ImageTestBench, image: str
) -> None:
    checks.check_help(bench, image)
    checks.check_config_error(bench, image)


def test_data_fetch_replays_the_sample_into_mongodb_from_the_container(bench) -> None:
    said = checks.check_data_fetch(bench, "data-fetch")
    assert f"{checks.sample_count()} pull requests in MongoDB" in said


def test_spark_preprocess_publishes_features_from_the_container(bench) -> None:
    checks.check_spark_preprocess(bench, "spark-preprocess")
    assert list((bench.data_dir / "features").rglob("*.parquet"))


def test_spark_preprocess_runs_as_the_operator_runs_it_driver_and_two_executors(bench) -> None:
    """Executors with a read-only root: they used to copy `spark.jars` into their working
    directory (/app, read-only), so every task failed."""
    said = checks.check_spark_kubernetes_shape(bench, "spark-preprocess", executors=2)
    assert "driver + 2 executors" in said


def test_ml_training_registers_a_challenger_from_the_container(bench) -> None:
    checks.check_ml_training(bench, "ml-training")


def test_model_serving_serves_the_challenger_and_passes_the_load_gate_image(bench) -> None:
    said = checks.check_model_serving(
        bench, "model-serving", lambda url: checks.check_load_gate(bench, url)
    )
    assert "load gate passed" in said


# -- the checks catch broken images ----------------------------------------------------------


def _variant(engine: ContainerEngine, base: BuiltImage, name: str, lines: list[str]) -> str:
    """A deliberately broken image derived from a built one."""
    tag = f"{base.name}-broken:{name}"
    with tempfile.TemporaryDirectory() as context:
        Path(context, "Dockerfile").write_text("\n".join([f"FROM {base.reference}", *lines]) + "\n")
        engine.docker("build", "--quiet", "-t", tag, context)
    return tag


@pytest.fixture
def broken(engine, built, bench):
    """Run checks against a broken variant under the good image's name (same manifest)."""
    originals = dict(bench.images)

    def use(image: str, name: str, lines: list[str]) -> None:
        bench.images[image] = _variant(engine, built[image], name, lines)

    yield use
    bench.images.clear()
    bench.images.update(originals)


def test_an_image_that_writes_into_its_read_only_root_fails(broken, bench) -> None:
    broken(
        "data-fetch",
        "writes-root",
        ['ENTRYPOINT ["sh", "-c", "touch /app/started && exec data-fetch \\"$@\\"", "--"]'],
    )
    with pytest.raises(ImageTestError, match="--help exited"):
        checks.check_help(bench, "data-fetch")


def test_an_image_missing_a_copied_package_fails(broken, bench) -> None:
    broken(
        "model-serving",
        "no-package",
        [
            "USER root",
            "RUN rm -rf /opt/venv/lib/python3.11/site-packages/model_serving",
            "USER 10001",
        ],
    )
    with pytest.raises(ImageTestError, match="--help exited"):
        checks.check_help(bench, "model-serving")


def test_an_image_whose_user_is_root_fails(broken, bench) -> None:
    broken("load-gate", "root-user", ["USER root"])
    with pytest.raises(ImageTestError, match="runs as 'root'"):
        checks.check_help(bench, "load-gate")


# -- how the manifests run the images ---------------------------------------------------------


def test_each_image_runs_with_its_manifests_security_context_and_limits() -> None:
    for image in stages.IMAGE_NAMES:
        policy = manifest_policy(image)
        assert (policy.user, policy.group) == (10001, 10001), image
        assert policy.read_only, image
        assert policy.writable == ["/tmp"], image
        assert policy.drop_all_capabilities, image
        assert policy.no_privilege_escalation, image
    serving = manifest_policy("model-serving")
    assert (serving.cpus, serving.memory_mb) == ("1", 1024)  # the Rollout: Guaranteed, 1 CPU, 1Gi
    executor = manifest_policy("spark-preprocess", "executor")
    assert executor.memory_mb == 2048 + int(2048 * 0.4)


def test_the_container_policy_is_what_docker_enforces(engine, built) -> None:
    """The flags really bind: the root is read-only, /tmp is not, the user is 10001 and
    holds no capability."""
    policy = manifest_policy("load-gate")
    with tempfile.TemporaryDirectory() as tmp:
        volume = Path(tmp)
        subprocess.run(["chown", "10001:10001", str(volume)], check=True)
        script = (
            "id -u; touch /tmp/ok && echo tmp-writable; "
            "touch /opt/venv/x 2>/dev/null || echo root-read-only; grep CapEff /proc/self/status"
        )
        result = engine.docker(
            "run",
            "--rm",
            *policy.docker_args(),
            "-v",
            f"{volume}:/tmp",
            "--entrypoint",
            "sh",
            built["load-gate"].reference,
            "-c",
            script,
        )
    lines = result.stdout.split()
    assert lines[:3] == ["10001", "tmp-writable", "root-read-only"]
    assert result.stdout.strip().endswith("0000000000000000")
