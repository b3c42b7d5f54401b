"""The contents server, GitHub's REST contents API over a bare repository, run for real: real
git on a bare repository in a temporary directory (no git config of this host), real HTTP.
What a pin writer relies on: the blob sha it reads is git's, a write is one commit on the
branch named, a stale sha or a wrong token changes nothing, and of two writers racing on one
sha exactly one wins."""

from __future__ import annotations

import base64
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from git_seed import git_environment, seed_bare

from pipeline_ops.base import commands
from pipeline_ops.github_contents_server import DEFAULT_COMMITTER, GitHubContentsServer

REPOSITORY = "octo-org/gitops"
PIN_FILE = "argo-apps/base/model-serving-model.env"
PIN = "SERVING_MODEL_URI=models:/pr-anomaly/1\n"
OTHER_FILE = "argo-apps/base/kustomization.yaml"
TOKEN = "ghs_contents-server-test-token"
WRITER = {"name": "image-updater", "email": "image-updater@example.org"}


@dataclass
class Remote:
    """The bare repository the server serves, and git's environment for looking into it."""

    path: Path
    env: dict[str, str]

    def git(self, *args: str) -> str:
        return commands.output(["git", "--git-dir", self.path, *args], env=self.env).strip()

    def tip(self, branch: str) -> str:
        return self.git("rev-parse", f"refs/heads/{branch}")

    def refs(self) -> str:
        """Every ref and where it points: what a refused write must leave as it was."""
        return self.git("for-each-ref", "--format=%(refname) %(objectname)")

    def blob_sha(self, branch: str, path: str = PIN_FILE) -> str:
        return self.git("rev-parse", f"refs/heads/{branch}:{path}")

    def show(self, branch: str, path: str = PIN_FILE) -> str:
        return commands.output(
            ["git", "--git-dir", self.path, "show", f"refs/heads/{branch}:{path}"], env=self.env
        )


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    """Branches main (HEAD) and staging at one commit holding the pin and another file."""
    env = git_environment(tmp_path)
    seed = tmp_path / "seed"
    (seed / "argo-apps" / "base").mkdir(parents=True)
    (seed / PIN_FILE).write_text(PIN)
    (seed / OTHER_FILE).write_text("resources: []\n")
    bare = Remote(seed_bare(tmp_path / "gitops.git", seed, ("staging", "main"), env), env)
    return bare


@pytest.fixture
def server(remote: Remote) -> Iterator[GitHubContentsServer]:
    with GitHubContentsServer({REPOSITORY: remote.path}, TOKEN, environment=remote.env) as running:
        yield running


def _url(server: GitHubContentsServer, path: str = PIN_FILE) -> str:
    return f"{server.url}/repos/{REPOSITORY}/contents/{path}"


def _auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _get(server: GitHubContentsServer, ref: str | None = "staging") -> requests.Response:
    params = {"ref": ref} if ref else {}
    return requests.get(_url(server), params=params, headers=_auth(), timeout=10)


def _put(
    server: GitHubContentsServer,
    content: str,
    sha: str | None,
    *,
    path: str = PIN_FILE,
    branch: str = "staging",
    headers: dict[str, str] | None = None,
    **fields: Any,
) -> requests.Response:
    body = {
        "message": f"pin {content.strip()}",
        "content": base64.b64encode(content.encode()).decode(),
        "branch": branch,
        **({"sha": sha} if sha is not None else {}),
        **fields,
    }
    sent = _auth() if headers is None else headers
    return requests.put(_url(server, path), json=body, headers=sent, timeout=10)


def _pin(version: int) -> str:
    return f"SERVING_MODEL_URI=models:/pr-anomaly/{version}\n"


def test_a_read_serves_the_file_and_the_blob_sha_git_gives(server: GitHubContentsServer, remote):
    answer = _get(server)

    assert answer.status_code == 200
    file = answer.json()
    assert base64.b64decode(file["content"]).decode() == PIN
    assert file["sha"] == remote.blob_sha("staging")
    assert (file["type"], file["encoding"], file["path"]) == ("file", "base64", PIN_FILE)
    assert (file["name"], file["size"]) == ("model-serving-model.env", len(PIN))


