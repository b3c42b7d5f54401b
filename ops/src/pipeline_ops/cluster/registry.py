"""The cluster's registries as production uses them: `make images` builds, the project's
Docker engine pushes (``ops/scripts/push-image.sh``, as the workflows' push step does:
dockerd trusts loopback registries over plain HTTP), and manifests name each image by the
digest that push reported, which the kubelet's containerd (on the host's network, see
configs.containerd) pulls.

Two registries, as a managed cluster has: ``REGISTRY``, anonymous, for the add-ons' images
(the provider's), and ``PROJECT_REGISTRY`` for the project's five images, private as GHCR or
DigitalOcean's registry is: distribution with htpasswd, two logins made here once (``ci``
pushes, as the workflows' registry secret does; ``cluster`` pulls, the kubelet's credentials
from the namespaces' pull secret ``registry-pull``, which the administrator makes).

What was pushed is recorded in ``.local/cluster/pushed.json`` (name -> reference by digest),
kept across cluster runs like the registry's storage.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from pipeline_ops import stages
from pipeline_ops.base import commands
from pipeline_ops.cluster import ClusterError, configs
from pipeline_ops.cluster.layout import (
    ENVIRONMENT_NAMESPACES,
    PROJECT_REGISTRY,
    REGISTRY,
    Layout,
    binary,
)
from pipeline_ops.images.build import built_images
from pipeline_ops.images.engine import ContainerEngine, docker_client
from pipeline_ops.paths import PROJECT_ROOT

log = logging.getLogger(__name__)

PUSH_SCRIPT = PROJECT_ROOT / "ops" / "scripts" / "push-image.sh"
LOGINS = ("ci", "cluster")  # who logs in to the project's registry: pushes, pulls


def command(layout: Layout) -> list[str]:
    """The add-ons' registry (distribution, anonymous), as the cluster's component runs it."""
    return [str(binary("registry")), "serve", str(configs.registry(layout))]


def project_command(layout: Layout) -> list[str]:
    """The project's registry: distribution asking every request for a login."""
    config = configs.registry(layout, PROJECT_REGISTRY, htpasswd=_htpasswd(layout))
    return [str(binary("registry")), "serve", str(config)]


def login(layout: Layout, who: str) -> tuple[str, str]:
    """(username, password) of ``who`` (``LOGINS``) on the project's registry, made once
    (mode 0600, under the cluster's state: never in git, never printed)."""
    path = layout.dir("project-registry") / "logins.json"
    if not path.exists():
        path.touch(mode=0o600)
        made = {name: [f"pr-anomaly-{name}", secrets.token_urlsafe(24)] for name in LOGINS}
        path.write_text(json.dumps(made))
    username, password = json.loads(path.read_text())[who]
    return username, password


def _htpasswd(layout: Layout) -> Path:
    """The logins as distribution reads them (bcrypt, by Debian's htpasswd, the password on
    its stdin)."""
    path = layout.dir("project-registry") / "htpasswd"
    if not path.exists():
        lines = []
        for who in LOGINS:
            username, password = login(layout, who)
            made = commands.run(["htpasswd", "-niB", username], stdin=password,
                                what="the project registry's logins (htpasswd)",
                                secrets=(password,))  # fmt: skip
            lines.append(made.stdout.strip())
        path.touch(mode=0o600)
        path.write_text("\n".join(lines) + "\n")
    return path


def _docker_auths(layout: Layout, who: str) -> dict[str, Any]:
    username, password = login(layout, who)
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"auths": {PROJECT_REGISTRY: {"username": username, "password": password,
                                         "auth": token}}}  # fmt: skip


def pull_secrets(layout: Layout) -> list[dict[str, Any]]:
    """The pull secret ``registry-pull`` (the ``cluster`` login) in each environment's
    namespace, as the administrator of a real cluster makes it (README: Any OCI registry);
    every ServiceAccount of argo-apps/base names it."""
    config = json.dumps(_docker_auths(layout, "cluster")).encode()
    return [
        {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
         "metadata": {"name": stages.REGISTRY_PULL_SECRET, "namespace": namespace},
         "data": {".dockerconfigjson": base64.b64encode(config).decode()}}
        for namespace in ENVIRONMENT_NAMESPACES
    ]  # fmt: skip


