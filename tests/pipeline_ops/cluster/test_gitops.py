"""How the cluster run's commits reach the git server, with real git and no cluster: a
checkout is merged into ``staging`` as a pull request is (never force-pushed), so the pins
on ``staging`` survive and ``main``, promoted earlier, still merges cleanly."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pipeline_ops.cluster import ClusterError, git_server, gitops, platform
from pipeline_ops.cluster.layout import BRIDGE_IP, Layout
from pipeline_ops.validate.checks import reach_problems

KUSTOMIZATION = gitops.KUSTOMIZATION


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def _commit(repo: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    _git(repo, "add", "-A")
    _git(repo, "commit", "--quiet", "-m", message)
    return _git(repo, "rev-parse", "HEAD")


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A developer's checkout: the model pin and the images list, as the project has them."""
    repo = tmp_path / "checkout"
    repo.mkdir()
    _git(repo, "init", "--quiet", "--initial-branch=main")
    _git(repo, "config", "user.name", "dev")
    _git(repo, "config", "user.email", "dev@example.com")
    _commit(repo, {gitops.MODEL_FILE: "SERVING_MODEL_URI=models:/pr-anomaly/1\n",
                   KUSTOMIZATION: "images: []\n", "README.md": "one\n"}, "first")  # fmt: skip
    return repo


def _promote(layout: Layout) -> None:
    """What merging the promotion pull request does: staging merged into main."""
    with gitops._work_tree(layout, gitops.BRANCHES[gitops.PRODUCTION]) as tree:
        _git(tree, "fetch", "--quiet", "origin", gitops.BRANCHES[gitops.STAGING])
        _git(tree, "merge", "--quiet", "--no-ff", "--no-edit", "FETCH_HEAD")
        _git(tree, "push", "--quiet", "origin", f"HEAD:{gitops.BRANCHES[gitops.PRODUCTION]}")


def test_a_second_run_merges_and_promotes_cleanly(checkout: Path, tmp_path: Path) -> None:
    layout = Layout(tmp_path / "state")
    first = gitops.merge_to_staging(layout, source=checkout)
    assert gitops.head(layout, "staging") == gitops.head(layout, "main") == first["commit"]
    pinned = gitops.pin_model(layout, "models:/pr-anomaly/2")
    _promote(layout)

    # the next run: new work in the checkout, a new model on staging, promoted again
    _commit(checkout, {"README.md": "two\n"}, "more work")
    second = gitops.merge_to_staging(layout, source=checkout)
    assert gitops.served_model(layout, "staging") == "models:/pr-anomaly/2"  # the pin stays
    history = _git(gitops.bare(layout), "rev-list", "staging")
    assert pinned in history.split()  # nothing was force-pushed over what main holds
    parents = _git(gitops.bare(layout), "rev-list", "--parents", "-n1", second["staging"])
    assert len(parents.split()) == 3  # a merge commit: the feature branch and staging
    gitops.pin_model(layout, "models:/pr-anomaly/3")
    _promote(layout)  # was: CONFLICT in model-serving-model.env
    assert gitops.served_model(layout, "main") == "models:/pr-anomaly/3"


def test_a_checkout_that_changed_a_pin_keeps_stagings_pin(checkout, tmp_path) -> None:
    layout = Layout(tmp_path / "state")
    gitops.merge_to_staging(layout, source=checkout)
    gitops.pin_model(layout, "models:/pr-anomaly/4")
    _commit(checkout, {gitops.MODEL_FILE: "SERVING_MODEL_URI=models:/pr-anomaly/2\n"}, "old pin")
    gitops.merge_to_staging(layout, source=checkout)
    assert gitops.served_model(layout, "staging") == "models:/pr-anomaly/4"


def test_any_other_conflict_is_named_and_nothing_is_pushed(checkout, tmp_path) -> None:
    layout = Layout(tmp_path / "state")
    gitops.merge_to_staging(layout, source=checkout)
    with gitops._work_tree(layout, "staging") as tree:  # someone else's change on staging
        _commit(tree, {"README.md": "theirs\n"}, "theirs")
        _git(tree, "push", "--quiet", "origin", "HEAD:staging")
    before = gitops.head(layout, "staging")
    _commit(checkout, {"README.md": "mine\n"}, "mine")
    with pytest.raises(ClusterError, match=r"conflicts in README\.md"):
        gitops.merge_to_staging(layout, source=checkout)
    assert gitops.head(layout, "staging") == before


