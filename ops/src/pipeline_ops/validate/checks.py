"""The checks of `make validate`. Each returns a list of problems; an empty list is a pass."""

from __future__ import annotations

import json
import re
import shlex
import tempfile
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from pipeline_contracts.registry import ModelReference
from pipeline_ops.stages import (
    DELIVERY_JOBS,
    LOAD_GATE,
    PLATFORM_SERVICE_ANNOTATION,
    QUALITY_GATE,
    REGISTRY_PULL_SECRET,
    STAGE_NAMES,
    VAULT_CA_CONFIG_MAP,
    VAULT_CONFIG_MAP,
    VAULT_IDENTITIES,
    SecretPart,
    delivery_job,
    secret_parts,
    service_account,
    stage,
)
from pipeline_ops.validate import network
from pipeline_ops.validate.rules import DASHBOARD, dashboard_rule_file, write_rule_files
from pipeline_ops.validate.tree import (
    ACCESS,
    ARGOCD,
    BASE,
    SCHEMAS,
    STAGE_IMAGE_WORKFLOW,
    VAULT_WHERE,
    VAULT_WHO,
    WORKFLOWS,
    RepoTree,
    load_yaml,
    stage_image_calls,
    workflow_triggers,
)

Check = Callable[[RepoTree], list[str]]
KUBERNETES_VERSION = "1.34"
WORKLOAD_KINDS = {
    "CronJob",
    "Job",
    "Deployment",
    "Rollout",
    "SparkApplication",
    "ScheduledSparkApplication",
}
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# What every stage workflow reads besides its Dockerfiles and tests, and why.
STAGE_WORKFLOW_INPUTS = {
    ".github/workflows/stage-image.yml": "the reusable workflow it calls",
    "Makefile": "make setup and make lint",
    "requirements/dev.txt": "the lock make setup installs for lint and tests",
    ".dockerignore": "what the build context leaves out",
    "ops/src/pipeline_ops/images": "the image test",
}
# Pod Security admission: what our namespace enforces, warns about and audits.
POD_SECURITY_MODES = ("enforce", "warn", "audit")
RESTRICTED_VOLUME_TYPES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}  # fmt: skip
# GitHub-hosted runners (a job's `runs-on`) run steps as an unprivileged user with sudo.
HOSTED_RUNNERS = re.compile(r"(ubuntu|windows|macos)-")
# The Makefile's marker prerequisite of the targets that need root (see its `as-root`).
ROOT_MARKER = "as-root"
# The served model's pin in git (model-serving-model.env, generated into this ConfigMap) and
# the Rollout's copy of it that the pre-promotion analysis reads.
MODEL_CONFIG_MAP = f"{stage('model-serving').name}-model"
MODEL_ANNOTATION = "pr-anomaly-mlops/model"
# The one cancel-in-progress a stage workflow may have: a newer push to a pull request cancels
# its older run; a push to staging's run is never cancelled.
PULL_REQUESTS_ONLY = "${{ github.event_name == 'pull_request' }}"
# Never part of a change: caches and build output under a source folder.
GENERATED_PARTS = re.compile(r"__pycache__|.*\.egg-info|\.(pytest|ruff|mypy)_cache")


# ---- tools ---------------------------------------------------------------------------------


def kustomize_build(tree: RepoTree) -> list[str]:
    problems = []
    for folder in (BASE, ARGOCD, ACCESS):
        try:
            tree.build(folder)
        except ValueError as error:
            problems.append(f"kustomize build {folder} failed: {error}")
    return problems


def kubernetes_schemas(tree: RepoTree) -> list[str]:
    """Built-in kinds against the Kubernetes OpenAPI schemas (strict: unknown fields fail)."""
    import kubernetes_validate

    problems = []
    for obj in _all_objects(tree):
        if _is_custom(obj):
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            problems.append(f"{_name(obj)}: {error.message} at {'.'.join(map(str, error.path))}")
        except kubernetes_validate.utils.SchemaNotFoundError:
            problems.append(f"{_name(obj)}: no Kubernetes {KUBERNETES_VERSION} schema for it")
    return problems


def custom_resource_schemas(tree: RepoTree) -> list[str]:
    """Custom resources against the strict JSON Schema and the upstream CRD of their kind."""
    problems = []
    for obj in _all_objects(tree):
        if not _is_custom(obj):
            continue
        group, version = obj["apiVersion"].split("/")
        kind = obj["kind"]
        strict = tree.root / SCHEMAS / "jsonschema" / group / f"{kind.lower()}_{version}.json"
        if not strict.is_file():
            problems.append(f"{_name(obj)}: no schema {tree.rel(strict)}; copy it in")
            continue
        crd = _crd_schema(tree.root / SCHEMAS / "crds", group, kind, version)
        if crd is None:
            problems.append(f"{_name(obj)}: no CRD for {group}/{version} {kind} in {SCHEMAS}/crds")
            continue
        for source, schema in (
            (tree.rel(strict), json.loads(strict.read_text())),
            ("its CRD", crd),
        ):
            for error in jsonschema.Draft7Validator(schema).iter_errors(obj):
                where = ".".join(map(str, error.absolute_path)) or "(top)"
                problems.append(f"{_name(obj)}: {error.message} at {where} ({source})")
    return problems


def actionlint(tree: RepoTree) -> list[str]:
    files = [tree.rel(p) for p in tree.workflows()]
    result = tree.run(tree.tool("actionlint"), "-no-color", *files)
    return _tool_output("actionlint", result)


def zizmor(tree: RepoTree) -> list[str]:
    result = tree.run(
        tree.tool("zizmor"),
        "--offline",
        "--no-progress",
        "--format",
        "plain",
        "--config",
        ".github/zizmor.yml",
        str(WORKFLOWS),
    )
    return _tool_output("zizmor", result)


def hadolint(tree: RepoTree) -> list[str]:
    files = [tree.rel(p) for p in tree.dockerfiles()]
    result = tree.run(tree.tool("hadolint"), "--no-color", *files)
    return _tool_output("hadolint", result)


def yamllint(tree: RepoTree) -> list[str]:
    result = tree.run(
        tree.tool("yamllint"),
        "--strict",
        "--format",
        "parsable",
        "argo-apps/base",
        "argo-apps/argocd",
        str(ACCESS),
        str(WORKFLOWS),
    )
    return _tool_output("yamllint", result)


def promtool(tree: RepoTree) -> list[str]:
    """The PrometheusRules' groups as Prometheus loads them (syntax, PromQL, templates), and
    every query of the dashboard."""
    with tempfile.TemporaryDirectory(prefix="promtool-") as folder:
        files = write_rule_files(tree.base_objects, Path(folder))
        files.append(dashboard_rule_file(tree.root / DASHBOARD, Path(folder)))
        result = tree.run(tree.tool("promtool"), "check", "rules", *map(str, files))
    return _tool_output("promtool", result)