def apply_pull_secrets(layout: Layout) -> None:
    layout.kubectl().apply(pull_secrets(layout), force_conflicts=False)


def _pushed_file(layout: Layout):
    return layout.root / "pushed.json"


def pushed(layout: Layout) -> dict[str, str]:
    """name (and local NAME:TAG) -> reference by digest, of what was pushed."""
    path = _pushed_file(layout)
    return json.loads(path.read_text()) if path.exists() else {}


def _local_reference(engine: ContainerEngine, name: str) -> str:
    """The image `make images` built last (``NAME:<commit>``), else ``NAME:local``; or the
    reference given (``NAME:TAG``)."""
    if ":" in name:
        candidates = [name]
    else:
        built = built_images().get(name)
        candidates = [built.reference] if built else []
        candidates.append(f"{name}:local")
    for reference in candidates:
        if engine.docker("image", "inspect", reference, check=False).returncode == 0:
            return reference
    raise ClusterError(
        f"push: no image {' or '.join(candidates)} in the project's engine; "
        f"build it with `make images` (names: {', '.join(stages.IMAGE_NAMES)})"
    )


@contextlib.contextmanager
def build_engine() -> Iterator[ContainerEngine]:
    """The project's Docker engine for a build: started if needed, and then stopped again if
    it was not running before (a cold `cluster-up` leaves the host's engine as it found it)."""
    engine = ContainerEngine()
    started_here = engine.running() is None
    try:
        engine.up()
        yield engine
    finally:
        if started_here:
            engine.down()
            log.info("stopped the Docker engine this build started")


def push(layout: Layout, names: list[str] | None = None, engine: ContainerEngine | None = None
         ) -> dict[str, str]:  # fmt: skip
    """Push the project's images from the engine into its registry, as the workflows do
    (the ``ci`` login); name -> reference by digest."""
    try:
        # it answers 401 to anyone not logged in: answering at all is what counts here
        requests.get(f"http://{PROJECT_REGISTRY}/v2/", timeout=5)
    except requests.RequestException as error:
        raise ClusterError(
            f"push: the project's registry does not answer on {PROJECT_REGISTRY} ({error}); "
            "start the cluster with `make cluster-up`"
        ) from error
    if engine is None:
        with build_engine() as own:
            return push(layout, names, own)
    return {
        name.split(":")[0]: push_local(
            layout, engine, _local_reference(engine, name), name.split(":")[0],
            registry=PROJECT_REGISTRY,
        )
        for name in names or list(stages.IMAGE_NAMES)
    }  # fmt: skip


def push_local(layout: Layout, engine: ContainerEngine, local: str, repository: str,
               registry: str = REGISTRY) -> str:  # fmt: skip
    """The engine's image ``local`` pushed as ``registry/repository`` by the workflows'
    script (``push-image.sh``; the project's registry with the ``ci`` login); its reference
    by digest, recorded in pushed.json."""
    target = f"{registry}/{repository}:{local.rsplit(':', 1)[1]}"
    log.info("pushing %s to %s", local, target)
    with tempfile.TemporaryDirectory(prefix="docker-config-") as config:
        env = {**os.environ, **engine.env(), "DOCKER": docker_client(), "DOCKER_CONFIG": config}
        if registry == PROJECT_REGISTRY:  # what `docker login` writes
            auths = Path(config) / "config.json"
            auths.touch(mode=0o600)
            auths.write_text(json.dumps(_docker_auths(layout, "ci")))
        result = commands.run([str(PUSH_SCRIPT), local, target], env=env,
                              what=f"push {target} (push-image.sh)")  # fmt: skip
    reference = result.stdout.strip().splitlines()[-1]
    # by name (the latest push) and by the local reference (what exactly was pushed)
    record = {**pushed(layout), repository: reference, local: reference}
    layout.root.mkdir(parents=True, exist_ok=True)
    _pushed_file(layout).write_text(json.dumps(record, indent=2))
    return reference


def in_registry(reference: str) -> bool:
    """Whether the registry of ``reference`` (``HOST:PORT/NAME@sha256:…``) serves it."""
    registry, rest = reference.split("/", 1)
    repository, digest = rest.split("@")
    try:
        response = requests.head(
            f"http://{registry}/v2/{repository}/manifests/{digest}",
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
            timeout=5,
        )
    except requests.RequestException:
        return False
    return response.status_code == 200
