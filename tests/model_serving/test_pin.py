"""`model-pin`: what training registers becomes one commit that pins it, once per version,
against a real MLflow and our GitHub contents API over a real bare repository."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from git_seed import git_environment, seed_bare
from mlflow import MlflowClient

from model_serving.pin import COMMITTER, PINNED_TAG, GitHubContents, pin_newest
from pipeline_common.cli import StageError
from pipeline_ops.base import commands
from pipeline_ops.github_contents_server import GitHubContentsServer

MODEL = "pin-under-test"  # its own name: other tests register pr-anomaly versions too
REPOSITORY = "octo-org/gitops"
PIN_FILE = "argo-apps/base/model-serving-model.env"
TOKEN = "ghs_model-pin-test-token"


class Remote:
    def __init__(self, path: Path, env: dict[str, str]):
        self.path, self.env = path, env

    def git(self, *args: str) -> str:
        return commands.output(["git", "--git-dir", self.path, *args], env=self.env).strip()

    def pinned(self) -> str:
        """The pin file on staging (stripped)."""
        return self.git("show", f"refs/heads/staging:{PIN_FILE}")

    def commits(self) -> list[str]:
        return self.git("log", "--format=%cn: %s", "refs/heads/staging").splitlines()


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    """A GitOps repository whose staging pins version 1 of the model."""
    env = git_environment(tmp_path)
    seed = tmp_path / "seed"
    (seed / PIN_FILE).parent.mkdir(parents=True)
    (seed / PIN_FILE).write_text(f"# the served model\nSERVING_MODEL_URI=models:/{MODEL}/1\n")
    bare = seed_bare(tmp_path / "gitops.git", seed, ("staging",), env)
    return Remote(bare, env)


@pytest.fixture
def github(remote: Remote) -> Iterator[GitHubContents]:
    with GitHubContentsServer({REPOSITORY: remote.path}, TOKEN, environment=remote.env) as server:
        yield GitHubContents(server.url, REPOSITORY, TOKEN, timeout=10)


def _pin(registered_model, github: GitHubContents) -> dict:
    return pin_newest(registered_model["tracking_uri"], MODEL, github, "staging", PIN_FILE)


def test_each_new_version_is_pinned_once_and_a_revert_stands(
    registered_model, register_scorer, remote: Remote, github: GitHubContents
) -> None:
    client = MlflowClient(registered_model["tracking_uri"])
    register_scorer(MODEL)
    newest = register_scorer(MODEL)

    pinned = _pin(registered_model, github)

    assert pinned["pinned"] is True
    assert f"SERVING_MODEL_URI=models:/{MODEL}/{newest}" in remote.pinned()
    assert remote.pinned().startswith("# the served model\n")  # the rest of the file kept
    assert remote.commits()[0] == (
        f"{COMMITTER['name']}: serve models:/{MODEL}/{newest} on staging "
        "(model-pin: newest registered version)"
    )
    assert client.get_model_version(MODEL, newest).tags[PINNED_TAG] == (
        f"staging@{pinned['commit']}"
    )
    head = remote.git("rev-parse", "refs/heads/staging")

    # nothing new: nothing written
    assert _pin(registered_model, github)["pinned"] is False
    assert remote.git("rev-parse", "refs/heads/staging") == head

    # a user rolls staging back to version 1: the next run leaves it so
    github.write(PIN_FILE, "staging", f"SERVING_MODEL_URI=models:/{MODEL}/1\n",
                 github.read(PIN_FILE, "staging")[1], "roll back")  # fmt: skip
    again = _pin(registered_model, github)
    assert again["pinned"] is False
    assert "pinned once already" in again["reason"]
    assert remote.pinned() == f"SERVING_MODEL_URI=models:/{MODEL}/1"

    # a newer version is pinned on top of the rollback
    newer = register_scorer(MODEL)
    assert _pin(registered_model, github)["pinned"] is True
    assert remote.pinned() == f"SERVING_MODEL_URI=models:/{MODEL}/{newer}"


def test_a_version_git_pins_already_is_tagged_without_a_commit(
    registered_model, register_scorer, remote: Remote, github: GitHubContents
) -> None:
    # as after a run that committed and then stopped before tagging
    version = register_scorer(MODEL)
    github.write(PIN_FILE, "staging", f"SERVING_MODEL_URI=models:/{MODEL}/{version}\n",
                 github.read(PIN_FILE, "staging")[1], "pinned by hand")  # fmt: skip
    commits = len(remote.commits())

    done = _pin(registered_model, github)

    assert done["pinned"] is False
    assert done["reason"] == "staging pins it already"
    assert len(remote.commits()) == commits
    client = MlflowClient(registered_model["tracking_uri"])
    assert client.get_model_version(MODEL, version).tags[PINNED_TAG] == "staging@already"


def test_a_refused_token_names_the_vault_secret_and_writes_nothing(
    registered_model, register_scorer, remote: Remote, github: GitHubContents
) -> None:
    register_scorer(MODEL)
    head = remote.git("rev-parse", "refs/heads/staging")
    wrong = GitHubContents(github.api_url, REPOSITORY, "not-the-token", timeout=10)

    with pytest.raises(StageError, match="github_token needs contents: write"):
        _pin(registered_model, wrong)

    assert remote.git("rev-parse", "refs/heads/staging") == head
