"""Git as the source of truth for the cluster's two environments, and the Argo CD that reads it.

The cluster's git server holds ``pr-anomaly.git`` with the branches users work with:
``staging`` (what the staging Application deploys) and ``main`` (production). Changes reach
them the way they do on GitHub: a merge to ``staging``; image digests pinned on ``staging``
by ``ops/scripts/pin-image-digest.sh``, the script the workflows' bump step runs; a model
bump (one line, ``argo-apps/base/model-serving-model.env``); the promotion ``staging`` ->
``main`` by ``ops/scripts/promote.sh``, the script ``make promote`` and ``promote.yml`` run.

Argo CD runs the project's own AppProject and Applications (``argo-apps/argocd``), changed
in one setting: the repository they read, ``GITOPS_REPOSITORY`` (GitHub in production, this
git server here). Because one cluster holds both environments on this machine, production
is deployed into the namespace ``mlops-production`` (the Application's ``kustomize.namespace``
and its destination), and the Argo CD clusters ``staging`` and ``production`` the
Applications name are this one cluster under two addresses. ``argo-apps/base`` is deployed as
it is in both.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from pipeline_ops import stages
from pipeline_ops.base import commands
from pipeline_ops.base.polling import wait_until
from pipeline_ops.base.processes import minimal_environment
from pipeline_ops.cluster import ClusterError, argo_cd, git_server
from pipeline_ops.cluster.git_server import git
from pipeline_ops.cluster.layout import PRODUCTION_NAMESPACE, STAGING_NAMESPACE, USER, Layout
from pipeline_ops.cluster.pki import Pki
from pipeline_ops.cluster.platform import placement_patches
from pipeline_ops.paths import PROJECT_ROOT, TOOLS_DIR

log = logging.getLogger(__name__)

STAGING, PRODUCTION = "staging", "production"
BRANCHES = {STAGING: "staging", PRODUCTION: "main"}
NAMESPACES = {STAGING: STAGING_NAMESPACE, PRODUCTION: PRODUCTION_NAMESPACE}
APPLICATIONS = {STAGING: "pr-anomaly-mlops-staging", PRODUCTION: "pr-anomaly-mlops-production"}
# Argo CD's clusters: in-cluster under its usual address for staging, and under the API
# server's other Service name for production (one apiserver, two Argo CD cluster entries).
CLUSTER_SERVERS = {
    STAGING: "https://kubernetes.default.svc",
    PRODUCTION: "https://kubernetes.default.svc.cluster.local",
}
MODEL_FILE = f"argo-apps/base/{stages.stage('model-serving').name}-model.env"
KUSTOMIZATION = "argo-apps/base/kustomization.yaml"  # its `images:` list: the digests
SCRIPTS = PROJECT_ROOT / "ops" / "scripts"
GITHUB_REPOSITORY = "https://github.com/pr-anomaly-mlops/pr-anomaly-mlops.git"
LOCAL_ENVIRONMENT = PROJECT_ROOT / "ops" / "cluster" / "local-environment.yaml"


def repository_url() -> str:
    """GITOPS_REPOSITORY: the repository Argo CD reads (this cluster's git server)."""
    return os.environ.get("GITOPS_REPOSITORY", git_server.url(git_server.PROJECT_REPOSITORY))


def bare(layout: Layout) -> Path:
    """The git server's repository, as this machine pushes to it (the daemon is read-only)."""
    return git_server.init_bare(layout, git_server.PROJECT_REPOSITORY)


def head(layout: Layout, branch: str) -> str | None:
    found = commands.run(["git", "--git-dir", bare(layout), "rev-parse", "--verify", "-q",
                          f"refs/heads/{branch}"], what="git", check=False)  # fmt: skip
    return found.stdout.strip() or None


def merge_to_staging(
    layout: Layout, commit: str = "HEAD", source: Path = PROJECT_ROOT
) -> dict[str, str]:
    """This checkout's commit merged into ``staging`` as GitHub merges a pull request: pushed
    as a feature branch, then a merge commit on top of what ``staging`` holds (its pins
    stay; nothing is force-pushed, so ``main``, promoted from an earlier ``staging``, still
    merges cleanly). A fresh server's ``staging`` (and ``main``) start at the commit. Where
    the commit and ``staging`` both changed a pin (the images list, the model line), the
    deployed pin on ``staging`` wins, as a reviewer resolving the conflict would keep it;
    any other conflict is an error naming the files. The branch, the feature head and the
    new ``staging`` head."""
    target = bare(layout)
    sha = git("rev-parse", commit, cwd=source)
    feature = f"feature/{sha[:12]}"
    git("push", "--quiet", "--force", str(target), f"{sha}:refs/heads/{feature}", cwd=source)
    for branch in (BRANCHES[STAGING], BRANCHES[PRODUCTION]):
        if head(layout, branch) is None:
            git("push", "--quiet", str(target), f"{sha}:refs/heads/{branch}", cwd=source)
    with _work_tree(layout, BRANCHES[STAGING]) as tree:
        git("fetch", "--quiet", "origin", feature, cwd=tree)
        if not _contains(tree, "FETCH_HEAD"):
            merged = commands.run(["git", "merge", "--no-ff", "--no-edit", "-m",
                                   f"Merge pull request from {feature}", "FETCH_HEAD"],
                                  what="git merge", cwd=tree, check=False)  # fmt: skip
            if merged.returncode != 0:
                _keep_staging_pins(tree, feature)
            git("push", "--quiet", "origin", f"HEAD:{BRANCHES[STAGING]}", cwd=tree)
        return {"feature": feature, "commit": sha, "staging": git("rev-parse", "HEAD", cwd=tree)}


PIN_FILES = (MODEL_FILE, KUSTOMIZATION)


def _contains(tree: Path, commit: str) -> bool:
    found = commands.run(["git", "merge-base", "--is-ancestor", commit, "HEAD"], what="git",
                         cwd=tree, check=False)  # fmt: skip
    return found.returncode == 0


def _keep_staging_pins(tree: Path, feature: str) -> None:
    """Resolve a merge whose only conflicts are in the pin files with staging's side."""
    conflicted = git("diff", "--name-only", "--diff-filter=U", cwd=tree).split()
    others = sorted(set(conflicted) - set(PIN_FILES))
    if others or not conflicted:
        git("merge", "--abort", cwd=tree)
        raise ClusterError(
            f"{feature} does not merge into {BRANCHES[STAGING]}: conflicts in "
            f"{', '.join(others or ['(none reported)'])}; merge {BRANCHES[STAGING]} into "
            "your branch and resolve them, as on GitHub"
        )
    for path in conflicted:
        git("checkout", "--ours", "--", path, cwd=tree)
        git("add", "--", path, cwd=tree)
    git("commit", "--quiet", "--no-edit", cwd=tree)


def pin_images(layout: Layout, references: dict[str, str]) -> str:
    """Pin each image's digest on staging with the workflows' own bump script, committed as
    the workflows' bot; the head."""
    env = minimal_environment({"KUSTOMIZE": str(TOOLS_DIR / "bin" / "kustomize"), **WORKFLOW_GIT})
    for name, reference in references.items():
        commands.run([SCRIPTS / "pin-image-digest.sh", name, reference, bare(layout),
                      BRANCHES[STAGING]], what=f"pinning {name}'s digest on staging",
                     timeout=300, env=env)  # fmt: skip
    return head(layout, BRANCHES[STAGING]) or ""


def git_identity(name: str, email: str) -> dict[str, str]:
    return {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email,
            "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email}  # fmt: skip


# Who commits: the user (every commit the cluster run makes as a user), and the delivered
# components: the stage workflows' image bump (a GitHub App's bot in stage-image.yml; its
# script here) and model-pin (through the contents API, committing under its own name).
USER_GIT = git_identity(USER, f"{USER}@localhost")
WORKFLOW_BOT = "pr-anomaly-mlops-ci[bot]"
WORKFLOW_GIT = git_identity(WORKFLOW_BOT, f"{WORKFLOW_BOT}@users.noreply.github.com")


@contextmanager
def _work_tree(layout: Layout, branch: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="gitops-") as work:
        tree = Path(work) / "repo"
        git("clone", "--quiet", "--branch", branch, str(bare(layout)), str(tree))
        git("config", "user.name", USER_GIT["GIT_AUTHOR_NAME"], cwd=tree)
        git("config", "user.email", USER_GIT["GIT_AUTHOR_EMAIL"], cwd=tree)
        yield tree


def pin_model(layout: Layout, model_uri: str, branch: str = BRANCHES[STAGING]) -> str:
    """A user's pull request that serves ``model_uri`` (``models:/NAME/VERSION``) on
    ``branch``: one line committed on a feature branch, merged as GitHub merges it; the
    merge commit (``branch``'s head as it was if it pins that model already)."""
    with _work_tree(layout, branch) as tree:
        path = tree / MODEL_FILE
        lines = path.read_text().splitlines()
        wanted = f"SERVING_MODEL_URI={model_uri}"
        if wanted in lines:
            return git("rev-parse", "HEAD", cwd=tree)
        base = git("rev-parse", "HEAD", cwd=tree)
        feature = f"feature/pin-{model_uri.removeprefix('models:/').replace('/', '-')}"
        git("checkout", "--quiet", "-b", feature, cwd=tree)
        kept = [line for line in lines if not line.startswith("SERVING_MODEL_URI=")]
        path.write_text("\n".join([*kept, wanted]) + "\n")
        git("commit", "--quiet", "-am", f"serve {model_uri} on {branch}", cwd=tree)
        git("push", "--quiet", "--force", "origin", f"HEAD:refs/heads/{feature}", cwd=tree)
        git("checkout", "--quiet", "--detach", base, cwd=tree)
        git("merge", "--quiet", "--no-ff", "--no-edit", "-m",
            f"Merge pull request from {feature}", feature, cwd=tree)  # fmt: skip
        git("push", "--quiet", "origin", f"HEAD:{branch}", cwd=tree)
        return git("rev-parse", "HEAD", cwd=tree)


def revert_promotion(layout: Layout) -> str:
    """A rollback as a user makes it: ``git revert -m 1`` of the promotion's merge commit at
    ``main``'s head (its first parent is what production ran before), pushed; the new head."""
    main = BRANCHES[PRODUCTION]
    with _work_tree(layout, main) as tree:
        promotion = git("rev-parse", "HEAD", cwd=tree)
        if len(git("rev-list", "--parents", "-n", "1", promotion, cwd=tree).split()) != 3:
            raise ClusterError(f"{main}'s head {promotion[:12]} is not a promotion's merge commit")
        git("revert", "--no-edit", "-m", "1", promotion, cwd=tree)
        git("push", "--quiet", "origin", f"HEAD:{main}", cwd=tree)
        return git("rev-parse", "HEAD", cwd=tree)


def merge_main_into_staging(layout: Layout) -> str:
    """What GitHub's "update branch" does for ``staging``: ``main`` merged into it, so a
    rollback on ``main`` is in ``staging`` too and the next promotion carries only what is
    new (promote.sh refuses one that would leave the two on different models); the head."""
    main, staging = BRANCHES[PRODUCTION], BRANCHES[STAGING]
    with _work_tree(layout, staging) as tree:
        git("merge", "--quiet", "--no-ff", "--no-edit", "-m", f"Merge {main} into {staging}",
            f"origin/{main}", cwd=tree)  # fmt: skip
        git("push", "--quiet", "origin", f"HEAD:{staging}", cwd=tree)
        return git("rev-parse", "HEAD", cwd=tree)


def committer(layout: Layout, branch: str) -> str:
    """Who committed ``branch``'s head (a user, or a delivered component by its name)."""
    return git("--git-dir", str(bare(layout)), "log", "-1", "--format=%cn", branch)


def commits_since(layout: Layout, since: float) -> list[dict[str, str]]:
    """The commits on ``staging`` and ``main`` made since ``since`` (a time.time()), newest
    first: who authored and committed each, and on which branches it is."""
    found: dict[str, dict[str, str]] = {}
    for branch in (BRANCHES[STAGING], BRANCHES[PRODUCTION]):
        out = git("--git-dir", str(bare(layout)), "log", f"--since=@{int(since)}",
                  "--format=%H%x09%an%x09%cn%x09%s", branch)  # fmt: skip
        for line in out.splitlines():
            sha, author, committer, subject = line.split("\t", 3)
            entry = found.setdefault(sha, {"commit": sha[:12], "author": author,
                                           "committer": committer, "subject": subject,
                                           "branches": ""})  # fmt: skip
            entry["branches"] = " ".join(filter(None, (entry["branches"], branch)))
    return list(found.values())


def served_model(layout: Layout, branch: str) -> str:
    text = git("--git-dir", str(bare(layout)), "show", f"{branch}:{MODEL_FILE}")
    for line in text.splitlines():
        if line.startswith("SERVING_MODEL_URI="):
            return line.partition("=")[2]
    raise ClusterError(f"{MODEL_FILE} on {branch} has no SERVING_MODEL_URI")


def promote(layout: Layout) -> str:
    """``staging`` -> ``main`` by ``ops/scripts/promote.sh`` against this git server (what
    merging the promotion pull request does); main's new head."""
    env = minimal_environment({"PROMOTE_REMOTE": str(bare(layout)), **USER_GIT})
    commands.run([SCRIPTS / "promote.sh"], what="the promotion staging -> main", timeout=300,
                 cwd=PROJECT_ROOT, env=env)  # fmt: skip
    return head(layout, BRANCHES[PRODUCTION]) or ""


def differing_images(layout: Layout, branch: str, other: str) -> str:
    """What ``ops/scripts/compare-digests.sh`` (promote.sh's own check) says differs between
    the images two branches pin; empty when they agree."""
    result = commands.run(
        [SCRIPTS / "compare-digests.sh", "-C", bare(layout), branch, other],
        what="comparing the branches' digests", timeout=60, check=False,
    )  # fmt: skip
    if result.returncode == 2:
        raise ClusterError(f"compare-digests.sh {branch} {other}: {commands.tail(result.stderr)}")
    return "" if result.returncode == 0 else (result.stdout + result.stderr).strip()


def images_on(layout: Layout, branch: str) -> dict[str, str]:
    """The ``images:`` list of argo-apps/base on ``branch``: name -> reference."""
    text = git("--git-dir", str(bare(layout)), "show", f"{branch}:{KUSTOMIZATION}")
    images = {}
    for entry in yaml.safe_load(text).get("images") or []:
        name = entry.get("newName", entry["name"])
        if entry.get("digest"):
            images[entry["name"]] = f"{name}@{entry['digest']}"
        else:
            images[entry["name"]] = f"{name}:{entry.get('newTag', '')}"
    return images


# -- Argo CD ------------------------------------------------------------------------------
def built(folder: Path) -> list[dict[str, Any]]:
    """``kustomize build`` of a folder of argo-apps: its objects."""
    text = commands.output([TOOLS_DIR / "bin" / "kustomize", "build", folder],
                           what=f"kustomize build {folder}", timeout=60)  # fmt: skip
    return [o for o in yaml.safe_load_all(text) if o]


def local_patches(environment: str) -> list[dict[str, Any]]:
    """The local environment's settings (``ops/cluster/local-environment.yaml``) for
    ``environment``'s Application: kustomize patches for both, the platform services'
    placement (``platform.placement_patches``), then its own if any."""
    settings = yaml.safe_load(LOCAL_ENVIRONMENT.read_text())
    return [*settings["patches"], *placement_patches(), *settings.get(environment, [])]


def local_argocd_objects(environments: tuple[str, ...] = (STAGING, PRODUCTION)) -> list[dict]:
    """argo-apps/argocd for this cluster: the repository is GITOPS_REPOSITORY; production
    goes to its own namespace of this one cluster; both Applications get the local
    environment's patches after their own."""
    url = repository_url()
    wanted = {APPLICATIONS[e]: e for e in environments}
    objects = []
    for obj in built(PROJECT_ROOT / "argo-apps" / "argocd"):
        spec = obj["spec"]
        if obj["kind"] == "AppProject":
            repos = spec["sourceRepos"]
            spec["sourceRepos"] = [url if r == GITHUB_REPOSITORY else r for r in repos]
            for destination in spec["destinations"]:
                if destination.get("name") == PRODUCTION:
                    destination["namespace"] = PRODUCTION_NAMESPACE
        elif obj["kind"] == "Application":
            if obj["metadata"]["name"] not in wanted:
                continue
            if spec["source"]["repoURL"] == GITHUB_REPOSITORY:
                spec["source"]["repoURL"] = url
            kustomize = spec["source"].setdefault("kustomize", {})
            if spec["destination"].get("name") == PRODUCTION:
                spec["destination"]["namespace"] = PRODUCTION_NAMESPACE
                kustomize["namespace"] = PRODUCTION_NAMESPACE
            own = local_patches(wanted[obj["metadata"]["name"]])
            kustomize["patches"] = [*kustomize.get("patches", []), *own]
        objects.append(obj)
    return objects


def register_clusters(layout: Layout) -> None:
    """Argo CD's two clusters, registered as an administrator does (``argocd cluster add``)
    when Argo CD is installed: staging is in-cluster; production, the same API server under
    its other name, reached with the application controller's own token."""
    layout.kubectl().apply(_cluster_secrets(layout))


def _cluster_secrets(layout: Layout) -> list[dict]:
    account = "argocd-application-controller"
    token = layout.kubectl()("-n", argo_cd.NAMESPACE, "create", "token", account,
                             "--duration=8760h").strip()  # fmt: skip
    ca = base64.b64encode(Pki(layout).ca.read_bytes()).decode()
    configs = {
        STAGING: {"tlsClientConfig": {"insecure": False}},
        PRODUCTION: {"bearerToken": token, "tlsClientConfig": {"caData": ca}},
    }
    return [
        {
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": f"cluster-{env}", "namespace": argo_cd.NAMESPACE,
                         "labels": {"argocd.argoproj.io/secret-type": "cluster"}},
            "stringData": {"name": env, "server": CLUSTER_SERVERS[env],
                           "config": json.dumps(configs[env])},
        }
        for env in (STAGING, PRODUCTION)
    ]  # fmt: skip


def apply_applications(layout: Layout, environments: tuple[str, ...]) -> None:
    """A user's install of argo-apps/argocd (the AppProject and these Applications)."""
    layout.kubectl().apply(local_argocd_objects(environments))


def application(layout: Layout, environment: str) -> dict[str, Any]:
    return layout.kubectl().get(argo_cd.NAMESPACE, "application", APPLICATIONS[environment])


def wait_synced(layout: Layout, environment: str, revision: str, timeout: float = 300) -> dict:
    """Until the Application is Synced at ``revision`` with no sync running; its status.
    If it never is, the error carries Argo CD's last sync message. Argo CD sees a push
    within ``argo_cd.RECONCILIATION`` (the local environment's polling)."""
    status: dict[str, Any] = {}

    def synced() -> dict[str, Any] | None:
        nonlocal status
        status = application(layout, environment).get("status", {})
        operation = status.get("operationState", {})
        sync = status.get("sync", {})
        # a failed sync is retried by Argo CD (the Application's retry policy): its message
        # is what the timeout reports
        settled = operation.get("phase") not in ("Running", "Terminating")
        done = sync.get("revision") == revision and sync.get("status") == "Synced" and settled
        return status if done else None

    return wait_until(
        f"{APPLICATIONS[environment]} to sync {revision[:12]}", synced, timeout, every=3,
        seen=lambda: f"sync {status.get('sync')}, operation "
        f"{status.get('operationState', {}).get('message')}",
    )  # fmt: skip
