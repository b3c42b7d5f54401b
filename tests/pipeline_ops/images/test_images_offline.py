"""The image tooling's logic without an engine: the docker commands go to a fake runner
(``base.commands.using``). What `make images` does after its builds (keep each install
stage as the layer cache, then prune what is dangling, and say what was freed), how an
error reads, and that the image checks follow the stage list."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from pipeline_ops import stages
from pipeline_ops.base import commands
from pipeline_ops.base.errors import OpsError
from pipeline_ops.images import build, checks
from pipeline_ops.images.__main__ import main
from pipeline_ops.images.engine import EngineError, SystemEngine

# The legacy builder's output, as data-fetch's build prints it (ids shortened to 12 hex).
LEGACY_BUILD = """\
Sending build context to Docker daemon  6.2MB
Step 1/21 : ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
Step 2/21 : ARG PYTHON_BUILD_IMAGE=${PYTHON_IMAGE}
Step 3/21 : FROM ${PYTHON_BUILD_IMAGE} AS dependencies
 ---> 7e91e7188b92
Step 4/21 : ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
 ---> Running in 54ec1f5867e5
Removing intermediate container 54ec1f5867e5
 ---> 0077a7b161e3
Step 6/21 : RUN python -m venv /opt/venv && /opt/venv/bin/pip install -r /tmp/requirements.txt
 ---> Using cache
 ---> ce353d58ed32
Step 7/21 : FROM ${PYTHON_BUILD_IMAGE} AS wheels
 ---> 7e91e7188b92
Step 11/21 : RUN python -m venv /opt/build && /opt/build/bin/pip wheel /src/data-fetch
 ---> Running in 913ba948553b
 ---> e098b1fed6cf
Step 12/21 : FROM ${PYTHON_IMAGE}
 ---> c22c68cdf6f9
Step 14/21 : COPY --from=dependencies /opt/venv /opt/venv
 ---> 530b1781d95f
Successfully built 530b1781d95f
Successfully tagged data-fetch:abc-dirty
"""
PRUNED = """\
Deleted Images:
deleted: sha256:1111
deleted: sha256:2222

Total reclaimed space: 1.234GB
"""


class Engine(commands.CommandRunner):
    """A docker client and git that answer as after a successful build."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def run(self, argv, **kwargs):
        words = [str(a) for a in argv]
        self.calls.append(words)
        out = ""
        if words[1:3] == ["image", "inspect"]:
            out = json.dumps([{"Id": "sha256:abc", "Size": 200_000_000,
                               "RootFS": {"Layers": ["a"] * 5}}])  # fmt: skip
        elif words[1:2] == ["build"] and "--quiet" not in words:
            out = LEGACY_BUILD
        elif words[1:3] == ["image", "prune"]:
            out = PRUNED
        elif words[1:3] == ["builder", "prune"]:
            out = "Total reclaimed space: 0B\n"
        elif words[:1] == ["git"] or words[1:2] == ["git"]:
            out = "abc\n" if "rev-parse" in words else ""
        return subprocess.CompletedProcess(words, 0, stdout=out, stderr="")


def _docker(call: list[str]) -> list[str]:
    return call[1:] if Path(call[0]).name == "docker" else []


@pytest.fixture
def build_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(build, "BUILD_DIR", tmp_path)
    return tmp_path


def test_the_install_stages_are_read_from_the_legacy_builders_output() -> None:
    assert build.stage_results(LEGACY_BUILD) == {
        "dependencies": "ce353d58ed32",
        "wheels": "e098b1fed6cf",
    }