# ---- project rules -------------------------------------------------------------------------


def images_have_dockerfile_and_workflow(tree: RepoTree) -> list[str]:
    """Each `images:` entry is used, built from an existing Dockerfile by a stage workflow."""
    problems = []
    built: dict[str, str] = {}
    for path, workflow in tree.workflows().items():
        for call in stage_image_calls(workflow):
            built[str(call.get("image"))] = str(call.get("dockerfile"))
            dockerfile = tree.root / str(call.get("dockerfile"))
            if not dockerfile.is_file():
                problems.append(
                    f"{tree.rel(path)}: image {call.get('image')} names Dockerfile "
                    f"{call.get('dockerfile')}, which does not exist"
                )
    used = {c["image"] for c in _containers(tree.base_objects)}
    for entry in tree.kustomization.get("images") or []:
        name = entry["name"]
        if name not in built:
            problems.append(
                f"{BASE}/kustomization.yaml: image {name} is built by no workflow in "
                f"{WORKFLOWS} (a job calling stage-image.yml with image: {name})"
            )
        reference = _reference(entry)
        if not any(image == reference or image.startswith(reference) for image in used):
            problems.append(f"{BASE}/kustomization.yaml: image {name} is used by no manifest")
    known = [_reference(e) for e in tree.kustomization.get("images") or []]
    for image in sorted(used):
        if not any(image.startswith(reference) for reference in known):
            problems.append(
                f"image {image} is not in the images: list of {BASE}/kustomization.yaml"
            )
    return problems


def workflow_paths_exist(tree: RepoTree) -> list[str]:
    problems = []
    for path, workflow in tree.workflows().items():
        for event, spec in workflow_triggers(workflow).items():
            for pattern in (spec or {}).get("paths", []) if isinstance(spec, dict) else []:
                pattern = pattern.removeprefix("!")
                if not _matches_something(tree.root, pattern):
                    problems.append(
                        f"{tree.rel(path)}: {event} path filter {pattern!r} matches no file"
                    )
    return problems


def workflow_paths_cover_inputs(tree: RepoTree) -> list[str]:
    """A stage workflow's path filters cover every file it builds or tests from.

    Its Dockerfiles and every file they COPY from the build context (less `.dockerignore`),
    its `tests:` paths, and what every stage workflow reads (STAGE_WORKFLOW_INPUTS): a change
    to any of them must run the workflow, or the image of a pushed change is never rebuilt.
    """
    problems = []
    ignored = _dockerignore(tree.root)
    for path, workflow in tree.workflows().items():
        calls = stage_image_calls(workflow)
        if not calls:
            continue
        inputs: dict[str, tuple[str, bool]] = {tree.rel(path): ("the workflow", False)}
        inputs.update({name: (why, False) for name, why in STAGE_WORKFLOW_INPUTS.items()})
        for call in calls:
            dockerfile = str(call.get("dockerfile"))
            inputs.setdefault(dockerfile, (f"the Dockerfile of {call.get('image')}", False))
            for manifest in _manifests_running(tree, str(call.get("image"))):
                why = f"the manifest the image test runs {call.get('image')} as"
                inputs.setdefault(manifest, (why, False))
            if (tree.root / dockerfile).is_file():
                for source in _copy_sources(tree.root / dockerfile):
                    inputs.setdefault(source, (f"COPY source of {dockerfile}", True))
            for test in str(call.get("tests") or "").split():
                inputs.setdefault(test, (f"tests of {call.get('image')}", False))
                for folder in Path(test).parents:
                    if (tree.root / folder / "conftest.py").is_file():
                        fixtures = (folder / "conftest.py").as_posix()
                        inputs.setdefault(fixtures, (f"fixtures of {test}", False))
        for event, spec in workflow_triggers(workflow).items():
            filters = spec.get("paths") if isinstance(spec, dict) else None
            if event not in ("push", "pull_request") or filters is None:
                continue  # no path filter: it runs on every change
            for name, (why, copied) in inputs.items():
                files = _files_under(tree.root, name, ignored if copied else [])
                uncovered = next((f for f in files if not _filtered_in(f, filters)), None)
                if uncovered is not None:
                    problems.append(
                        f"{tree.rel(path)}: the {event} paths: filter does not cover {name} "
                        f"({why}): a change to {uncovered} would not run the workflow"
                    )
    return problems


def pins_rebuild_nothing(tree: RepoTree) -> list[str]:
    """No stage workflow runs on a pin: a commit that only pins an image (the `images:` list
    of kustomization.yaml) or a model (a configMapGenerator's env file) builds no image.

    Otherwise each bump commit rebuilds and re-pins every image, and a one-line model pin
    starts five builds and a second Rollout revision in the middle of an analysis. A stage
    workflow selects its own manifests by name instead of all of argo-apps/base.
    """
    pins = [(BASE / "kustomization.yaml").as_posix()]
    for generator in tree.kustomization.get("configMapGenerator") or []:
        pins += [(BASE / env).as_posix() for env in generator.get("envs") or []]
    problems = []
    for path, workflow in tree.workflows().items():
        if not stage_image_calls(workflow):
            continue
        for event, spec in workflow_triggers(workflow).items():
            if event not in ("push", "pull_request"):
                continue
            filters = spec.get("paths") if isinstance(spec, dict) else None
            if filters is None:
                problems.append(
                    f"{tree.rel(path)}: {event} has no paths: filter, so every pin commit "
                    "rebuilds and re-pins its images; list the stage's inputs"
                )
                continue
            for pin in pins:
                if _filtered_in(pin, filters):
                    problems.append(
                        f"{tree.rel(path)}: the {event} paths: filter selects {pin}, so every "
                        "pin commit rebuilds and re-pins its images; select the stage's own "
                        f"manifests ({BASE}/STAGE-*.yaml) instead"
                    )
    return problems


