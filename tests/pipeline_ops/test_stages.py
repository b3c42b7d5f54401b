"""The stages are listed once, in ``pipeline_ops.stages``.

Three guards, offline and fast (git ls-files, YAML/TOML/AST parsing; no servers, no tools):

- a name the repository uses as a stage (a Dockerfile, a stage workflow and the image it
  builds, a Kubernetes object's stage labels, service account or Vault role, a stage's
  console script, a Vault policy, a secret path, a stage-keyed call in the source) that the
  list does not know fails, naming the file and the name: a sixth stage added without its
  entry;
- an entry of the list without one of its parts (package, Dockerfile, console script,
  workflow, workload manifest, service account, image pin, Vault role, its project in
  `make setup` and in the import layers) fails, naming the stage and what is missing;
- a module of ops that spells a stage's name out instead of reading the list fails.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import subprocess
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline_ops import stages
from pipeline_ops.paths import PROJECT_ROOT
from pipeline_ops.stages import STAGES, Image, Stage
from pipeline_ops.vault_bootstrap import VaultLayout

SOURCE_SUFFIXES = (".py", ".yaml", ".yml", ".toml", ".sh")
WORKFLOWS = ".github/workflows"
STAGE_IMAGE_WORKFLOW = "stage-image.yml"
MANIFESTS = "argo-apps/base"
WORKLOAD_KINDS = {"CronJob", "Job", "Deployment", "Rollout", "ScheduledSparkApplication"}
NAME = r"([a-z][a-z0-9-]*[a-z0-9])"
# Where the source names a stage (the first group) or an image (the second), by a pattern of
# the place: a Vault secret path or role, a kubectl reference to a stage's object, a label
# selector, a stage-keyed call or lookup of ops. Left out: the tests, which break names on
# purpose (an unknown stage, a misspelled role) to see the checks fail, and the vendored
# upstream schemas.
NAMED_STAGES = [
    re.compile(r"(?:secret|kv)(?:/data)?/mlops/" + NAME),
    re.compile(r"auth/[a-z0-9-]+/role/" + NAME),
    re.compile(r"\bVAULT_ROLE[\"']?\s*(?:[:=,]\s*[\"']|\n\s*-?\s*value:\s*[\"']?)" + NAME),
    re.compile(r"(?<![/\w])(?:cronjob|scheduledsparkapplication|serviceaccount)[/ ][\"']?" + NAME),
    re.compile(r"app\.kubernetes\.io/component[=:]\s*[\"']?" + NAME),
    re.compile(
        r"\b(?:stage|stage_env|stage_process_env|run_stage_process|token_file|issue_token"
        r"|secret_path)\((?:[a-z_.]+,\s*)?[\"']" + NAME + r"[\"']"
    ),
    re.compile(r"\bstage_secrets\(\)\[[\"']" + NAME + r"[\"']\]"),
    re.compile(r"\bvault_stage=[\"']" + NAME + r"[\"']"),
]
NAMED_IMAGES = [
    re.compile(r"app\.kubernetes\.io/name[=:]\s*[\"']?" + NAME),
    re.compile(r"\b(?:image|docker_run)\([\"']" + NAME + r"[\"']"),
    re.compile(r"registry\.example\.com/pr-anomaly-mlops/" + NAME),
]


@dataclasses.dataclass(frozen=True)
class Repo:
    """A checkout as the guards read it: its root and its tracked files."""

    root: Path
    files: tuple[str, ...]

    @classmethod
    def of(cls, root: Path) -> Repo:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True, text=True
        ).stdout
        return cls(root, tuple(f for f in listed.split("\0") if f and (root / f).is_file()))

    def text(self, path: str) -> str:
        return (self.root / path).read_text(encoding="utf-8")

    def yaml(self, path: str) -> list[Any]:
        return [doc for doc in yaml.safe_load_all(self.text(path)) if doc]

    def under(self, folder: str, suffixes: tuple[str, ...] = (".yaml", ".yml")) -> list[str]:
        return [f for f in self.files if f.startswith(f"{folder}/") and f.endswith(suffixes)]

    def dockerfiles(self) -> list[str]:
        return [f for f in self.files if Path(f).name.startswith("Dockerfile")]

    def source(self) -> list[str]:
        return [
            f
            for f in self.files
            if not f.startswith(("tests/", "argo-apps/schemas/"))
            and f != "ops/src/pipeline_ops/stages.py"
            and (f.endswith(SOURCE_SUFFIXES) or Path(f).name.startswith(("Dockerfile", "Makefile")))
        ]


@pytest.fixture(scope="module")
def repo() -> Repo:
    return Repo.of(PROJECT_ROOT)


# ---- names the repository uses as stages ---------------------------------------------------


def unknown_names(repo: Repo, listed: Iterable[Stage] = STAGES) -> list[str]:
    """Every place that names a stage, an image or an image's CLI the list does not know,
    as `file: what 'name' ...`."""
    listed = tuple(listed)
    images = (*(s.image for s in listed), stages.LOAD_GATE)
    jobs = stages.DELIVERY_JOBS
    programs = {p for i in images for p in i.programs}  # an image's other console scripts
    known = {
        # a delivery job's CronJob is named as it, as a stage's is (`cronjob/NAME`)
        "a stage": {s.name for s in listed} | {j.name for j in jobs},
        # and its pods are labelled with its name, as an image's are
        "an image": {i.name for i in images} | {j.name for j in jobs} | programs,
        "an image's CLI": {i.cli for i in images} | {j.cli for j in jobs} | programs,
        "an image's Dockerfile": {i.dockerfile for i in images},
    }
    return sorted(
        {
            f"{path}: {what} {name!r} is not in pipeline_ops.stages ({kind}); add its entry there"
            for path, what, name, kind in _named(repo)
            if name not in known[kind]
        }
    )


def _named(repo: Repo) -> Iterator[tuple[str, str, str, str]]:
    """(file, what names it, the name, what it names) for every place found."""
    for path in repo.dockerfiles():
        yield path, "Dockerfile", path, "an image's Dockerfile"
    for path in repo.under(WORKFLOWS):
        calls = _stage_image_calls(repo.yaml(path)[0])
        if calls:
            yield path, "stage workflow", Path(path).stem, "a stage"
        for call in calls:
            yield path, "image built", str(call.get("image")), "an image"
    for path in repo.under(MANIFESTS):
        for doc in repo.yaml(path):
            yield from ((path, what, name, kind) for what, name, kind in _manifest_names(doc))
    built_from = {Path(f).parts[0] for f in repo.dockerfiles() if "/" in f}
    for path in repo.files:
        directory, _, name = path.partition("/")
        if name == "pyproject.toml" and directory in built_from:
            # a project that ships an image: its console scripts are what images run
            scripts = tomllib.loads(repo.text(path)).get("project", {}).get("scripts") or {}
            for script in scripts:
                yield path, "console script", script, "an image's CLI"
    for path in repo.under("ops/vault", (".hcl",)):
        yield path, "Vault policy", Path(path).stem, "a stage"
    for path in repo.under("ops/vault"):
        for name in (repo.yaml(path)[0] or {}).get("stages") or {}:
            yield path, "Vault role", name, "a stage"
    for path in repo.source():
        text = repo.text(path)
        for patterns, kind in ((NAMED_STAGES, "a stage"), (NAMED_IMAGES, "an image")):
            for pattern in patterns:
                for match in pattern.finditer(text):
                    line = text.count("\n", 0, match.start(1)) + 1
                    yield f"{path}:{line}", "named", match[1], kind


def _manifest_names(doc: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    kind = doc.get("kind")
    name = (doc.get("metadata") or {}).get("name")
    # an identity with a token is one a stage logs in to Vault with; one without (the Spark
    # executors') cannot log in to anything
    if kind == "ServiceAccount" and doc.get("automountServiceAccountToken") is not False:
        yield f"{kind} (a stage's Vault identity)", name, "a stage"
    if kind == "Kustomization":
        for entry in doc.get("images") or []:
            yield "kustomization image", entry["name"], "an image"
    for node in _mappings(doc):
        for key, value in node.items():
            if key in ("app.kubernetes.io/component", "app") and isinstance(value, str):
                yield f"label {key}", value, "a stage"
            elif key == "app.kubernetes.io/name" and isinstance(value, str):
                yield f"label {key}", value, "an image"
        if node.get("key") == "app.kubernetes.io/name":
            for value in node.get("values") or []:
                yield "selector app.kubernetes.io/name", value, "an image"
        if node.get("name") == "VAULT_ROLE" and "value" in node:
            yield "VAULT_ROLE", str(node["value"]), "a stage"
        if node.get("name") == "VAULT_SECRET_PATH" and "value" in node:
            yield "VAULT_SECRET_PATH", str(node["value"]).rpartition("/")[2], "a stage"


def _mappings(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _mappings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _mappings(value)


def _stage_image_calls(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    jobs = (workflow or {}).get("jobs") or {}
    return [
        job.get("with") or {}
        for job in jobs.values()
        if str(job.get("uses", "")).endswith(f"/{STAGE_IMAGE_WORKFLOW}")
    ]


# ---- the parts of each stage of the list ---------------------------------------------------


def missing_parts(repo: Repo, listed: Iterable[Stage] = STAGES) -> list[str]:
    """What an entry of the list lacks, as `stage NAME: what is missing`."""
    listed = tuple(listed)
    files = set(repo.files)
    built = {
        str(call.get("image")): (path, str(call.get("dockerfile")))
        for path in repo.under(WORKFLOWS)
        for call in _stage_image_calls(repo.yaml(path)[0])
    }
    docs = [doc for path in repo.under(MANIFESTS) for doc in repo.yaml(path)]
    kustomization = next(d for d in docs if d.get("kind") == "Kustomization")
    pinned = {entry["name"] for entry in kustomization.get("images") or []}
    accounts = {d["metadata"]["name"] for d in docs if d.get("kind") == "ServiceAccount"}
    workloads = {
        (d["metadata"].get("labels") or {}).get("app.kubernetes.io/component"): d
        for d in docs
        if d.get("kind") in WORKLOAD_KINDS
    }
    installed, layers = _installed(repo), _layers(repo)
    problems = []
    for image in (*(s.image for s in listed), stages.LOAD_GATE):
        where = f"image {image.name}"
        if image.dockerfile not in files:
            problems.append(f"{where}: no Dockerfile {image.dockerfile}")
        if image.name not in built:
            problems.append(
                f"{where}: built by no workflow in {WORKFLOWS} (a job calling "
                f"{STAGE_IMAGE_WORKFLOW} with image: {image.name})"
            )
        elif built[image.name][1] != image.dockerfile:
            problems.append(
                f"{where}: {built[image.name][0]} builds it from {built[image.name][1]}, "
                f"the list says {image.dockerfile}"
            )
        if image.name not in pinned:
            problems.append(f"{where}: not in the images: of {MANIFESTS}/kustomization.yaml")
        project = f"{Path(image.dockerfile).parts[0]}/pyproject.toml"
        scripts = _scripts(repo, project) if project in files else {}
        if image.cli not in scripts:
            problems.append(f"{where}: no console script {image.cli} in {project}")
    cronjobs = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "CronJob"}
    for job in stages.DELIVERY_JOBS:
        where = f"delivery job {job.name}"
        carrier = stages.image(job.image)
        project = f"{Path(carrier.dockerfile).parts[0]}/pyproject.toml"
        if job.cli not in _scripts(repo, project):
            problems.append(f"{where}: no console script {job.cli} in {project} ({job.image}'s)")
        if job.name not in cronjobs:
            problems.append(f"{where}: no CronJob {job.name} in {MANIFESTS}")
        elif (role := _vault_role(cronjobs[job.name])) != job.vault_role:
            problems.append(
                f"{where}: its CronJob logs in to Vault as {role!r}, not {job.vault_role}"
            )
    for stage in listed:
        where = f"stage {stage.name}"
        package = f"{stage.directory}/src/{stage.package.replace('.', '/')}/__init__.py"
        if package not in files:
            problems.append(f"{where}: no package {stage.package} ({package})")
        target = _scripts(repo, f"{stage.directory}/pyproject.toml").get(stage.cli, "")
        if target and not target.startswith(f"{stage.package}."):
            problems.append(f"{where}: console script {stage.cli} runs {target}, not its package")
        if stage.workflow not in files:
            problems.append(f"{where}: no workflow {stage.workflow}")
        elif built.get(stage.name, ("",))[0] != stage.workflow:
            problems.append(f"{where}: {stage.workflow} does not build image {stage.name}")
        workload = workloads.get(stage.name)
        if workload is None:
            problems.append(
                f"{where}: no workload in {MANIFESTS} labelled "
                f"app.kubernetes.io/component: {stage.name}"
            )
        elif _vault_role(workload) != stage.vault_role:
            problems.append(
                f"{where}: its workload {workload['kind']}/{workload['metadata']['name']} "
                f"logs in to Vault as {_vault_role(workload)!r}, not as role {stage.vault_role}"
            )
        if stage.service_account not in accounts:
            problems.append(f"{where}: no ServiceAccount {stage.service_account} in {MANIFESTS}")
        if stage.directory not in installed:
            problems.append(f"{where}: {stage.directory} is not in the Makefile's PACKAGES")
        top = stage.package.partition(".")[0]
        if not any(top in re.split(r"[\s|:]+", layer) for layer in layers):
            problems.append(
                f"{where}: {top} is in no layer of pyproject.toml's import-linter contracts"
            )
    return problems


def _installed(repo: Repo) -> set[str]:
    """The projects `make setup` installs (the Makefile's PACKAGES)."""
    found = re.search(r"^PACKAGES\s*:?=(.*)$", repo.text("Makefile"), re.MULTILINE)
    return set(found[1].split()) if found else set()


def _layers(repo: Repo) -> list[str]:
    linter = tomllib.loads(repo.text("pyproject.toml")).get("tool", {}).get("importlinter", {})
    return [
        layer
        for contract in linter.get("contracts") or []
        if contract.get("type") == "layers"
        for layer in contract.get("layers") or []
    ]


def _scripts(repo: Repo, pyproject: str) -> dict[str, str]:
    if pyproject not in repo.files:
        return {}
    return tomllib.loads(repo.text(pyproject)).get("project", {}).get("scripts") or {}


def _vault_role(workload: dict[str, Any]) -> str | None:
    for node in _mappings(workload):
        if node.get("name") == "VAULT_ROLE" and "value" in node:
            return str(node["value"])
    return None


# ---- the tests -----------------------------------------------------------------------------


def test_every_stage_the_repository_names_is_in_the_list(repo: Repo):
    problems = unknown_names(repo)
    assert not problems, "\n".join(problems)


def test_every_stage_of_the_list_has_all_its_parts(repo: Repo):
    problems = missing_parts(repo)
    assert not problems, "\n".join(problems)


def test_the_vault_layout_has_a_role_for_each_stage_and_no_list_of_its_own():
    assert VaultLayout.load().stages == stages.VAULT_IDENTITIES
    assert "stages" not in yaml.safe_load((PROJECT_ROOT / "ops/vault/stages.yaml").read_text())


# ---- ops reads the list --------------------------------------------------------------------

OPS = "ops/src/pipeline_ops/"


def hard_coded_in_ops(repo: Repo) -> dict[str, list[str]]:
    """Per module of ops, the stage or image names its code spells out: in a string without
    spaces (a key, an argument, an object's name, a path, a selector; prose and docstrings
    aside) other than the argument of ``stages.stage(...)``/``stages.image(...)``, which the
    list checks when it runs."""
    names = "|".join(re.escape(n) for n in sorted(stages.IMAGE_NAMES, key=len, reverse=True))
    word = re.compile(rf"(?<![a-z0-9-])({names})(?![a-z0-9])")
    found: dict[str, list[str]] = {}
    for path in repo.files:
        if not path.startswith(OPS) or not path.endswith(".py") or path == f"{OPS}stages.py":
            continue
        tree = ast.parse(repo.text(path))
        looked_up = {
            id(arg)
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and _called(node) in ("stage", "image")
            for arg in node.args
        }
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and not any(ch.isspace() for ch in node.value)
                and id(node) not in looked_up | docstrings
            ):
                for match in word.finditer(node.value):
                    found.setdefault(path, []).append(f"line {node.lineno}: {match[1]!r}")
    return {path: sorted(set(spots)) for path, spots in found.items()}


