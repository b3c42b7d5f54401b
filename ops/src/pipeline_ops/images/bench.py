"""The bench the image tests run on: a fresh local platform (Vault seeded with each stage's
own identity, MongoDB, MLflow), the images under test, and how to run one as a container the
way its manifest runs it (pipeline_ops.images.policy). Only the Vault contract differs from a
pod: it points at the local Vault, with the stage's token mounted read-only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline_ops.base.commands import tail
from pipeline_ops.base.errors import CommandError
from pipeline_ops.images.engine import ContainerEngine
from pipeline_ops.images.policy import RunPolicy, manifest_policy
from pipeline_ops.local_env import LocalEnvironment
from pipeline_ops.local_platform import LocalPlatform
from pipeline_ops.paths import LOCAL_DIR

TOKEN_MOUNT = "/var/run/secrets/vault/token"


class ImageTestError(AssertionError):
    pass


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
        raise ImageTestError(f"no JSON summary in stdout:\n{tail(self.stdout)}")


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
            result = self.engine.docker(*command, check=False, timeout=timeout,
                                        what=f"{image} as a container")  # fmt: skip
        except CommandError as error:
            if error.returncode is None:  # it ran longer than its time
                raise ImageTestError(
                    f"{image} {' '.join(args)} ran longer than {timeout:.0f}s"
                ) from error
            raise
        return ContainerResult(result.returncode, result.stdout, result.stderr)

    def logs(self, name_or_id: str) -> str:
        result = self.engine.docker("logs", name_or_id, check=False)
        return tail(result.stdout + result.stderr, 3000)

    def state(self, container: str) -> dict[str, Any]:
        """The container's ``State`` (``Running``, ``ExitCode``, ``OOMKilled``)."""
        return dict(json.loads(self.engine.docker("inspect", container).stdout)[0]["State"])

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


def expect(condition: bool, message: str, result: ContainerResult | None = None) -> None:
    if not condition:
        detail = (
            f"\n--- stdout\n{tail(result.stdout)}\n--- stderr\n{tail(result.stderr)}"
            if result
            else ""
        )
        raise ImageTestError(message + detail)


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