def hosted_runner_steps(tree: RepoTree) -> list[str]:
    """A job on a GitHub-hosted runner runs as the runner's own user: a step that runs a make
    target needing root (the Makefile's `as-root` ones: the engine, the cluster) or apt-get
    without sudo fails there, so every pull request would fail its required check."""
    root_targets = makefile_root_targets(tree.root / "Makefile")
    problems = []
    for path, workflow in tree.workflows().items():
        for name, job in (workflow.get("jobs") or {}).items():
            labels = job.get("runs-on")
            labels = [labels] if isinstance(labels, str) else list(labels or [])
            if not any(HOSTED_RUNNERS.match(str(label)) for label in labels):
                continue
            for step in job.get("steps") or []:
                for command in _shell_commands(str(step.get("run") or "")):
                    if not command or command[0] == "sudo":
                        continue
                    where = f"{tree.rel(path)}: job {name}, step {step.get('name', command[0])!r}"
                    if "apt-get" in command:
                        problems.append(f"{where}: apt-get without sudo (the runner is no root)")
                    if "make" in command:
                        after = command[command.index("make") + 1 :]
                        needing = [t for t in after if t in root_targets]
                        if needing:
                            problems.append(
                                f"{where}: make {' '.join(needing)} needs root (the Makefile's "
                                f"{ROOT_MARKER}) and the runner's user is not: run it as "
                                '`sudo env "PATH=$PATH" make ...`, or run a target without root'
                            )
    return problems


def registry_is_a_setting(tree: RepoTree) -> list[str]:
    """Any OCI registry: a login step takes the registry's own password (a secret besides
    GITHUB_TOKEN, which only GHCR accepts), and the pushed digest is the one the push
    reports (ops/scripts/push-image.sh), never `RepoDigests`, which may name an older push."""
    problems = []
    for path, workflow in tree.workflows().items():
        for name, job in (workflow.get("jobs") or {}).items():
            for step in job.get("steps") or []:
                where = f"{tree.rel(path)}: job {name}, step {step.get('name', step.get('uses'))!r}"
                if "RepoDigests" in str(step.get("run") or ""):
                    problems.append(
                        f"{where}: reads the digest from RepoDigests, which may name an older "
                        "push; take the one the push reports (ops/scripts/push-image.sh)"
                    )
                if not str(step.get("uses") or "").startswith("docker/login-action@"):
                    continue
                password = str((step.get("with") or {}).get("password") or "")
                secrets = set(re.findall(r"secrets\.([\w-]+)", password)) - {"GITHUB_TOKEN"}
                if not secrets:
                    problems.append(
                        f"{where}: logs in with GITHUB_TOKEN alone, which only GHCR accepts; "
                        "take the registry's password from a secret (REGISTRY_PASSWORD)"
                    )
    return problems


# Which platform service each part of a Vault secret is for (stages.SecretPart).
SERVICE_OF_SECRET: dict[SecretPart, str] = {
    "mongo": "mongodb", "features": "object-storage", "mlflow": "mlflow",
    "github-token": "github", "git-write": "github",
}  # fmt: skip
_SPARK, _SERVING = stage("spark-preprocess").name, stage("model-serving").name
# What runs in the pipeline's namespace, each labelled app.kubernetes.io/name with its name.
WORKLOADS = (*STAGE_NAMES, *(job.name for job in DELIVERY_JOBS), LOAD_GATE.name, QUALITY_GATE)
# What no Vault secret says: the Spark driver asks the API for its executors.
API_CLIENTS = {_SPARK}
# Which workloads' pods listen, on which port (Spark's: its block manager, one of many).
LISTENS = {_SERVING: 8080, _SPARK: 7078}
# Who connects to whose pods: (from, to, port); the rest of the pairs must be refused.
POD_FLOWS = {
    *((client, _SERVING, 8080)
      for client in (LOAD_GATE.name, QUALITY_GATE, delivery_job("model-champion").name)),
    (_SPARK, _SPARK, 7078),  # driver <-> executors
    ("monitoring", _SERVING, 8080),  # Prometheus scrapes it
    ("argo-rollouts", _SERVING, 8080),  # the controller's web metrics
    ("ingress-nginx", _SERVING, 8080),  # users' traffic
}  # fmt: skip


def network_policy_reaches(tree: RepoTree) -> list[str]:
    """The NetworkPolicies let every workload of the base reach exactly what it needs, as an
    enforcing CNI evaluates them (validate.network): DNS; Vault and each service its Vault
    secret names (the secret says what it talks to); the API for the Spark driver; the pods
    POD_FLOWS lists. Everything else is refused: the other platform services (where the
    service's address and port are not also a needed one's: Spaces and GitHub share 443),
    every other workload's pods. Each service's placement is its own annotated policy."""
    return reach_problems([o for o in tree.base_objects if o["kind"] == "NetworkPolicy"])


def reach_problems(policies: list[dict[str, Any]]) -> list[str]:
    """``network-policies-right`` on one environment's NetworkPolicies (the base as shipped,
    or as an environment patches it: the local cluster's placement)."""
    if not policies:
        return []
    namespace = policies[0]["metadata"]["namespace"]
    placed = {
        p["metadata"]["annotations"][PLATFORM_SERVICE_ANNOTATION]: p
        for p in policies
        if PLATFORM_SERVICE_ANNOTATION in (p["metadata"].get("annotations") or {})
    }
    services = {name: network.probe(p["spec"]["egress"][0]) for name, p in placed.items()}
    problems = [
        f"no NetworkPolicy annotated {PLATFORM_SERVICE_ANNOTATION}: {name}; its `to` is where that "
        "service lives (README: NetworkPolicies)"
        for name in ["dns", "vault", *SERVICE_OF_SECRET.values(), "kubernetes-api"]
        if name not in services
    ]
    if problems:
        return sorted(set(problems))

    def pod(name: str) -> network.Pod:
        if name in WORKLOADS:
            return network.Pod(namespace, {"app.kubernetes.io/name": name})
        return network.Pod(name)  # a namespace of the platform's (monitoring, ...)

    for name in WORKLOADS:
        needs = workload_needs(name)
        for service, target in services.items():
            reaches = network.allowed(policies, pod(name), target)
            shared = any(target == services[other] for other in needs)
            if reaches != (service in needs) and not (reaches and shared):
                verb = "cannot reach" if service in needs else "may reach"
                problems.append(f"{name} {verb} {service} ({target})")
    platform_namespaces = sorted({source for source, _, _ in POD_FLOWS} - set(WORKLOADS))
    for source in [*WORKLOADS, *platform_namespaces]:
        for destination, port in LISTENS.items():
            target = network.Target(pod(destination), port)
            reaches = network.allowed(policies, pod(source), target)
            if reaches != ((source, destination, port) in POD_FLOWS):
                verb = "may connect to" if reaches else "cannot connect to"
                problems.append(f"{source} {verb} {destination}'s pods ({target})")
    return problems


def workload_needs(workload: str) -> set[str]:
    """The platform services ``workload`` (a name of WORKLOADS) needs: DNS; Vault and what
    its Vault secret is for, if it has one; the API for the Spark driver."""
    needs = {"dns", *(["kubernetes-api"] if workload in API_CLIENTS else [])}
    identity = {job.name: job.vault_role for job in DELIVERY_JOBS}.get(workload, workload)
    if identity in VAULT_IDENTITIES:
        needs |= {"vault", *(SERVICE_OF_SECRET[part] for part in secret_parts(identity))}
    return needs