def _called(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def test_ops_reads_the_stages_from_the_list(repo: Repo):
    spelled = [f"{path}: {', '.join(spots)}" for path, spots in hard_coded_in_ops(repo).items()]
    assert not spelled, "use pipeline_ops.stages instead:\n" + "\n".join(spelled)


def test_a_stage_name_spelled_out_in_ops_is_found_and_a_lookup_in_the_list_is_not(
    tmp_path: Path,
):
    module = f"{OPS}digest.py"
    (tmp_path / module).parent.mkdir(parents=True)
    (tmp_path / module).write_text(
        '"""Reads what ml-training published."""\n'
        'TRAINING = stages.stage("ml-training")\n'
        'secret = env.stage_secrets()["ml-training"]\n'
        'log = "runs ml-training"  # prose\n'
        'gate = f"{stages.LOAD_GATE.name}.log", "load-gate.log"\n'
    )
    assert hard_coded_in_ops(Repo(tmp_path, (module,))) == {
        module: ["line 3: 'ml-training'", "line 5: 'load-gate'"]
    }


# ---- the guards catch a sixth stage --------------------------------------------------------

SIXTH = Stage(
    "weekly-digest", "weekly_digest", "weekly-digest",
    Image("weekly-digest", "weekly-digest/Dockerfile", "weekly-digest"),
    reads="MongoDB: pull_requests", publishes="e-mail: a digest", secret=("mongo",),
)  # fmt: skip
SIXTH_FILES = {
    "weekly-digest/Dockerfile": 'FROM python:3.12-slim\nENTRYPOINT ["weekly-digest"]\n',
    "weekly-digest/pyproject.toml": '[project.scripts]\nweekly-digest = "weekly_digest.cli:main"\n',
    "weekly-digest/src/weekly_digest/__init__.py": "",
    ".github/workflows/weekly-digest.yml": """
jobs:
  weekly-digest:
    uses: ./.github/workflows/stage-image.yml
    with: {image: weekly-digest, dockerfile: weekly-digest/Dockerfile}
""",
    "argo-apps/base/weekly-digest-cronjob.yaml": """
apiVersion: batch/v1
kind: CronJob
metadata:
  name: weekly-digest
  labels: {app.kubernetes.io/name: weekly-digest, app.kubernetes.io/component: weekly-digest}
spec:
  jobTemplate:
    spec:
      template:
        spec:
          serviceAccountName: weekly-digest
          containers:
            - name: weekly-digest
              image: weekly-digest
              env:
                - {name: VAULT_ROLE, value: weekly-digest}
                - {name: VAULT_SECRET_PATH, value: secret/mlops/weekly-digest}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: weekly-digest}
""",
    "argo-apps/base/kustomization.yaml": "kind: Kustomization\nimages:\n- name: weekly-digest\n",
    "ops/src/pipeline_ops/digest.py": 'secrets = env.stage_secrets()["weekly-digest"]\n',
}


def _sixth_stage_tree(root: Path) -> Repo:
    for path, text in SIXTH_FILES.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return Repo(root, tuple(SIXTH_FILES))


def test_a_stage_added_without_its_entry_fails_naming_the_file_and_the_name(tmp_path: Path):
    problems = unknown_names(_sixth_stage_tree(tmp_path))

    unknown = "is not in pipeline_ops.stages"
    for expected in [
        f"weekly-digest/Dockerfile: Dockerfile 'weekly-digest/Dockerfile' {unknown}",
        f"weekly-digest/pyproject.toml: console script 'weekly-digest' {unknown}",
        f".github/workflows/weekly-digest.yml: stage workflow 'weekly-digest' {unknown}",
        f".github/workflows/weekly-digest.yml: image built 'weekly-digest' {unknown}",
        f"argo-apps/base/weekly-digest-cronjob.yaml: VAULT_ROLE 'weekly-digest' {unknown}",
        f"argo-apps/base/weekly-digest-cronjob.yaml: ServiceAccount (a stage's Vault identity) "
        f"'weekly-digest' {unknown}",
        f"argo-apps/base/kustomization.yaml: kustomization image 'weekly-digest' {unknown}",
        f"ops/src/pipeline_ops/digest.py:1: named 'weekly-digest' {unknown}",
    ]:
        assert any(p.startswith(expected) for p in problems), (expected, problems)
    assert unknown_names(_sixth_stage_tree(tmp_path), (*STAGES, SIXTH)) == []


def test_an_entry_without_its_parts_fails_naming_what_is_missing(repo: Repo):
    problems = set(missing_parts(repo, (*STAGES, SIXTH))) - set(missing_parts(repo))
    assert problems == {
        "image weekly-digest: no Dockerfile weekly-digest/Dockerfile",
        "image weekly-digest: built by no workflow in .github/workflows (a job calling "
        "stage-image.yml with image: weekly-digest)",
        "image weekly-digest: not in the images: of argo-apps/base/kustomization.yaml",
        "image weekly-digest: no console script weekly-digest in weekly-digest/pyproject.toml",
        "stage weekly-digest: no package weekly_digest "
        "(weekly-digest/src/weekly_digest/__init__.py)",
        "stage weekly-digest: no workflow .github/workflows/weekly-digest.yml",
        "stage weekly-digest: no workload in argo-apps/base labelled "
        "app.kubernetes.io/component: weekly-digest",
        "stage weekly-digest: no ServiceAccount weekly-digest in argo-apps/base",
        "stage weekly-digest: weekly-digest is not in the Makefile's PACKAGES",
        "stage weekly-digest: weekly_digest is in no layer of pyproject.toml's import-linter "
        "contracts",
    }