def test_a_write_is_one_commit_on_the_branch_changing_that_file_only(
    server: GitHubContentsServer, remote: Remote
):
    before = remote.tip("staging")

    answer = _put(server, _pin(2), remote.blob_sha("staging"), committer=WRITER)

    assert answer.status_code == 200, answer.text
    after = remote.tip("staging")
    assert remote.git("rev-list", "--parents", "-n", "1", after).split() == [after, before]
    assert remote.git("diff-tree", "--name-only", "-r", before, after).splitlines() == [PIN_FILE]
    assert remote.show("staging") == _pin(2)
    shown = remote.git("log", "-1", "--format=%cn <%ce>|%an <%ae>|%s", "refs/heads/staging")
    writer = f"{WRITER['name']} <{WRITER['email']}>"
    assert shown == f"{writer}|{writer}|pin {_pin(2).strip()}"  # the author is the committer
    commit = answer.json()["commit"]
    assert commit["sha"] == after
    assert commit["parents"] == [{"sha": before}]
    assert commit["committer"]["name"] == WRITER["name"]
    assert answer.json()["content"]["sha"] == remote.blob_sha("staging")


def test_a_write_moves_only_the_branch_named_and_a_read_without_ref_reads_head(
    server: GitHubContentsServer, remote: Remote
):
    main = remote.tip("main")

    assert _put(server, _pin(2), remote.blob_sha("staging")).status_code == 200

    assert remote.tip("main") == main
    assert base64.b64decode(_get(server, ref=None).json()["content"]).decode() == PIN
    assert base64.b64decode(_get(server).json()["content"]).decode() == _pin(2)


def test_the_head_commit_names_the_servers_committer_when_the_write_names_none(
    server: GitHubContentsServer, remote: Remote
):
    _put(server, _pin(2), remote.blob_sha("staging"))

    answer = requests.get(
        f"{server.url}/repos/{REPOSITORY}/commits/staging", headers=_auth(), timeout=10
    )

    assert answer.status_code == 200
    assert answer.json()["sha"] == remote.tip("staging")
    committer = answer.json()["commit"]["committer"]
    assert (committer["name"], committer["email"]) == (
        DEFAULT_COMMITTER.name,
        DEFAULT_COMMITTER.email,
    )
    assert remote.git("log", "-1", "--format=%cn", "refs/heads/staging") == DEFAULT_COMMITTER.name


def test_a_write_with_a_stale_sha_is_refused_and_changes_nothing(
    server: GitHubContentsServer, remote: Remote
):
    read = remote.blob_sha("staging")
    assert _put(server, _pin(2), read).status_code == 200  # someone else's write meanwhile
    refs = remote.refs()

    answer = _put(server, _pin(3), read)

    assert answer.status_code == 409
    assert answer.json()["message"] == f"{PIN_FILE} does not match {read}"
    assert remote.refs() == refs
    assert remote.show("staging") == _pin(2)


@pytest.mark.parametrize(
    "headers",
    [{}, _auth("not-the-token"), {"Authorization": f"Basic {TOKEN}"}],
    ids=["missing", "wrong", "unknown-scheme"],
)
def test_a_write_without_the_token_is_refused_and_changes_nothing(
    server: GitHubContentsServer, remote: Remote, headers: dict[str, str]
):
    refs = remote.refs()

    answer = _put(server, _pin(2), remote.blob_sha("staging"), headers=headers)

    assert answer.status_code == 401
    assert answer.json() == {"message": "Bad credentials"}
    assert remote.refs() == refs


def test_the_token_scheme_github_documents_first_is_accepted_too(server: GitHubContentsServer):
    answer = requests.get(
        _url(server),
        params={"ref": "staging"},
        headers={"Authorization": f"token {TOKEN}"},
        timeout=10,
    )

    assert answer.status_code == 200


def test_a_write_to_an_existing_file_without_sha_is_invalid(
    server: GitHubContentsServer, remote: Remote
):
    refs = remote.refs()

    answer = _put(server, _pin(2), None)

    assert answer.status_code == 422
    assert answer.json()["message"] == 'Invalid request.\n\n"sha" wasn\'t supplied.'
    assert remote.refs() == refs


def test_a_new_file_is_created_and_answered_201(server: GitHubContentsServer, remote: Remote):
    before = remote.tip("staging")
    new_file = "argo-apps/overlays/local/model-serving-model.env"

    answer = _put(server, _pin(7), None, path=new_file)

    assert answer.status_code == 201, answer.text
    after = remote.tip("staging")
    assert remote.git("diff-tree", "--name-only", "-r", before, after).splitlines() == [new_file]
    assert remote.show("staging", new_file) == _pin(7)