def pod_security_restricted(tree: RepoTree) -> list[str]:
    """Our namespace enforces Pod Security's `restricted` profile, and every pod the base
    runs meets it, so the API server admits them all (it refuses a pod that does not meet
    it: `tests/pipeline_ops/cluster/test_pod_security.py`). The rules checked here are the
    profile's, read from its definition for Kubernetes 1.34: no host namespaces, ports or
    paths, nothing privileged, only the restricted volume types, non-root, no privilege
    escalation, every capability dropped (NET_BIND_SERVICE alone may be added back), and a
    RuntimeDefault or Localhost seccomp profile. The Spark Operator's driver and executor
    specs are checked the same way (its webhook puts them on the pods)."""
    problems = []
    namespaces = [o for o in tree.base_objects if o["kind"] == "Namespace"]
    for namespace in namespaces:
        labels = namespace["metadata"].get("labels") or {}
        for mode in POD_SECURITY_MODES:
            if labels.get(f"pod-security.kubernetes.io/{mode}") != "restricted":
                problems.append(
                    f"Namespace {namespace['metadata']['name']}: no label "
                    f"pod-security.kubernetes.io/{mode}: restricted"
                )
    if not namespaces:
        problems.append(f"{BASE} has no Namespace to carry the Pod Security labels")
    for obj in tree.base_objects:
        for where, pod, containers in _pod_specs(obj):
            problems += [f"{_name(obj)}{where}: {p}" for p in _restricted_breaks(pod, containers)]
    return problems


def service_account_tokens(tree: RepoTree) -> list[str]:
    """Only an identity that needs a token mounts one: a Vault identity's (a stage's or a
    delivery job's: its pods log in to Vault with it, ops/vault/stages.yaml) or one a
    RoleBinding gives API rights (the Spark driver's).
    Every other ServiceAccount sets `automountServiceAccountToken: false`, and no pod of such
    an identity (or of the namespace's `default` one) turns the token back on: a pod's own
    setting wins over its ServiceAccount's."""
    stage_identities = {service_account(identity) for identity in VAULT_IDENTITIES}
    bound = {
        subject.get("name")
        for obj in tree.base_objects
        if obj["kind"] in ("RoleBinding", "ClusterRoleBinding")
        for subject in obj.get("subjects") or []
        if subject.get("kind") == "ServiceAccount"
    }
    accounts_mount = {
        o["metadata"]["name"]: o.get("automountServiceAccountToken") is not False
        for o in tree.base_objects
        if o["kind"] == "ServiceAccount"
    }
    problems = []
    for obj in tree.base_objects:
        name = obj["metadata"]["name"]
        mounts_token = obj.get("automountServiceAccountToken") is not False
        if (
            obj["kind"] == "ServiceAccount"
            and name not in stage_identities | bound
            and mounts_token
        ):
            problems.append(
                f"ServiceAccount {name}: neither a stage's Vault identity nor bound to a "
                "Role, yet it mounts a token; set automountServiceAccountToken: false"
            )
        if obj["kind"] in {"SparkApplication", "ScheduledSparkApplication"}:
            spec = obj["spec"].get("template", obj["spec"])
            executor = (spec.get("executor") or {}).get("serviceAccount")
            if not executor or executor in bound | stage_identities:
                problems.append(
                    f"{_name(obj)}: the executors run as {executor or 'the default identity'}, "
                    "which may call the API or read Vault; give them their own ServiceAccount "
                    "with no rights and no token"
                )
        for where, pod, _ in _pod_specs(obj):
            account = pod.get("serviceAccountName") or pod.get("serviceAccount") or "default"
            own = pod.get("automountServiceAccountToken")
            mounts = own if own is not None else accounts_mount.get(account, True)
            if "containers" in pod and account not in stage_identities | bound and mounts:
                problems.append(
                    f"{_name(obj)}{where}: runs as ServiceAccount {account} with a token it "
                    "has no use for; set automountServiceAccountToken: false"
                )
    return problems


def images_pulled_with_credentials(tree: RepoTree) -> list[str]:
    """Private images pull: every pod of the base runs as one of the base's ServiceAccounts
    (never the namespace's default, which nothing here gives a pull secret), and every one of
    those names the registry's pull secret (README: Any OCI registry)."""
    accounts = {
        o["metadata"]["name"]: o for o in tree.base_objects if o["kind"] == "ServiceAccount"
    }
    problems = [
        f"ServiceAccount {name}: no imagePullSecrets {REGISTRY_PULL_SECRET}; its pods cannot "
        "pull the project's images from a private registry"
        for name, account in accounts.items()
        if {"name": REGISTRY_PULL_SECRET} not in (account.get("imagePullSecrets") or [])
    ]
    for obj in tree.base_objects:
        runs: list[tuple[str, str | None]] = []
        if obj["kind"] in {"SparkApplication", "ScheduledSparkApplication"}:
            spec = obj["spec"].get("template", obj["spec"])
            runs = [(f" {role}", (spec.get(role) or {}).get("serviceAccount"))
                    for role in ("driver", "executor")]  # fmt: skip
        else:
            runs = [
                (where, pod.get("serviceAccountName"))
                for where, pod, _ in _pod_specs(obj)
                if "containers" in pod
            ]
        problems += [
            f"{_name(obj)}{where}: runs as {account or 'the default ServiceAccount'}, not one of "
            f"{BASE}'s, so it pulls without the registry's pull secret"
            for where, account in runs
            if account not in accounts
        ]
    return problems