def _build_as_argo_cd(application: dict, into: Path) -> list[dict]:
    """argo-apps/base with the Application's kustomize settings, built as Argo CD builds it
    (its patches and namespace added to the kustomization)."""
    import shutil

    import yaml

    from pipeline_ops.paths import PROJECT_ROOT, TOOLS_DIR

    base = into / "base"
    shutil.copytree(PROJECT_ROOT / "argo-apps" / "base", base)
    kustomize = application["spec"]["source"].get("kustomize", {})
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    kustomization["patches"] = kustomize.get("patches", [])
    if "namespace" in kustomize:
        kustomization["namespace"] = kustomize["namespace"]
    (base / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    built = subprocess.run([TOOLS_DIR / "bin" / "kustomize", "build", base], check=True,
                           capture_output=True, text=True).stdout  # fmt: skip
    return [o for o in yaml.safe_load_all(built) if o]


def _find(objects: list[dict], kind: str, name: str) -> dict:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


@pytest.mark.parametrize("environment", [gitops.STAGING, gitops.PRODUCTION])
def test_the_local_environment_shortens_the_waits_and_only_production_follows_champion(
    environment: str, tmp_path: Path
) -> None:
    application = next(
        o for o in gitops.local_argocd_objects((environment,)) if o["kind"] == "Application"
    )
    objects = _build_as_argo_cd(application, tmp_path)

    post = _find(objects, "AnalysisTemplate", "model-serving-post-promotion")["spec"]["metrics"][0]
    assert (post["interval"], post["count"]) == ("15s", 3)
    pre = _find(objects, "AnalysisTemplate", "model-serving-pre-promotion")["spec"]["metrics"]
    gate = next(m for m in pre if m["name"] == "load-gate")
    args = gate["provider"]["job"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--run-time") + 1] == "20s"
    rules = _find(objects, "PrometheusRule", "model-serving")["spec"]["groups"][0]["rules"]
    drift = next(r for r in rules if r["alert"] == "ModelServingFeatureDrift")
    assert drift["for"] == "30s"
    assert drift["expr"].rstrip().endswith(") > 0.25")
    champion = _find(objects, "CronJob", "model-champion")["spec"]
    assert champion["schedule"] == "* * * * *"
    # one registry serves both environments: only production's version is the champion
    assert champion["suspend"] is (environment == gitops.STAGING)
    # and only staging's pin follows training (production's comes by promotion), written
    # through this cluster's GitHub contents API
    pin = _find(objects, "CronJob", "model-pin")["spec"]
    assert pin["schedule"] == "* * * * *"
    assert pin["suspend"] is (environment == gitops.PRODUCTION)
    env = pin["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["env"]
    settings = {e["name"]: e.get("value") for e in env}
    assert settings["PIN_GITHUB_API_URL"] == git_server.contents_url()
    assert settings["PIN_REPOSITORY"] == git_server.GITHUB_NAME
    # staging's Spark schedule comes within minutes of a run's fetch; production's is nightly
    spark = _find(objects, "ScheduledSparkApplication", "spark-preprocess")["spec"]
    shipped = "0 3 * * *"
    assert spark["schedule"] == ("*/5 * * * *" if environment == gitops.STAGING else shipped)


@pytest.mark.parametrize("environment", [gitops.STAGING, gitops.PRODUCTION])
def test_the_local_environment_places_each_platform_service_at_its_host_process(
    environment: str, tmp_path: Path
) -> None:
    """The local placement (README: NetworkPolicies): each platform service's policy sends
    its workloads to the bridge address and the fixed port its host process listens on,
    and the policies still give every workload exactly what it needs (make validate's
    evaluation, here on what Argo CD syncs into this cluster)."""
    application = next(
        o for o in gitops.local_argocd_objects((environment,)) if o["kind"] == "Application"
    )
    objects = _build_as_argo_cd(application, tmp_path)
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    for service in platform.SERVICE_NAMES:
        egress = _find(objects, "NetworkPolicy", f"egress-to-{service.placement}")["spec"]
        assert egress["egress"] == [
            {"to": [{"ipBlock": {"cidr": f"{BRIDGE_IP}/32"}}],
             "ports": [{"protocol": "TCP", "port": service.host_port}]}
        ]  # fmt: skip
    dns = _find(objects, "NetworkPolicy", "egress-to-dns")["spec"]["egress"][0]
    assert {(p["protocol"], p["port"]) for p in dns["ports"]} == {("UDP", 1053), ("TCP", 1053)}
    assert reach_problems(policies) == []


def test_a_cluster_up_never_rewrites_what_the_git_server_holds(tmp_path: Path) -> None:
    """`cluster-up` pushes this checkout's branches as a developer pushes to GitHub: a branch
    the server moved on (main after a promotion) keeps its commits, none is deleted."""
    layout = Layout(tmp_path / "cluster")
    first = git_server.sync_project(layout)
    bare = gitops.bare(layout)
    branch = _git(Path.cwd(), "branch", "--show-current") or first[0]
    tip = _git(bare, "rev-parse", f"refs/heads/{branch}")
    tree = _git(bare, "rev-parse", f"{tip}^{{tree}}")
    moved = _git(bare, "-c", "user.name=model-pin", "-c", "user.email=pin@localhost",
                 "commit-tree", "-p", tip, "-m", "a pin the server made", tree)  # fmt: skip
    _git(bare, "update-ref", f"refs/heads/{branch}", moved)
    _git(bare, "update-ref", "refs/heads/staging", moved)

    again = git_server.sync_project(layout)

    assert _git(bare, "rev-parse", f"refs/heads/{branch}") == moved
    assert set(again) == set(first) | {"staging"}