def test_make_images_keeps_the_layer_cache_then_prunes_what_is_dangling(
    build_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    with commands.using(Engine()) as fake:
        built = build.build_images(SystemEngine(), ["data-fetch", "load-gate"])
    docker = [_docker(c) for c in fake.calls if _docker(c)]
    builds = [i for i, c in enumerate(docker) if c[0] == "build" and "--quiet" not in c]
    tags = [i for i, c in enumerate(docker) if c[0] == "tag"]
    prune = docker.index(["image", "prune", "--force"])
    assert [b.name for b in built] == ["data-fetch", "load-gate"]  # the stage list's order
    assert len(builds) == 2
    assert max(builds) < prune
    assert max(tags) < prune, "the install stages are tagged before anything is pruned"
    assert docker[tags[0]] == ["tag", "ce353d58ed32", "pr-anomaly-cache/data-fetch:dependencies"]
    assert docker[tags[1]] == ["tag", "e098b1fed6cf", "pr-anomaly-cache/data-fetch:wheels"]
    assert docker[-1] == ["builder", "prune", "--force"]
    assert "pruned 2 dangling image(s) of earlier builds: 1.234GB + 0B freed" in caplog.text
    assert (build_dir / "data-fetch.build.log").read_text() == LEGACY_BUILD
    assert json.loads((build_dir / "built.json").read_text()).keys() == {"data-fetch", "load-gate"}


def test_a_failed_build_names_the_image_and_shows_the_end_of_its_log_without_the_index(
    build_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = "https://user:token@index.invalid/simple"
    monkeypatch.setattr(build, "host_pip_settings", lambda: {"index-url": index, "timeout": "60"})

    class Failing(Engine):
        def run(self, argv, **kwargs):
            result = super().run(argv, **kwargs)
            if _docker(result.args)[:1] == ["build"]:
                said = f"Looking in indexes: {index}\nreturned a non-zero code: 1 after 60 s"
                return subprocess.CompletedProcess(result.args, 1, "Step 6/21 : RUN pip", said)
            return result

    with commands.using(Failing()) as fake, pytest.raises(EngineError) as error:
        build.build_images(SystemEngine(), ["load-gate"])
    message = str(error.value)
    assert message.startswith("building load-gate (model-serving/Dockerfile.load-gate) failed")
    assert message.endswith("returned a non-zero code: 1 after 60 s")
    assert index not in message
    assert "Looking in indexes: ***" in message
    assert not any(_docker(c)[:2] == ["image", "prune"] for c in fake.calls)


def test_an_unknown_image_is_refused_with_the_names_of_the_list(build_dir: Path) -> None:
    with commands.using(Engine()), pytest.raises(EngineError, match="choose from data-fetch, "):
        build.build_images(SystemEngine(), ["data-fetch", "web"])


def test_engine_errors_are_ops_errors_and_the_command_line_says_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert issubclass(EngineError, OpsError)
    assert main(["test", "no-such-image"]) == 1
    said = capsys.readouterr().err
    assert said.startswith("error: unknown image no-such-image; choose from data-fetch")


def test_an_engine_that_does_not_answer_is_named() -> None:
    class Silent(commands.CommandRunner):
        def run(self, argv, **kwargs):
            return subprocess.CompletedProcess(argv, 1, stdout="", stderr="Cannot connect")

    with commands.using(Silent()), pytest.raises(EngineError, match="no docker engine answers"):
        SystemEngine().up()


# -- the image checks follow the stage list ------------------------------------------------------


def test_every_stage_has_its_checks_and_nothing_else_does() -> None:
    assert list(checks.STAGE_CHECKS) == list(stages.STAGE_NAMES)


def test_all_images_are_checked_in_pipeline_order_each_on_the_previous_ones_output() -> None:
    planned = [
        (image, name) for image, name, _ in checks.stage_checks(None, list(stages.IMAGE_NAMES))
    ]  # type: ignore[arg-type]
    assert [image for image, _ in planned] == sorted(
        (image for image, _ in planned), key=list(stages.IMAGE_NAMES).index
    )
    assert planned[:3] == [("data-fetch", "help"), ("data-fetch", "config-error"),
                           ("data-fetch", "runs")]  # fmt: skip
    assert ("spark-preprocess", "inputs") in planned  # from the data-fetch image, then
    assert [n for i, n in planned if i == stages.LOAD_GATE.name] == ["help", "config-error"]


def test_a_stage_tested_alone_gets_its_inputs_from_the_host() -> None:
    planned = [(image, name) for image, name, _ in checks.stage_checks(None, ["ml-training"])]  # type: ignore[arg-type]
    assert planned == [("ml-training", "help"), ("ml-training", "config-error"),
                       ("ml-training", "inputs"), ("ml-training", "runs")]  # fmt: skip
    gate = [(i, n) for i, n, _ in checks.stage_checks(None, [stages.LOAD_GATE.name])]  # type: ignore[arg-type]
    assert gate[-1] == (stages.LOAD_GATE.name, "runs")  # against the host's model-serving


# -- a base's root streamed into the engine -----------------------------------------------------


@pytest.fixture
def docker_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in docker client on PATH that records its arguments and what it was sent."""
    bin_dir, seen = tmp_path / "bin", tmp_path / "seen"
    bin_dir.mkdir()
    client = bin_dir / "docker"
    client.write_text(f'#!/bin/sh\necho "$@" > {seen}.args\ncat > {seen}.tar\n')
    client.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return seen


def test_a_bases_root_is_streamed_into_docker_import(docker_client: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "os-release").write_text("bookworm\n")
    SystemEngine().import_tree(root, "base:tag", ["--change", 'CMD ["python3"]'], what="import")
    assert Path(f"{docker_client}.args").read_text().split() == [
        "import", "--change", "CMD", '["python3"]', "-", "base:tag",
    ]  # fmt: skip
    with tarfile.open(f"{docker_client}.tar") as sent:
        assert "./etc/os-release" in sent.getnames()


def test_a_root_that_cannot_be_read_fails_the_import(docker_client: Path, tmp_path: Path) -> None:
    """Even though the client took what it was sent without complaint (pipefail)."""
    with pytest.raises(OpsError, match="import of base python: `bash -o pipefail"):
        SystemEngine().import_tree(tmp_path / "missing", "base:tag", [],
                                   what="import of base python")  # fmt: skip
