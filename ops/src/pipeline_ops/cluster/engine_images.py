"""Images for the cluster's add-ons that need more than one static binary, built by the
project's Docker engine on a local Debian base (debootstrap, pipeline_ops.images.bases) and
pushed to the cluster's registry, so the add-ons run by digest like everything else.

| image | for | holds |
|---|---|---|
| argocd | Argo CD's server, repo-server, controller | argocd, kustomize, git, user 999 |
| argocd-redis | Argo CD's cache | Debian's redis-server |

The repo-server renders kustomizations with the ``kustomize`` on its PATH (upstream's image
bundles one), so the image carries it. Built once per recipe (the tag is a hash of the
base, the binaries' versions and the Dockerfile); a rebuild is only a push when the registry
lost it.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline_ops.cluster.layout import Layout, binary
from pipeline_ops.cluster.registry import push_local
from pipeline_ops.images.bases import BaseRecipe, ensure_base
from pipeline_ops.images.engine import ContainerEngine

log = logging.getLogger(__name__)

ADDONS_BASE = BaseRecipe("cluster-addons", ("git", "redis-server", "ca-certificates", "tini"))


@dataclass(frozen=True)
class AddonImage:
    name: str
    dockerfile: str  # FROM {base}; the build context holds the binaries named below
    binaries: tuple[str, ...] = ()

    def tag(self, base: str) -> str:
        versions = [binary(b).name for b in self.binaries]
        recipe = repr((base, versions, self.dockerfile)).encode()
        return f"pr-anomaly.local/{self.name}:{hashlib.sha256(recipe).hexdigest()[:12]}"


ARGOCD_COMMANDS = (
    "argocd-server", "argocd-repo-server", "argocd-application-controller",
    "argocd-applicationset-controller", "argocd-notifications", "argocd-cmp-server",
    "argocd-dex", "argocd-commit-server", "argocd-k8s-auth", "argocd-git-ask-pass",
)  # fmt: skip
ARGOCD = AddonImage(
    "argocd",
    "FROM {base}\n"
    "COPY argocd /usr/local/bin/argocd\n"
    "COPY kustomize /usr/local/bin/kustomize\n"
    "RUN echo 'argocd:x:999:999::/home/argocd:/bin/sh' >> /etc/passwd"
    " && echo 'argocd:x:999:' >> /etc/group && mkdir -p /home/argocd && chown 999:999 /home/argocd"
    + "".join(f" && ln -s argocd /usr/local/bin/{c}" for c in ARGOCD_COMMANDS)
    + "\nENV HOME=/home/argocd\nUSER 999\nWORKDIR /home/argocd\n"
    'ENTRYPOINT ["/usr/bin/tini", "--"]\n',
    ("argocd", "kustomize"),
)
REDIS = AddonImage(
    "argocd-redis",
    'FROM {base}\nUSER 999\nENTRYPOINT ["/usr/bin/redis-server"]\n',
)


def ensure_pushed(layout: Layout, image: AddonImage, engine: ContainerEngine) -> str:
    """The image (on the add-ons' Debian base) in the cluster's registry, built first if the
    engine lacks it: its reference by digest."""
    base = ensure_base(engine, ADDONS_BASE)
    return ensure_pushed_on(layout, image, base, engine, key=base)  # a recipe's hash


def ensure_pushed_on(layout: Layout, image: AddonImage, base: str, engine: ContainerEngine,
                     key: str | None = None) -> str:  # fmt: skip
    """The image built ``FROM base`` (an image the engine has), pushed: its reference. Its tag
    hashes ``key`` (default: the base's image id, so a rebuilt base makes a new image)."""
    if key is None:
        said = engine.docker("image", "inspect", "--format", "{{.Id}}", base,
                             what=f"the id of the {image.name} image's base")  # fmt: skip
        key = said.stdout.strip()
    tag = image.tag(key)
    if engine.docker("image", "inspect", tag, check=False).returncode != 0:
        _build(engine, image, base, tag)
    return push_local(layout, engine, tag, image.name)


def _build(engine: ContainerEngine, image: AddonImage, base: str, tag: str) -> None:
    log.info("building the %s image on %s", image.name, base)
    with tempfile.TemporaryDirectory(prefix=f"{image.name}-image-") as tmp:
        context = Path(tmp)
        for name in image.binaries:
            shutil.copy2(binary(name), context / name)
        (context / "Dockerfile").write_text(image.dockerfile.format(base=base))
        engine.docker("build", "--quiet", "-t", tag, str(context),
                      what=f"build of the {image.name} image")  # fmt: skip
