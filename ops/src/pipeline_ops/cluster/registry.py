"""The cluster's registry as production uses one: `make images` builds, the project's Docker
engine pushes (``docker push 127.0.0.1:5000/NAME:TAG``: dockerd trusts loopback registries
over plain HTTP), and manifests name the image by digest, ``127.0.0.1:5000/NAME@sha256:…``,
which the kubelet's containerd (on the host's network, see configs.containerd) pulls.

What was pushed is recorded in ``.local/cluster/pushed.json`` (name -> reference by digest),
kept across cluster runs like the registry's storage.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator

import requests

from pipeline_ops import stages
from pipeline_ops.base.commands import tail
from pipeline_ops.cluster import ClusterError, configs
from pipeline_ops.cluster.layout import REGISTRY, Layout, binary
from pipeline_ops.images.build import built_images
from pipeline_ops.images.engine import ContainerEngine

log = logging.getLogger(__name__)


def command(layout: Layout) -> list[str]:
    """The registry's server (distribution), as the cluster's component runs it."""
    return [str(binary("registry")), "serve", str(configs.registry(layout))]


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
    """Push images from the engine into the cluster's registry; name -> reference by digest."""
    try:
        requests.get(f"http://{REGISTRY}/v2/", timeout=5).raise_for_status()
    except requests.RequestException as error:
        raise ClusterError(
            f"push: the cluster's registry does not answer on {REGISTRY} ({error}); "
            "start the cluster with `make cluster-up`"
        ) from error
    if engine is None:
        with build_engine() as own:
            return push(layout, names, own)
    return {
        name.split(":")[0]: push_local(
            layout, engine, _local_reference(engine, name), name.split(":")[0]
        )
        for name in names or list(stages.IMAGE_NAMES)
    }


def push_local(layout: Layout, engine: ContainerEngine, local: str, repository: str) -> str:
    """``docker push`` of the engine's image ``local`` as ``REGISTRY/repository``; its
    reference by digest, recorded in pushed.json."""
    target = f"{REGISTRY}/{repository}:{local.rsplit(':', 1)[1]}"
    engine.docker("tag", local, target)
    log.info("pushing %s to %s", local, target)
    try:
        result = engine.docker("push", target)
    finally:
        engine.docker("image", "rm", target, check=False)  # the tag only; the image stays
    reference = _digest_reference(result.stdout, repository, target)
    # by name (the latest push) and by the local reference (what exactly was pushed)
    record = {**pushed(layout), repository: reference, local: reference}
    layout.root.mkdir(parents=True, exist_ok=True)
    _pushed_file(layout).write_text(json.dumps(record, indent=2))
    return reference


def _digest_reference(push_output: str, repository: str, target: str) -> str:
    """``docker push`` ends with ``TAG: digest: sha256:… size: N``: the manifest's digest,
    the one the registry serves (``RepoDigests`` may list an older push first)."""
    for line in reversed(push_output.splitlines()):
        words = line.split()
        if "digest:" in words:
            digest = words[words.index("digest:") + 1]
            if digest.startswith("sha256:"):
                return f"{REGISTRY}/{repository}@{digest}"
    raise ClusterError(f"docker push {target} printed no digest:\n{tail(push_output)}")


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