def stage_workflow_triggers(tree: RepoTree) -> list[str]:
    """Images are built on pull requests and pushes to staging, and no push's bump is lost.

    main receives staging's digests through the promotion, so a stage workflow that ran on
    pushes to main would rebuild for nothing. A push's run is never cancelled in progress, and
    the bump job has a group per image: GitHub keeps one pending run per concurrency group and
    cancels the older, so a group shared by images would let one image's bump cancel another's.
    """
    problems = []
    for path, workflow in tree.workflows().items():
        if not stage_image_calls(workflow):
            continue
        triggers = workflow_triggers(workflow)
        if "push" in triggers:
            push = triggers["push"] if isinstance(triggers["push"], dict) else {}
            if push.get("branches") != ["staging"]:
                problems.append(
                    f"{tree.rel(path)}: runs on pushes to {push.get('branches') or 'any branch'}, "
                    "not only staging (main gets staging's digests by promotion, no rebuild)"
                )
        cancel = _concurrency(workflow).get("cancel-in-progress", False)
        if cancel not in (False, PULL_REQUESTS_ONLY):
            problems.append(
                f"{tree.rel(path)}: concurrency cancel-in-progress {cancel!r} cancels pushes' "
                f"runs and their bumps too; use {PULL_REQUESTS_ONLY!r}"
            )
    stage_image = tree.root / WORKFLOWS / STAGE_IMAGE_WORKFLOW
    if stage_image.is_file():
        jobs = load_yaml(stage_image).get("jobs") or {}
        for name, job in jobs.items():
            steps = json.dumps(job.get("steps") or [])
            where = f"{WORKFLOWS / STAGE_IMAGE_WORKFLOW}: job {name}"
            if (job.get("permissions") or {}).get("contents") == "write":
                problems.append(
                    f"{where}: GITHUB_TOKEN may write contents; the pin is pushed with the "
                    "delivery App's token and no job needs more than contents: read"
                )
            if "ops/scripts/pin-image-digest.sh" not in steps:
                continue  # only the bump job pushes to the repository
            if "secrets.GITHUB_TOKEN" in steps:
                problems.append(
                    f"{where}: pushes the pin with GITHUB_TOKEN, whose pushes start no workflow "
                    "run: the promotion pull request would keep an older head's checks; push "
                    "with the delivery App's token (actions/create-github-app-token)"
                )
            concurrency = _concurrency(job)
            if "inputs.image" not in str(concurrency.get("group", "")):
                problems.append(
                    f"{where}: concurrency group {concurrency.get('group')!r} is not per image "
                    "(one image's pending bump would cancel another's); put inputs.image in it"
                )
            if concurrency.get("cancel-in-progress", False) is not False:
                problems.append(f"{where}: a bump must never be cancelled (cancel-in-progress)")
    return problems


def dockerfile_copy_sources_exist(tree: RepoTree) -> list[str]:
    """COPY/ADD sources exist in the build context (the repository root)."""
    problems = []
    for dockerfile in tree.dockerfiles():
        for source in _copy_sources(dockerfile):
            if not _matches_something(tree.root, source):
                problems.append(f"{tree.rel(dockerfile)}: COPY source {source} does not exist")
    return problems


def rollout_references_exist(tree: RepoTree) -> list[str]:
    """Services, analysis templates and service accounts that workloads name exist."""
    objects = tree.base_objects
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    problems = []
    for obj in objects:
        if obj["kind"] == "Rollout":
            blue_green = obj["spec"].get("strategy", {}).get("blueGreen")
            if blue_green is None:
                problems.append(f"{_name(obj)}: strategy is not blueGreen")
                continue
            for key in ("activeService", "previewService"):
                service = blue_green.get(key)
                if ("Service", service) not in names:
                    problems.append(f"{_name(obj)}: {key} {service} is no Service in {BASE}")
            for key in ("prePromotionAnalysis", "postPromotionAnalysis"):
                templates = (blue_green.get(key) or {}).get("templates") or []
                if not templates:
                    problems.append(f"{_name(obj)}: no {key}")
                for template in templates:
                    name = template.get("templateName")
                    if ("AnalysisTemplate", name) not in names:
                        problems.append(
                            f"{_name(obj)}: {key} template {name} is no AnalysisTemplate in {BASE}"
                        )
        for account in _service_accounts(obj):
            if ("ServiceAccount", account) not in names:
                problems.append(f"{_name(obj)}: service account {account} is not in {BASE}")
    return problems


def serving_guaranteed(tree: RepoTree) -> list[str]:
    """The Rollout's pods are Guaranteed QoS with whole cores: every container's CPU and
    memory requests equal its limits, CPU in whole cores. A worker is one event loop on one
    core; its p99 at half capacity holds on a busy node only while that core is its own (a
    pod that requests less waits for its neighbours' slices: README, "The tail")."""
    problems = []
    for obj in tree.base_objects:
        if obj["kind"] != "Rollout":
            continue
        for container in obj["spec"]["template"]["spec"]["containers"]:
            where = f"{_name(obj)} container {container['name']}"
            resources = container.get("resources") or {}
            requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
            for kind in ("cpu", "memory"):
                asked, capped = requests.get(kind), limits.get(kind)
                if asked is None or capped is None or _quantity(asked) != _quantity(capped):
                    problems.append(
                        f"{where}: {kind} request {asked} and limit {capped} differ; set both "
                        "to the same value (Guaranteed QoS)"
                    )
            cpu = limits.get("cpu")
            if cpu is not None and _quantity(cpu) % 1:
                problems.append(f"{where}: CPU {cpu} is not whole cores; give each worker one")
    return problems


def model_pinned_by_version(tree: RepoTree) -> list[str]:
    """Git pins the served model as a version (``models:/NAME/VERSION``), never a moving
    alias, and the Rollout's ``pr-anomaly-mlops/model`` annotation (the analysis' argument)
    is that same pin."""
    objects = tree.base_objects
    pins = [
        o.get("data", {}).get("SERVING_MODEL_URI")
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith(MODEL_CONFIG_MAP)
    ]
    if len(pins) != 1 or not pins[0]:
        return [f"{BASE}: expected one {MODEL_CONFIG_MAP} ConfigMap with SERVING_MODEL_URI"]
    pin = pins[0]
    problems = []
    try:
        reference = ModelReference.parse(pin)
    except ValueError as error:
        return [f"{MODEL_CONFIG_MAP}: {error}"]
    if reference.version is None:
        problems.append(
            f"{MODEL_CONFIG_MAP}: SERVING_MODEL_URI={pin} names an alias; pin a version "
            f"(models:/{reference.name}/N): git, not the registry, says what serves"
        )
    for obj in objects:
        if obj["kind"] == "Rollout":
            annotated = obj["metadata"].get("annotations", {}).get(MODEL_ANNOTATION)
            if annotated != pin:
                problems.append(f"{_name(obj)}: annotation {MODEL_ANNOTATION}={annotated}, "
                                f"not the pinned {pin} (kustomization's replacements)")  # fmt: skip
    return problems


