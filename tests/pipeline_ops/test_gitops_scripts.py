"""The GitOps scripts the workflows and the local cluster share, run for real: real git, real
kustomize, bare repositories in a temporary directory (a path, or `git daemon`'s git://).

- ops/scripts/pin-image-digest.sh: the stage workflows' bump, the local cluster's pin;
- ops/scripts/promote.sh: staging -> main (`make promote`, the promote workflow);
- ops/scripts/compare-digests.sh: whether two branches pin the same images.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from git_seed import git_environment, seed_bare

from pipeline_ops.base.processes import free_port
from pipeline_ops.paths import PROJECT_ROOT, TOOLS_DIR

SCRIPTS = PROJECT_ROOT / "ops" / "scripts"
KUSTOMIZATION = "argo-apps/base/kustomization.yaml"
STAGE_IMAGE_WORKFLOW = PROJECT_ROOT / ".github" / "workflows" / "stage-image.yml"


def _pushed(name: str, fill: str) -> str:
    """A pushed image's reference as the registry reports it: REPOSITORY@sha256:DIGEST."""
    return f"registry.local/pr-anomaly/{name}@sha256:{fill * 64}"


@dataclass
class GitOpsRemote:
    """A bare repository holding this checkout's argo-apps/base, as GitHub or the local
    cluster's git server would, and the environment the scripts run in."""

    path: Path
    env: dict[str, str]

    def git(self, *args: str) -> str:
        return subprocess.run(
            ["git", "--git-dir", str(self.path), *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    def tip(self, branch: str) -> str:
        return self.git("rev-parse", f"refs/heads/{branch}")

    def subjects(self, branch: str, count: int) -> list[str]:
        return self.git("log", f"-{count}", "--format=%s", f"refs/heads/{branch}").splitlines()

    def images(self, branch: str) -> dict[str, dict[str, str]]:
        """The images: list of a branch, by name."""
        text = self.git("show", f"refs/heads/{branch}:{KUSTOMIZATION}")
        return {entry["name"]: entry for entry in yaml.safe_load(text)["images"]}

    def pinned(self, branch: str, name: str) -> str:
        entry = self.images(branch)[name]
        return f"{entry['newName']}@{entry['digest']}" if "digest" in entry else ""

    def run(
        self, script: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.command([str(SCRIPTS / script), *args], env=env)

    def command(
        self, args: list[str], env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args,
            env={**self.env, **(env or {})},
            cwd=self.path.parent,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )

    def pin(self, name: str, fill: str, branch: str = "staging", url: str = "") -> str:
        reference = _pushed(name, fill)
        result = self.run("pin-image-digest.sh", name, reference, url or str(self.path), branch)
        assert result.returncode == 0, result.stderr
        return reference


@pytest.fixture
def remote(tmp_path: Path) -> GitOpsRemote:
    """Branches staging and main at one commit of argo-apps/base; no git config of this host."""
    env = git_environment(
        tmp_path, GIT_TERMINAL_PROMPT="0", KUSTOMIZE=str(TOOLS_DIR / "bin" / "kustomize")
    )
    seed = tmp_path / "seed"
    shutil.copytree(PROJECT_ROOT / "argo-apps" / "base", seed / "argo-apps" / "base")
    path = seed_bare(tmp_path / "pr-anomaly.git", seed, ("staging", "main"), env)
    bare = GitOpsRemote(path, env)
    return bare


@pytest.fixture
def git_daemon(remote: GitOpsRemote) -> Iterator[str]:
    """`git daemon` serving the remote over git://, pushes allowed, as the local cluster's."""
    port = free_port()
    folder = remote.path.parent
    command = ["git", "daemon", "--reuseaddr", "--export-all", "--enable=receive-pack",
               "--listen=127.0.0.1", f"--port={port}",
               f"--base-path={folder}", str(folder)]  # fmt: skip
    daemon = subprocess.Popen(
        command,
        env=remote.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert daemon.poll() is None, "git daemon exited"
                assert time.monotonic() < deadline, "git daemon did not listen"
                time.sleep(0.05)
        yield f"git://127.0.0.1:{port}/{remote.path.name}"
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)


# ---- pin-image-digest.sh -------------------------------------------------------------------


def test_a_pin_is_one_commit_on_the_branch_that_the_manifests_then_run(
    remote: GitOpsRemote, tmp_path: Path
):
    before = remote.tip("staging")
    reference = remote.pin("data-fetch", "a")

    digest = reference.split("@")[1]
    assert remote.subjects("staging", 1) == [f"deploy data-fetch {digest} to staging"]
    assert remote.git("rev-parse", "refs/heads/staging~1") == before
    changed = remote.git("diff", "--name-only", before, "refs/heads/staging").splitlines()
    assert changed == [KUSTOMIZATION]
    assert remote.tip("main") == before  # only the branch named
    # What Argo CD renders from the branch runs exactly that digest.
    checkout = tmp_path / "checkout"
    remote.command(
        ["git", "clone", "--quiet", "--branch", "staging", str(remote.path), str(checkout)]
    )
    built = subprocess.run(
        [remote.env["KUSTOMIZE"], "build", str(checkout / "argo-apps/base")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cronjob = next(d for d in yaml.safe_load_all(built) if d and d["kind"] == "CronJob")
    container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == reference


def test_a_second_pin_of_the_same_digest_changes_nothing(remote: GitOpsRemote):
    reference = remote.pin("model-serving", "b")
    tip = remote.tip("staging")

    again = remote.run(
        "pin-image-digest.sh", "model-serving", reference, str(remote.path), "staging"
    )

    assert again.returncode == 0, again.stderr
    assert "already pinned" in again.stdout
    assert remote.tip("staging") == tip


def test_a_push_lost_to_another_images_pin_is_pinned_again_on_top(
    remote: GitOpsRemote, tmp_path: Path
):
    # A `git` on PATH that, at the first push, lets another image's pin land first: between
    # this run's fetch and its push the branch moves, as when two stages finish together.
    real_git = shutil.which("git")
    assert real_git
    other = _pushed("model-serving", "d")
    wrapper = tmp_path / "bin" / "git"
    wrapper.parent.mkdir()
    wrapper.write_text(
        "#!/bin/sh\n"
        'case " $* " in *" push "*)\n'
        '  if mkdir "$RACE_MARK" 2>/dev/null; then\n'
        '    PATH="$REAL_PATH" "$PIN" model-serving "$OTHER" "$REMOTE" staging >&2 || exit 1\n'
        "  fi ;;\n"
        "esac\n"
        'exec "$REAL_GIT" "$@"\n'
    )
    wrapper.chmod(0o755)
    race = {
        "PATH": f"{wrapper.parent}:{remote.env['PATH']}",
        "REAL_PATH": remote.env["PATH"],
        "REAL_GIT": real_git,
        "PIN": str(SCRIPTS / "pin-image-digest.sh"),
        "OTHER": other,
        "REMOTE": str(remote.path),
        "RACE_MARK": str(tmp_path / "raced"),
    }
    reference = _pushed("data-fetch", "c")

    result = remote.run(
        "pin-image-digest.sh", "data-fetch", reference, str(remote.path), "staging", env=race
    )

    assert result.returncode == 0, result.stderr
    assert "lost a race" in result.stderr
    assert remote.pinned("staging", "data-fetch") == reference
    assert remote.pinned("staging", "model-serving") == other
    assert remote.subjects("staging", 2) == [
        f"deploy data-fetch sha256:{'c' * 64} to staging",
        f"deploy model-serving sha256:{'d' * 64} to staging",
    ]
    assert remote.git("rev-list", "--merges", "refs/heads/staging") == ""


def test_four_images_pinned_at_once_all_land(remote: GitOpsRemote):
    names = ["data-fetch", "spark-preprocess", "ml-training", "model-serving"]
    references = {name: _pushed(name, fill) for name, fill in zip(names, "1234", strict=True)}
    runs = [
        subprocess.Popen(
            [str(SCRIPTS / "pin-image-digest.sh"), name, ref, str(remote.path), "staging"],
            env=remote.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, ref in references.items()
    ]
    outcomes = [(run.wait(timeout=120), run.communicate()[1]) for run in runs]

    assert [code for code, _ in outcomes] == [0, 0, 0, 0], outcomes
    assert {name: remote.pinned("staging", name) for name in names} == references
    assert len(remote.subjects("staging", 5)) == 5  # four pins on the seed commit


@pytest.mark.parametrize(
    ("name", "reference", "expected"),
    [
        ("data-fetch", "registry.local/data-fetch:0.2.0", "is not REPOSITORY@sha256:"),
        ("data-fetch", "registry.local/data-fetch@sha256:abc", "is not REPOSITORY@sha256:"),
        ("Data Fetch", _pushed("data-fetch", "e"), "is no image name"),
    ],
)
def test_a_reference_that_is_not_a_digest_is_refused(
    remote: GitOpsRemote, name: str, reference: str, expected: str
):
    tip = remote.tip("staging")
    result = remote.run("pin-image-digest.sh", name, reference, str(remote.path), "staging")
    assert result.returncode == 2
    assert expected in result.stderr
    assert remote.tip("staging") == tip


def test_an_image_missing_from_the_list_is_not_added(remote: GitOpsRemote):
    tip = remote.tip("staging")
    result = remote.run(
        "pin-image-digest.sh",
        "data-fetcher",
        _pushed("data-fetcher", "f"),
        str(remote.path),
        "staging",
    )
    assert result.returncode == 1
    assert "data-fetcher is not in the images: list" in result.stderr
    assert remote.tip("staging") == tip


def test_credentials_in_a_remote_url_are_never_printed(remote: GitOpsRemote):
    quiet = {k: v for k, v in remote.env.items() if not k.lower().endswith("_proxy")}
    url = f"https://x-access-token:s3cr3t-token@127.0.0.1:{free_port()}/owner/repo.git"
    result = subprocess.run(
        [
            str(SCRIPTS / "pin-image-digest.sh"),
            "data-fetch",
            _pushed("data-fetch", "a"),
            url,
            "staging",
        ],
        env=quiet,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 1
    assert "cannot fetch branch staging from https://127.0.0.1:" in result.stderr
    assert "s3cr3t-token" not in result.stdout + result.stderr


def test_the_bump_job_hands_its_token_to_git_through_a_helper_only(remote: GitOpsRemote):
    workflow = yaml.safe_load(STAGE_IMAGE_WORKFLOW.read_text())
    step = next(
        s for s in workflow["jobs"]["bump"]["steps"] if "pin-image-digest.sh" in s.get("run", "")
    )
    assert "GH_TOKEN" not in step["run"]  # not in the URL, not on a command line
    helper = {
        key: str(value).replace("${{ github.server_url }}", "https://github.com")
        for key, value in step["env"].items()
        if key.startswith("GIT_CONFIG_")
    }
    env = {**remote.env, **helper, "GH_TOKEN": "t0ken-of-this-run"}

    def fill(host: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["git", "credential", "fill"],
            input=f"protocol=https\nhost={host}\npath=owner/repo.git\n\n",
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )

    assert "password=t0ken-of-this-run" in fill("github.com").stdout
    assert "t0ken-of-this-run" not in fill("example.org").stdout


def test_a_pin_over_the_git_protocol(remote: GitOpsRemote, git_daemon: str):
    reference = remote.pin("ml-training", "4", url=git_daemon)
    assert remote.pinned("staging", "ml-training") == reference


# ---- compare-digests.sh and promote.sh -----------------------------------------------------


def _compare(remote: GitOpsRemote, a: str, b: str) -> subprocess.CompletedProcess[str]:
    return remote.run("compare-digests.sh", "-C", str(remote.path), a, b)


def test_compare_digests_names_each_image_that_differs(remote: GitOpsRemote):
    assert _compare(remote, "main", "staging").returncode == 0
    reference = remote.pin("ml-training", "7")

    differs = _compare(remote, "main", "staging")

    assert differs.returncode == 1
    assert "image ml-training differs: main has registry.example.com" in differs.stderr
    assert f"staging has {reference}" in differs.stderr
    assert "data-fetch" not in differs.stderr


def test_a_local_promotion_merges_staging_into_main_with_the_same_digests(remote: GitOpsRemote):
    main_before = remote.tip("main")
    serving = remote.pin("model-serving", "8")
    gate = remote.pin("load-gate", "9")
    staging = remote.tip("staging")

    result = remote.run("promote.sh", str(remote.path))

    assert result.returncode == 0, result.stderr
    parents = remote.git("rev-list", "--parents", "-n", "1", "refs/heads/main").split()[1:]
    assert parents == [main_before, staging]  # a merge commit, as GitHub's merge button makes
    assert remote.images("main") == remote.images("staging")
    assert remote.pinned("main", "model-serving") == serving
    assert remote.pinned("main", "load-gate") == gate
    assert _compare(remote, "main", "staging").returncode == 0
    assert "images:\n" in result.stdout
    assert f"digest: sha256:{'8' * 64}" in result.stdout


def test_make_promote_with_a_plain_remote_then_again_has_nothing_to_do(remote: GitOpsRemote):
    remote.pin("data-fetch", "5")
    make = ["make", "--no-print-directory", "-C", str(PROJECT_ROOT), "promote"]

    first = remote.command([*make, f"PROMOTE_REMOTE={remote.path}"])
    promoted = remote.tip("main")
    second = remote.command(make, env={"PROMOTE_REMOTE": str(remote.path)})

    assert first.returncode == 0, first.stderr
    assert remote.images("main") == remote.images("staging")
    assert second.returncode == 0, second.stderr
    assert "nothing to merge" in second.stdout
    assert remote.tip("main") == promoted


def test_a_first_promotion_creates_main_from_staging(remote: GitOpsRemote):
    remote.git("update-ref", "-d", "refs/heads/main")
    remote.pin("spark-preprocess", "6")

    result = remote.run("promote.sh", str(remote.path))

    assert result.returncode == 0, result.stderr
    assert remote.tip("main") == remote.tip("staging")


def test_a_promotion_that_would_leave_main_on_other_images_pushes_nothing(remote: GitOpsRemote):
    # A digest pinned on main alone (a hotfix) survives the merge of a staging that never
    # touched that image: production would not run what staging runs.
    hotfix = remote.pin("spark-preprocess", "0", branch="main")
    remote.pin("data-fetch", "1")
    main_before = remote.tip("main")

    result = remote.run("promote.sh", str(remote.path))

    assert result.returncode == 1
    assert f"image spark-preprocess differs: main has {hotfix}" in result.stderr
    assert "not pushed" in result.stderr
    assert remote.tip("main") == main_before


def test_a_staging_that_does_not_merge_into_main_pushes_nothing(remote: GitOpsRemote):
    remote.pin("data-fetch", "2", branch="main")
    remote.pin("data-fetch", "3")
    main_before = remote.tip("main")

    result = remote.run("promote.sh", str(remote.path))

    assert result.returncode == 1
    assert "staging does not merge cleanly into main" in result.stderr
    assert remote.tip("main") == main_before


def test_a_github_remote_is_promoted_by_pull_request_only(remote: GitOpsRemote):
    result = remote.run("promote.sh", "https://github.com/owner/repo.git")
    assert result.returncode == 1
    assert "promoted by pull request" in result.stderr


def test_pin_and_promote_over_the_git_protocol(remote: GitOpsRemote, git_daemon: str):
    reference = remote.pin("model-serving", "3", url=git_daemon)

    result = remote.run("promote.sh", git_daemon)

    assert result.returncode == 0, result.stderr
    assert git_daemon in result.stdout
    assert remote.pinned("main", "model-serving") == reference
    assert remote.images("main") == remote.images("staging")


# ---- rolling back by revert --------------------------------------------------------------

MODEL_PIN = "argo-apps/base/model-serving-model.env"


def _in_clone(remote: GitOpsRemote, branch: str, *steps: list[str]) -> str:
    """Run git ``steps`` in a fresh clone of ``branch`` as a user would, push it; the tip."""
    clone = remote.path.parent / f"clone-{branch}"
    shutil.rmtree(clone, ignore_errors=True)
    user = ["-c", "user.name=user", "-c", "user.email=user@localhost"]
    for step in (["clone", "--quiet", "--branch", branch, str(remote.path), str(clone)], *steps,
                 ["push", "--quiet", "origin", f"HEAD:{branch}"]):  # fmt: skip
        cwd = clone if step[0] != "clone" else remote.path.parent
        subprocess.run(["git", *user, *step], cwd=cwd, env=remote.env, check=True,
                       capture_output=True)  # fmt: skip
    return remote.tip(branch)


def _pin_model(remote: GitOpsRemote, version: int, branch: str = "staging") -> str:
    line = f"SERVING_MODEL_URI=models:/pr-anomaly/{version}\n"
    write = ["-c", f"alias.pin=!printf '{line}' > {MODEL_PIN}", "pin"]
    return _in_clone(remote, branch, write, ["commit", "--quiet", "-am", f"serve v{version}"])


def _served(remote: GitOpsRemote, branch: str) -> str:
    return remote.git("show", f"refs/heads/{branch}:{MODEL_PIN}").strip()


def test_a_rollback_by_revert_holds_until_staging_takes_it(remote: GitOpsRemote):
    _pin_model(remote, 2)
    assert remote.run("promote.sh", str(remote.path)).returncode == 0
    promotion = remote.tip("main")
    # the rollback: production's promotion reverted on main, as a user does on GitHub
    _in_clone(remote, "main", ["revert", "--no-edit", "-m", "1", promotion])
    assert _served(remote, "main").endswith("/1")
    rolled_back = remote.tip("main")

    # staging still serves v2: promoting it again is refused, naming both, nothing pushed
    again = remote.run("promote.sh", str(remote.path))
    assert again.returncode == 1
    assert "main would serve models:/pr-anomaly/1, staging serves models:/pr-anomaly/2" in (
        again.stderr
    )
    assert "merge main into staging" in again.stderr
    assert remote.tip("main") == rolled_back

    # the way back: main merged into staging (staging serves v1 too), a new model pinned
    _in_clone(remote, "staging", ["pull", "--quiet", "--no-rebase", "origin", "main"])
    assert _served(remote, "staging").endswith("/1")
    _pin_model(remote, 3)
    promoted = remote.run("promote.sh", str(remote.path))
    assert promoted.returncode == 0, promoted.stderr
    assert _served(remote, "main").endswith("/3")
