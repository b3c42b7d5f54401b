"""The pipeline's stages, listed once, in the order the pipeline runs them.

Everything in ops that needs the list reads it here: the images and their Dockerfiles, the
offline checks, the Vault layout, ``make run``, the cluster run, the container tests and the
report. ``tests/pipeline_ops/test_stages.py`` fails when a stage's name turns up somewhere
this list does not know, and when an entry lacks one of its parts. A new stage is one entry
here plus its own project, Dockerfile, workflow and manifests, and the registrations every
project and manifest needs: its image and manifest in ``argo-apps/base/kustomization.yaml``,
its project in the Makefile's ``PACKAGES`` and in ``pyproject.toml``'s import layers.
Its Vault role, policy and local secret follow from the entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# What a stage's Vault secret holds, by the servers it talks to; ops spells out the keys
# (pipeline_ops.local_env.stage_secrets) and fills in the addresses.
SecretPart = Literal["mongo", "features", "mlflow", "github-token", "git-write"]


@dataclass(frozen=True)
class Image:
    name: str  # the image's repository name, as the workflows push it
    dockerfile: str  # from the repository root
    cli: str  # the console script the image runs (its ENTRYPOINT)
    # other console scripts of the image that a manifest runs as the container's command
    # (its pods labelled with the script's name)
    programs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stage:
    name: str  # the stage everywhere: its image, workflow, Vault role and policy, its
    # Kubernetes objects and service account, its secret's path
    package: str  # the Python package of its code
    directory: str  # the installable project it lives in
    image: Image
    reads: str
    publishes: str
    secret: tuple[SecretPart, ...]  # what its Vault secret holds

    @property
    def cli(self) -> str:
        return self.image.cli

    @property
    def vault_role(self) -> str:
        return self.name

    @property
    def service_account(self) -> str:
        return self.name

    @property
    def workflow(self) -> str:
        """Its workflow, from the repository root: it builds, tests, pushes and pins the image."""
        return f".github/workflows/{self.name}.yml"


def _image(
    name: str, dockerfile: str, cli: str | None = None, programs: tuple[str, ...] = ()
) -> Image:
    return Image(name, dockerfile, cli or name, programs)


STAGES: tuple[Stage, ...] = (
    Stage(
        "data-fetch", "data_fetch", "data-fetch", _image("data-fetch", "data-fetch/Dockerfile"),
        reads="GitHub's API (or the bundled sample)", publishes="MongoDB: pull_requests",
        secret=("mongo", "github-token"),
    ),
    Stage(
        "spark-preprocess", "ml_pipeline.preprocess", "ml-pipeline",
        # the image's entrypoint is Spark's own (driver or executor), which then runs the CLI
        _image("spark-preprocess", "ml-pipeline/Dockerfile.preprocess"),
        reads="MongoDB: pull_requests", publishes="object storage: versioned feature Parquet",
        secret=("mongo", "features"),
    ),
    Stage(
        "ml-training", "ml_pipeline.training", "ml-pipeline",
        _image("ml-training", "ml-pipeline/Dockerfile.training"),
        reads="object storage: features", publishes="MLflow: a run, and the challenger model",
        secret=("mlflow", "features"),
    ),
    Stage(
        "model-serving", "model_serving", "model-serving",
        _image("model-serving", "model-serving/Dockerfile"),
        reads="MLflow: the pinned model", publishes="HTTP: scores, /metrics",
        secret=("mlflow",),
    ),
)  # fmt: skip
# Not a stage: the gates the pre-promotion analysis runs against the preview Service, the
# Locust load gate (the entrypoint) and the quality gate (false alarms on real pull requests).
LOAD_GATE = _image("load-gate", "model-serving/Dockerfile.load-gate", programs=("quality-gate",))
QUALITY_GATE = LOAD_GATE.programs[0]
IMAGES: tuple[Image, ...] = (*(s.image for s in STAGES), LOAD_GATE)
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)
IMAGE_NAMES: tuple[str, ...] = tuple(i.name for i in IMAGES)


@dataclass(frozen=True)
class DeliveryJob:
    """Not a stage: a job of the delivery loop that a stage's image runs with a command of
    its own (its console script), as a CronJob and pods named as it. It logs in to Vault as
    the image's stage when that stage's secret is all it needs; with a ``secret`` of its
    own, as itself (a role, policy, secret and service account named as it), so that what
    only it may hold (a git credential) is read by nothing else."""

    name: str  # its console script, CronJob and pod label app.kubernetes.io/name
    image: str  # the stage image that carries it
    secret: tuple[SecretPart, ...] = ()  # its own Vault secret, if any

    @property
    def cli(self) -> str:
        return self.name

    @property
    def vault_role(self) -> str:
        return self.name if self.secret else stage(self.image).vault_role


DELIVERY_JOBS: tuple[DeliveryJob, ...] = (
    # staging's: a version training registered becomes a commit that pins it in git
    DeliveryJob("model-pin", "model-serving", secret=("mlflow", "git-write")),
    # production's: the registry alias `champion` follows what production serves
    DeliveryJob("model-champion", "model-serving"),
)
# Who logs in to Vault, each reading only its own secret: the stages, and the delivery jobs
# with a secret of their own.
VAULT_IDENTITIES: tuple[str, ...] = (
    *STAGE_NAMES, *(job.name for job in DELIVERY_JOBS if job.secret)
)  # fmt: skip
# How each of them finds Vault in a cluster: every workload reads one ConfigMap, generated
# from argo-apps/base/vault.env (VAULT_ADDR, VAULT_CACERT, VAULT_PATH_AUTH: the one place
# that says where Vault is), and mounts the CA that signed Vault's certificate from a
# ConfigMap the cluster's administrator makes once per namespace (README: Vault over TLS).
VAULT_CONFIG_MAP = "vault"
VAULT_CA_CONFIG_MAP = "vault-ca"
# The secret every ServiceAccount of argo-apps/base pulls the images with (a private
# registry's read login), made by the cluster's administrator in each namespace (README: Any
# OCI registry).
REGISTRY_PULL_SECRET = "registry-pull"
# The annotation that names the platform service a NetworkPolicy of argo-apps/base places
# (its `to` is where that service lives; README: NetworkPolicies).
PLATFORM_SERVICE_ANNOTATION = "pr-anomaly-mlops/platform-service"


def secret_parts(identity: str) -> tuple[SecretPart, ...]:
    """What the Vault secret of ``identity`` (a name of VAULT_IDENTITIES) holds."""
    jobs = {job.name: job for job in DELIVERY_JOBS if job.secret}
    return jobs[identity].secret if identity in jobs else stage(identity).secret


def service_account(identity: str) -> str:
    """The ServiceAccount ``identity`` logs in to Vault with."""
    return identity if identity not in STAGE_NAMES else stage(identity).service_account


def stage(name: str) -> Stage:
    for candidate in STAGES:
        if candidate.name == name:
            return candidate
    raise KeyError(f"no stage {name!r}; the stages are {', '.join(STAGE_NAMES)}")


def image(name: str) -> Image:
    for candidate in IMAGES:
        if candidate.name == name:
            return candidate
    raise KeyError(f"no image {name!r}; the images are {', '.join(IMAGE_NAMES)}")


def delivery_job(name: str) -> DeliveryJob:
    for candidate in DELIVERY_JOBS:
        if candidate.name == name:
            return candidate
    known = ", ".join(job.name for job in DELIVERY_JOBS)
    raise KeyError(f"no delivery job {name!r}; the delivery jobs are {known}")