def vault_contract(tree: RepoTree) -> list[str]:
    """Every workload passes VAULT_* to its main container: who it is to Vault (the role and
    secret of the identity it belongs to: its app.kubernetes.io/component, a stage or a
    delivery job with a secret of its own), and where Vault is only from the one ConfigMap
    of vault.env (envFrom, never written in a manifest), with the CA's ConfigMap mounted
    where VAULT_CACERT points. Vault's address is https: every login sends a token."""
    objects = tree.base_objects
    where = _generated(objects, VAULT_CONFIG_MAP)
    if where is None:
        return [f"{BASE}: no ConfigMap {VAULT_CONFIG_MAP} (configMapGenerator of vault.env)"]
    settings = where.get("data", {})
    problems = [
        f"ConfigMap {VAULT_CONFIG_MAP}: {name} is missing (vault.env)"
        for name in VAULT_WHERE if name not in settings
    ]  # fmt: skip
    address = settings.get("VAULT_ADDR", "")
    if not address.startswith("https://"):
        problems.append(
            f"ConfigMap {VAULT_CONFIG_MAP}: VAULT_ADDR={address} is not https: every stage "
            "sends its service-account token to Vault (README: Vault over TLS)"
        )
    ca_dir = str(Path(settings["VAULT_CACERT"]).parent) if settings.get("VAULT_CACERT") else None
    seen = set()
    for obj in objects:
        if obj["kind"] not in WORKLOAD_KINDS:
            continue
        identity = obj["metadata"].get("labels", {}).get("app.kubernetes.io/component")
        if identity not in VAULT_IDENTITIES:
            problems.append(
                f"{_name(obj)}: label app.kubernetes.io/component names no Vault identity "
                f"of pipeline_ops.stages ({', '.join(VAULT_IDENTITIES)})"
            )
            continue
        seen.add(identity)
        container, volumes = _main_container(obj)
        problems += [f"{_name(obj)}: {p}" for p in _vault_settings(container, identity, where)]
        if ca_dir and not _mounts_config_map(container, volumes, ca_dir, VAULT_CA_CONFIG_MAP):
            problems.append(
                f"{_name(obj)}: mounts no ConfigMap {VAULT_CA_CONFIG_MAP} at {ca_dir}, where "
                f"VAULT_CACERT={settings['VAULT_CACERT']} points"
            )
    problems += [f"{s} has no workload in {BASE}" for s in VAULT_IDENTITIES if s not in seen]
    return problems


def _vault_settings(container: dict[str, Any], identity: str, where: dict[str, Any]) -> list[str]:
    env = {e["name"]: e.get("value") for e in container.get("env") or []}
    read = [
        e["configMapRef"]["name"] for e in container.get("envFrom") or [] if "configMapRef" in e
    ]
    problems = []
    if where["metadata"]["name"] not in read:
        problems.append(f"reads no ConfigMap {VAULT_CONFIG_MAP} (envFrom): where Vault is")
    written = [name for name in VAULT_WHERE if name in env]
    if written:
        problems.append(
            f"{', '.join(written)} written in the manifest; ConfigMap {VAULT_CONFIG_MAP} "
            "(vault.env) is the one place that says where Vault is"
        )
    missing = [name for name in VAULT_WHO if name not in env]
    if missing:
        problems.append(f"missing Vault contract variables {', '.join(missing)}")
    elif env["VAULT_ROLE"] != identity or not str(env["VAULT_SECRET_PATH"]).endswith(
        f"/{identity}"
    ):
        problems.append(
            f"VAULT_ROLE/VAULT_SECRET_PATH must name stage {identity} (pipeline_ops.stages), "
            f"not {env['VAULT_ROLE']}/{env['VAULT_SECRET_PATH']}"
        )
    return problems


def _mounts_config_map(
    container: dict[str, Any], volumes: list[dict[str, Any]], path: str, config_map: str
) -> bool:
    sources = {v["name"]: (v.get("configMap") or {}).get("name") for v in volumes}
    return any(
        m["mountPath"].rstrip("/") == path and sources.get(m["name"]) == config_map
        for m in container.get("volumeMounts") or []
    )