def test_an_unknown_branch_repository_or_file_is_not_found(
    server: GitHubContentsServer, remote: Remote
):
    refs = remote.refs()

    written = _put(server, _pin(2), remote.blob_sha("staging"), branch="production")
    read = _get(server, ref="production")
    other_repository = requests.get(
        f"{server.url}/repos/octo-org/elsewhere/contents/{PIN_FILE}", headers=_auth(), timeout=10
    )
    missing_file = requests.get(_url(server, "argo-apps/none.env"), headers=_auth(), timeout=10)

    statuses = [r.status_code for r in (written, read, other_repository, missing_file)]
    assert statuses == [404, 404, 404, 404]
    assert remote.refs() == refs


def test_a_bad_request_is_named_and_the_connection_serves_the_next_one(
    server: GitHubContentsServer, remote: Remote
):
    sha = remote.blob_sha("staging")
    with requests.Session() as session:
        session.headers.update(_auth())
        not_base64 = session.put(
            _url(server), json={"message": "m", "content": "%%%", "sha": sha}, timeout=10
        )
        not_json = session.put(_url(server), data=b"{not json", timeout=10)
        after = session.get(_url(server), params={"ref": "staging"}, timeout=10)

    assert not_base64.status_code == 422
    assert "content is not valid Base64" in not_base64.json()["message"]
    assert not_json.status_code == 400
    assert not_json.json() == {"message": "Problems parsing JSON"}
    assert after.status_code == 200


def test_of_two_writes_racing_on_one_sha_exactly_one_wins(
    server: GitHubContentsServer, remote: Remote
):
    before = remote.tip("staging")
    sha = remote.blob_sha("staging")
    start = threading.Barrier(2)
    answers: dict[int, requests.Response] = {}

    def write(version: int) -> None:
        start.wait()
        answers[version] = _put(server, _pin(version), sha)

    writers = [threading.Thread(target=write, args=(version,)) for version in (2, 3)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=30)

    assert sorted(a.status_code for a in answers.values()) == [200, 409]
    winner = next(version for version, a in answers.items() if a.status_code == 200)
    assert remote.show("staging") == _pin(winner)
    assert remote.git("rev-list", "--count", f"{before}..refs/heads/staging") == "1"


class PushJustBeforeTheWrite(commands.CommandRunner):
    """git as it is, except that the first ``update-ref`` finds the branch already moved by
    a push: the moment between the server's commit and its branch update."""

    def __init__(self, remote: Remote, pushed: str):
        self.remote, self.pushed, self.done = remote, pushed, False

    def run(self, argv: commands.Argv, **options: Any) -> subprocess.CompletedProcess[Any]:
        if "update-ref" in argv and not self.done:
            self.done = True
            super().run(
                ["git", "--git-dir", self.remote.path, "update-ref", "refs/heads/staging",
                 self.pushed], **options,
            )  # fmt: skip
        return super().run(argv, **options)


def test_a_push_landing_during_a_write_is_kept_and_the_write_refused(
    server: GitHubContentsServer, remote: Remote
):
    # The tree unchanged: the pin file's sha still matches, only update-ref can tell.
    pusher = ["-c", "user.name=pusher", "-c", "user.email=pusher@localhost"]
    staging = "refs/heads/staging"
    pushed = remote.git(
        *pusher, "commit-tree", "-m", "a push", "-p", staging, f"{staging}^{{tree}}"
    )

    with commands.using(PushJustBeforeTheWrite(remote, pushed)):
        answer = _put(server, _pin(2), remote.blob_sha("staging"))

    assert answer.status_code == 409
    assert remote.tip("staging") == pushed
    assert remote.show("staging") == PIN


def test_the_command_line_reads_the_token_from_a_file(remote: Remote, tmp_path: Path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    served = f"{REPOSITORY}={remote.path}"
    command = [sys.executable, "-m", "pipeline_ops.github_contents_server",
               "--token-file", str(token_file), "--repository", served]  # fmt: skip
    with subprocess.Popen(command, env=remote.env, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            url = process.stdout.readline().split()[4]  # "GitHub contents server on URL ..."
            answer = requests.get(
                f"{url}/repos/{REPOSITORY}/contents/{PIN_FILE}", headers=_auth(), timeout=10
            )
        finally:
            process.terminate()

    assert answer.status_code == 200
    assert answer.json()["sha"] == remote.blob_sha("main")
