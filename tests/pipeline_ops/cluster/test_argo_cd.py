"""Argo CD for real: an Application on a repository of the cluster's git server (git daemon
on the bridge address) syncs what is pushed to it, commit by commit."""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path

import pytest
from kube_namespace import Namespace, wait_for

from pipeline_ops.cluster import argo_cd, git_server

pytestmark = pytest.mark.cluster


def _commit(work: Path, message: str) -> str:
    """Commit a ConfigMap saying ``message`` and push it to the git server; the commit."""
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "greeting"},
        "data": {"message": message},
    }
    (work / "greeting.yaml").write_text(json.dumps(configmap))
    for args in (("add", "greeting.yaml"), ("commit", "-q", "-m", message),
                 ("push", "-q", "origin", "HEAD:main")):  # fmt: skip
        subprocess.run(["git", *args], cwd=work, check=True, capture_output=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=work, check=True,
                          capture_output=True, text=True).stdout.strip()  # fmt: skip


def test_argo_cd_syncs_each_commit_pushed_to_the_git_server(ns: Namespace, tmp_path: Path) -> None:
    layout = ns.cluster.layout
    repository = f"test-{secrets.token_hex(3)}.git"
    bare = git_server.init_bare(layout, repository)
    work = tmp_path / "work"
    subprocess.run(["git", "clone", "-q", str(bare), str(work)], check=True, capture_output=True)
    for key, value in (("user.name", "cluster test"), ("user.email", "test@pr-anomaly.local")):
        subprocess.run(["git", "config", key, value], cwd=work, check=True)
    first = _commit(work, "hello")
    application = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "metadata": {"name": ns.name, "namespace": argo_cd.NAMESPACE},
        "spec": {
            "project": "default",
            "source": {
                "repoURL": git_server.url(repository),
                "targetRevision": "main",
                "path": ".",
            },
            "destination": {"server": "https://kubernetes.default.svc", "namespace": ns.name},
            "syncPolicy": {"automated": {"prune": True}},
        },
    }
    layout.kubectl()("apply", "-f", "-", stdin=json.dumps(application))

    def app() -> dict:
        return json.loads(
            layout.kubectl()("-n", argo_cd.NAMESPACE, "get", "application", ns.name, "-o", "json")
        ).get("status", {})

    def synced_at(commit: str) -> dict | None:
        status = app()
        sync = status.get("sync", {})
        done = sync.get("status") == "Synced" and sync.get("revision") == commit
        return status if done and status.get("health", {}).get("status") == "Healthy" else None

    def greeting() -> str:
        return ns.kubectl("get", "configmap", "greeting", "-o", "jsonpath={.data.message}")

    try:
        wait_for(f"Synced and Healthy at {first}", lambda: synced_at(first), timeout=120)
        assert greeting() == "hello"

        second = _commit(work, "goodbye")
        # no refresh, no webhook: Argo CD here reads git every argo_cd.RECONCILIATION
        wait_for(f"Synced at {second}", lambda: synced_at(second), timeout=120)
        assert greeting() == "goodbye"
        history = [h["revision"] for h in app()["history"]]
        assert history == [first, second]
    finally:
        layout.kubectl()("-n", argo_cd.NAMESPACE, "delete", "application", ns.name,
                "--wait=false")  # fmt: skip


def test_the_git_server_serves_this_repositorys_branches(ns: Namespace) -> None:
    branch = subprocess.run(["git", "branch", "--show-current"], capture_output=True, text=True,
                            check=True).stdout.strip()  # fmt: skip
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip
    git_server.sync_project(ns.cluster.layout)
    served = subprocess.run(
        ["git", "ls-remote", git_server.url(git_server.PROJECT_REPOSITORY), f"refs/heads/{branch}"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout.split()  # fmt: skip
    assert served == [head, f"refs/heads/{branch}"]