def _generated(objects: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The ConfigMap kustomize generated as ``name`` (its name with the content's hash)."""
    pattern = re.compile(rf"{re.escape(name)}(-[a-z0-9]{{10}})?")
    return next(
        (
            o
            for o in objects
            if o["kind"] == "ConfigMap" and pattern.fullmatch(o["metadata"]["name"])
        ),
        None,
    )


def no_latest_tags(tree: RepoTree) -> list[str]:
    problems = []
    for entry in tree.kustomization.get("images") or []:
        if entry.get("newTag") in (None, "latest") and not entry.get("digest"):
            problems.append(
                f"{BASE}/kustomization.yaml: image {entry['name']} needs an immutable newTag "
                "or a digest, not latest"
            )
    for container in _containers(_all_objects(tree)):
        image = container["image"]
        if "@sha256:" not in image and (
            ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")
        ):
            problems.append(f"container {container['name']}: image {image} is not pinned")
    for dockerfile in tree.dockerfiles():
        stages = set()
        defaults: dict[str, str] = {}  # build arguments as the workflows leave them
        for line in _instructions(dockerfile):
            words = _instruction_words(line)
            if words and words[0].upper() == "ARG" and "=" in words[1]:
                name, _, value = words[1].partition("=")
                defaults[name] = _expand_args(value, defaults)
            if not words or words[0].upper() != "FROM":
                continue
            image = _expand_args(next(w for w in words[1:] if not w.startswith("--")), defaults)
            if len(words) >= 4 and words[-2].upper() == "AS":
                stages.add(words[-1])
            if image in stages or "@sha256:" in image:
                continue
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            if tag in ("", "latest"):
                problems.append(f"{tree.rel(dockerfile)}: FROM {image} is not pinned to a tag")
    return problems


def project_permits_every_kind(tree: RepoTree) -> list[str]:
    """Argo CD refuses to sync a kind its AppProject does not whitelist: every kind of the
    base is permitted (the cluster-scoped ones in the cluster whitelist), and the whitelist
    names no kind the base does not use (least privilege)."""
    project = next(
        o for o in tree.build(tree.root / "argo-apps" / "argocd") if o["kind"] == "AppProject"
    )
    spec = project["spec"]
    cluster_kinds = {(e["group"], e["kind"]) for e in spec.get("clusterResourceWhitelist") or []}
    namespace_kinds = {
        (e["group"], e["kind"]) for e in spec.get("namespaceResourceWhitelist") or []
    }
    used = set()
    problems = []
    for obj in tree.base_objects:
        group = obj["apiVersion"].rpartition("/")[0]
        kind = (group, obj["kind"])
        used.add(kind)
        if kind not in cluster_kinds | namespace_kinds:
            problems.append(
                f"{_name(obj)}: kind {obj['kind']} (group {group or 'core'!r}) is not in the "
                f"AppProject {project['metadata']['name']}'s whitelist: Argo CD would refuse "
                "the sync; add it to argo-apps/argocd/appproject.yaml"
            )
    for group, kind in sorted((cluster_kinds | namespace_kinds) - used):
        problems.append(
            f"AppProject {project['metadata']['name']} permits {kind} (group {group or 'core'!r})"
            f", which {BASE} does not use: remove it"
        )
    return problems


CHECKS: dict[str, Check] = {
    "kustomize-build": kustomize_build,
    "kubernetes-schemas": kubernetes_schemas,
    "custom-resource-schemas": custom_resource_schemas,
    "actionlint": actionlint,
    "zizmor": zizmor,
    "hadolint": hadolint,
    "yamllint": yamllint,
    "promtool": promtool,
    "images-have-dockerfile-and-workflow": images_have_dockerfile_and_workflow,
    "workflow-paths-exist": workflow_paths_exist,
    "workflow-paths-cover-inputs": workflow_paths_cover_inputs,
    "stage-workflow-triggers": stage_workflow_triggers,
    "pins-rebuild-nothing": pins_rebuild_nothing,
    "pod-security-restricted": pod_security_restricted,
    "service-account-tokens": service_account_tokens,
    "network-policies-right": network_policy_reaches,
    "images-pulled-with-credentials": images_pulled_with_credentials,
    "hosted-runner-steps": hosted_runner_steps,
    "registry-is-a-setting": registry_is_a_setting,
    "dockerfile-copy-sources-exist": dockerfile_copy_sources_exist,
    "rollout-references-exist": rollout_references_exist,
    "serving-guaranteed": serving_guaranteed,
    "model-pinned-by-version": model_pinned_by_version,
    "vault-contract": vault_contract,
    "project-permits-every-kind": project_permits_every_kind,
    "no-latest-tags": no_latest_tags,
}


# ---- helpers -------------------------------------------------------------------------------


def _all_objects(tree: RepoTree) -> list[dict[str, Any]]:
    return [*tree.base_objects, *tree.build(ARGOCD), *tree.build(ACCESS)]


def _is_custom(obj: dict[str, Any]) -> bool:
    group = obj["apiVersion"].rpartition("/")[0]
    return group == "sparkoperator.k8s.io" or ("." in group and not group.endswith(".k8s.io"))


def _name(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj.get('metadata', {}).get('name', '?')}"


def _reference(entry: dict[str, Any]) -> str:
    return entry.get("newName", entry["name"])


_QUANTITY_SUFFIXES = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
                      "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}  # fmt: skip


def _quantity(value: Any) -> float:
    """A Kubernetes resource quantity (``500m``, ``"1"``, ``1Gi``) as a number."""
    text = str(value)
    for suffix in sorted(_QUANTITY_SUFFIXES, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * _QUANTITY_SUFFIXES[suffix]
    return float(text)


def walk_nodes(node: Any) -> Iterator[dict[str, Any]]:
    """Every mapping in a parsed manifest, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk_nodes(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk_nodes(value)


def _containers(objects: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for obj in objects:
        for node in walk_nodes(obj):
            for key in ("containers", "initContainers"):
                if isinstance(node.get(key), list):
                    yield from (c for c in node[key] if isinstance(c, dict) and "image" in c)
        if obj["kind"] in {"SparkApplication", "ScheduledSparkApplication"}:
            spec = obj["spec"].get("template", obj["spec"])
            for role in ("driver", "executor"):
                image = spec.get(role, {}).get("image", spec.get("image"))
                if image:
                    yield {"name": f"{obj['metadata']['name']}-{role}", "image": image}


def _pod_specs(
    obj: dict[str, Any],
) -> Iterator[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
    """Every pod an object runs, as (where, pod-level security fields, containers): pod
    templates wherever they are (a mapping with `containers`), and the Spark Operator's
    driver and executor (`podSecurityContext` and `securityContext` on the role)."""
    for node in walk_nodes(obj):
        if isinstance(node.get("containers"), list):
            containers = [*node["containers"], *(node.get("initContainers") or [])]
            yield "", node, containers
    if obj["kind"] in {"SparkApplication", "ScheduledSparkApplication"}:
        spec = obj["spec"].get("template", obj["spec"])
        for role in ("driver", "executor"):
            part = spec.get(role) or {}
            pod = {"securityContext": part.get("podSecurityContext") or {}}
            pod["volumes"] = spec.get("volumes") or []
            yield f" ({role})", pod, [{"name": role, **part}]


def _restricted_breaks(pod: dict[str, Any], containers: list[dict[str, Any]]) -> list[str]:
    """How one pod breaks the `restricted` profile (empty: it meets it)."""
    breaks = []
    context = pod.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            breaks.append(f"{field} is not allowed")
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            breaks.append(f"volume {volume.get('name')} of type {', '.join(sorted(kinds))}")
    pod_seccomp = (context.get("seccompProfile") or {}).get("type")
    for container in containers:
        name = f"container {container.get('name')}"
        own = container.get("securityContext") or {}
        if own.get("privileged"):
            breaks.append(f"{name} is privileged")
        if own.get("allowPrivilegeEscalation") is not False:
            breaks.append(f"{name} must set allowPrivilegeEscalation: false")
        if not own.get("runAsNonRoot", context.get("runAsNonRoot")):
            breaks.append(f"{name} must run as non-root (runAsNonRoot: true)")
        if 0 in (own.get("runAsUser"), context.get("runAsUser")):
            breaks.append(f"{name} runs as uid 0")
        capabilities = own.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            breaks.append(f"{name} must drop ALL capabilities")
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            breaks.append(f"{name} adds capabilities {capabilities['add']}")
        seccomp = (own.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            breaks.append(f"{name} needs a RuntimeDefault (or Localhost) seccomp profile")
        if any(port.get("hostPort") for port in container.get("ports") or []):
            breaks.append(f"{name} uses a host port")
    return breaks


def _service_accounts(obj: dict[str, Any]) -> Iterator[str]:
    for node in walk_nodes(obj):
        if "containers" in node and node.get("serviceAccountName"):
            yield node["serviceAccountName"]
    if obj["kind"] in {"SparkApplication", "ScheduledSparkApplication"}:
        spec = obj["spec"].get("template", obj["spec"])
        for role in ("driver", "executor"):
            if spec.get(role, {}).get("serviceAccount"):
                yield spec[role]["serviceAccount"]
    if obj["kind"] == "RoleBinding":
        yield from (s["name"] for s in obj.get("subjects", []) if s["kind"] == "ServiceAccount")


def _main_container(obj: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A workload's main container (a Spark application's: its driver) and its pod's
    volumes."""
    if obj["kind"] in {"SparkApplication", "ScheduledSparkApplication"}:
        spec = obj["spec"].get("template", obj["spec"])
        return spec.get("driver", {}), spec.get("volumes") or []
    for node in walk_nodes(obj):
        if isinstance(node.get("containers"), list) and node["containers"]:
            return node["containers"][0], node.get("volumes") or []
    return {}, []


@cache
def _load_crd(path: Path) -> dict[str, Any]:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=YAML_LOADER)


def _crd_schema(folder: Path, group: str, kind: str, version: str) -> dict[str, Any] | None:
    for path in sorted(folder.glob("*.yaml")):
        crd = _load_crd(path)
        spec = crd.get("spec", {})
        if spec.get("group") != group or spec.get("names", {}).get("kind") != kind:
            continue
        for served in spec.get("versions", []):
            if served["name"] == version:
                return _closed(served["schema"]["openAPIV3Schema"])
    return None


def _closed(schema: Any) -> Any:
    """The CRD schema with unknown fields rejected, as the API server prunes them."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {k: _closed(v) for k, v in schema.items()}
    if (
        "properties" in closed
        and "additionalProperties" not in closed
        and not closed.get("x-kubernetes-preserve-unknown-fields")
    ):
        closed["additionalProperties"] = False
    if closed.get("x-kubernetes-int-or-string"):
        closed.pop("type", None)
    return closed


def _matches_something(root: Path, pattern: str) -> bool:
    """Whether a GitHub-style path filter (`*` within a folder, `**` across) matches a file."""
    pattern = pattern.rstrip("/")
    if not any(ch in pattern for ch in "*?["):
        return (root / pattern).exists()
    regex = re.compile(_glob_regex(pattern))
    prefix = re.split(r"[*?\[]", pattern, maxsplit=1)[0].rpartition("/")[0]
    folder = root / prefix
    if not folder.is_dir():
        return False
    return any(regex.fullmatch(p.relative_to(root).as_posix()) for p in folder.rglob("*"))


def _glob_regex(pattern: str) -> str:
    parts = re.split(r"(\*\*/?|\*|\?)", pattern)
    translate = {"**": ".*", "**/": "(?:.*/)?", "*": "[^/]*", "?": "[^/]"}
    return "".join(translate.get(part, re.escape(part)) for part in parts)


def _manifests_running(tree: RepoTree, image: str) -> list[str]:
    """The files of argo-apps/base whose objects run ``image`` (by its name in the images:
    list, as the manifests write it before kustomize sets the reference)."""
    found = []
    for path in sorted((tree.root / BASE).glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        documents = yaml.load_all(path.read_text(encoding="utf-8"), Loader=YAML_LOADER)
        if any(node.get("image") == image for doc in documents for node in walk_nodes(doc)):
            found.append(tree.rel(path))
    return found


def makefile_root_targets(makefile: Path) -> set[str]:
    """The targets that need root: those with the marker prerequisite, and every target that
    depends on one of them."""
    prerequisites: dict[str, list[str]] = {}
    rule = re.compile(r"^([a-z][a-z0-9-]*):(?!=)([^#]*)")
    for line in makefile.read_text(encoding="utf-8").splitlines():
        match = rule.match(line)
        if match:
            words = match.group(2).replace("|", " ").split()
            prerequisites.setdefault(match.group(1), []).extend(words)
    needing = {ROOT_MARKER}
    changed = True
    while changed:
        changed = False
        for target, needs in prerequisites.items():
            if target not in needing and needing.intersection(needs):
                needing.add(target)
                changed = True
    return needing - {ROOT_MARKER}


def _shell_commands(script: str) -> Iterator[list[str]]:
    """The simple commands of a step's `run:` script, as words (a rough split on ; && || |
    and newlines, enough to see which program each one starts)."""
    for part in re.split(r"\n|;|&&|\|\||\|", script):
        try:
            words = shlex.split(part, comments=True)
        except ValueError:
            words = part.split()
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
            words = words[1:]  # VAR=value before the program
        yield words


def _concurrency(node: dict[Any, Any]) -> dict[str, Any]:
    """A workflow's or job's concurrency as a mapping (the short form is just the group)."""
    concurrency = node.get("concurrency") or {}
    return {"group": concurrency} if isinstance(concurrency, str) else concurrency


def _filtered_in(path: str, filters: list[str]) -> bool:
    """Whether GitHub's `paths:` filters select a changed file: the last matching one decides."""
    selected = False
    for pattern in filters:
        negated = pattern.startswith("!")
        if re.fullmatch(_glob_regex(pattern.removeprefix("!")), path):
            selected = not negated
    return selected


def _dockerignore(root: Path) -> list[re.Pattern[str]]:
    path = root / ".dockerignore"
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    patterns = [line.strip().strip("/") for line in lines]
    return [re.compile(_glob_regex(p)) for p in patterns if p and not p.startswith(("#", "!"))]


def _files_under(root: Path, name: str, ignored: list[re.Pattern[str]]) -> list[str]:
    """The files a path (a file, a folder or a glob) stands for, as changes would name them."""
    if any(ch in name for ch in "*?["):
        regex = re.compile(_glob_regex(name.rstrip("/")))
        files = [p for p in root.rglob("*") if regex.fullmatch(p.relative_to(root).as_posix())]
    else:
        target = root / name.rstrip("/")
        files = sorted(target.rglob("*")) if target.is_dir() else [target]
    found = []
    for file in files:
        if file.exists() and not file.is_file():
            continue
        parts = file.relative_to(root).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(GENERATED_PARTS.fullmatch(part) for part in parts) or any(
            regex.fullmatch(prefix) for regex in ignored for prefix in prefixes
        ):
            continue
        found.append("/".join(parts))
    return found or ([name] if not ignored else [])


def _copy_sources(dockerfile: Path) -> Iterator[str]:
    """The build-context sources of a Dockerfile's COPY and ADD (not those --from a stage)."""
    for line in _instructions(dockerfile):
        words = _instruction_words(line)
        if not words or words[0].upper() not in {"COPY", "ADD"}:
            continue
        args = words[1:]
        if any(a.startswith("--from") for a in args):
            continue
        yield from [a for a in args if not a.startswith("--")][:-1]


def _expand_args(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_]\w*)\}?", lambda m: values.get(m[1], m[0]), text)


def _instructions(dockerfile: Path) -> Iterator[str]:
    """Dockerfile instructions with continuation lines joined and comments dropped."""
    current = ""
    for raw in dockerfile.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        yield current + line
        current = ""
    if current:
        yield current


def _instruction_words(line: str) -> list[str]:
    head, _, rest = line.partition(" ")
    rest = rest.strip()
    if rest.startswith("["):
        try:
            return [head, *json.loads(rest)]
        except json.JSONDecodeError:
            pass
    return [head, *shlex.split(rest, posix=True)] if head else []


def _tool_output(name: str, result: Any) -> list[str]:
    if result.returncode == 0:
        return []
    output = (result.stdout + result.stderr).strip()
    return [f"{name}: {line}" for line in output.splitlines() if line.strip()] or [
        f"{name} exited {result.returncode}"
    ]
