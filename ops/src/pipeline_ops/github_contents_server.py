"""A local stand-in for GitHub's REST contents API: a real HTTP server that reads and commits
files of bare git repositories on this machine, as api.github.com does for a repository on
GitHub, so that what writes one line to a branch with a token (a pin writer, as Argo CD Image
Updater's git write-back) runs against either.

    server = GitHubContentsServer({"org/gitops": Path("gitops.git")}, token).start()
    server.url               # http://127.0.0.1:PORT
    server.stop()

Or from a shell: ``python -m pipeline_ops.github_contents_server --token-file TOKEN
--repository org/gitops=/srv/gitops.git --port 8766``.

Served, each request with ``Authorization: Bearer TOKEN`` (or ``token TOKEN``), else 401:

- ``GET /repos/O/R/contents/PATH?ref=BRANCH``: the file, base64 in lines of 60 characters as
  GitHub serves it, with its blob sha; ``ref`` defaults to the branch HEAD names.
- ``PUT /repos/O/R/contents/PATH`` ``{"message", "content", "sha", "branch", "committer",
  "author"}``: one commit on the branch that changes that file (or adds it: 201), 409 when
  ``sha`` is not the file's blob any more or the branch moved meanwhile.
- ``GET /repos/O/R/commits/BRANCH``: the branch's head commit, its author and committer.

Anything else answers 404. Only branches are refs here (no tags, no commit shas), only regular
files are contents (no directory listings, symlinks or submodules).

A commit is made with git plumbing on the bare repository, never a work tree: the blob
(``hash-object -w``), a tree from a temporary index (``read-tree`` of the head,
``update-index --cacheinfo``, ``write-tree``), the commit (``commit-tree -p OLD``), and
``update-ref refs/heads/BRANCH NEW OLD``, which refuses if anything else (a push) moved the
branch in between. Writes to one repository are also taken one at a time.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import hmac
import json
import logging
import re
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from pipeline_ops.base import commands, processes
from pipeline_ops.base.errors import OpsError, tail
from pipeline_ops.stand_in_http import StandInServer

if TYPE_CHECKING:
    import subprocess

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
GIT_TIMEOUT_SECONDS = 60
# A pin writer sends a line; a body this large is a mistake, not a file to commit.
MAX_BODY_BYTES = 16 * 1024 * 1024
REGULAR_FILE_MODES = ("100644", "100755")
NEW_FILE_MODE = "100644"
BASE64_LINE_CHARS = 60  # GitHub's content is base64 in lines of this many characters
# How often a started server looks whether stop() was called: how long stop() takes at most.
STOP_POLL_SECONDS = 0.05

CONTENTS_PATH = re.compile(r"/repos/(?P<owner>[^/]+)/(?P<name>[^/]+)/contents/(?P<path>.+)")
COMMITS_PATH = re.compile(r"/repos/(?P<owner>[^/]+)/(?P<name>[^/]+)/commits/(?P<ref>.+)")


@dataclass(frozen=True)
class Identity:
    """Who a commit is by: git's name and email."""

    name: str
    email: str


DEFAULT_COMMITTER = Identity("GitHub contents server", "github-contents-server@localhost")


class RequestError(Exception):
    """A request refused as GitHub would refuse it: the status and GitHub's message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _invalid(problem: str) -> RequestError:
    """GitHub's 422 for a request body that does not validate."""
    return RequestError(422, f"Invalid request.\n\n{problem}")


# -- the bare repository ---------------------------------------------------------------------


@dataclass(frozen=True)
class TreeEntry:
    mode: str
    type: str  # blob, tree or commit (a submodule)
    sha: str

    @property
    def is_regular_file(self) -> bool:
        return self.type == "blob" and self.mode in REGULAR_FILE_MODES


@dataclass(frozen=True)
class Signature:
    name: str
    email: str
    date: str  # ISO 8601 in UTC, as GitHub writes it: 2024-05-01T12:00:00Z


@dataclass(frozen=True)
class Commit:
    sha: str
    tree: str
    parents: list[str]
    author: Signature
    committer: Signature
    message: str


class BareRepository:
    """A bare git repository, read and written with git plumbing through ``commands``."""

    def __init__(self, git_dir: Path, environment: Mapping[str, str]):
        self.git_dir = git_dir
        self._environment = dict(environment)

    def _run(
        self,
        *args: str,
        stdin: str | bytes | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        binary: bool = False,
    ) -> subprocess.CompletedProcess[Any]:
        """git's completed process; ``env`` adds to the repository's environment;
        ``binary``: bytes in and out (a file's content), else text."""
        return commands.run(
            ["git", "--git-dir", str(self.git_dir), *args],
            what=f"git {args[0]} in {self.git_dir}",
            stdin=stdin,
            env={**self._environment, **(env or {})},
            text=not binary,
            check=check,
            timeout=GIT_TIMEOUT_SECONDS,
        )

    def _git(self, *args: str, **options: Any) -> str:
        """git's output as text, without its final newline."""
        stdout = self._run(*args, **options).stdout
        return (stdout.decode() if isinstance(stdout, bytes) else stdout).rstrip("\n")

    def check(self) -> None:
        """Raise, naming the directory, unless it is a git repository."""
        self._git("rev-parse", "--git-dir")

    def default_branch(self) -> str | None:
        """The branch HEAD names (GitHub's default branch); None if HEAD is detached."""
        ref = self._run("symbolic-ref", "--quiet", "HEAD", check=False).stdout.strip()
        return ref.removeprefix("refs/heads/") if ref.startswith("refs/heads/") else None

    def head(self, branch: str) -> str | None:
        """The commit a branch is at; None if there is no such branch. ``show-ref --verify``
        takes the name as a ref, never as a revision expression (``staging~1``)."""
        result = self._run("show-ref", "--verify", "--hash", f"refs/heads/{branch}", check=False)
        return result.stdout.strip() if result.returncode == 0 else None

    def entry(self, commit: str, path: str) -> TreeEntry | None:
        """What ``path`` is in the commit's tree; None if nothing."""
        listing = self._git("ls-tree", "-z", commit, "--", path)
        for line in listing.split("\0"):
            meta, _, name = line.partition("\t")
            if name == path:  # ls-tree may show what lies under the path: not that
                mode, kind, sha = meta.split()
                return TreeEntry(mode, kind, sha)
        return None

    def blob(self, sha: str) -> bytes:
        content: bytes = self._run("cat-file", "blob", sha, binary=True).stdout
        return content

    def store_blob(self, content: bytes) -> str:
        """The blob's sha, once it is in the repository's objects."""
        # --no-filters: the bytes as sent, whatever a git config's autocrlf or attributes say
        return self._git("hash-object", "-w", "--no-filters", "--stdin", stdin=content, binary=True)

    def commit(self, sha: str) -> Commit:
        placeholders = ["%H", "%T", "%P", "%an", "%ae", "%aI", "%cn", "%ce", "%cI", "%B"]
        shown = self._git(
            "log", "-1", "--no-show-signature", f"--format={'%x00'.join(placeholders)}", sha
        )
        commit, tree, parents, *people, message = shown.split("\0", len(placeholders) - 1)
        author_name, author_email, authored, committer_name, committer_email, committed = people
        return Commit(
            sha=commit,
            tree=tree,
            parents=parents.split(),
            author=Signature(author_name, author_email, _utc(authored)),
            committer=Signature(committer_name, committer_email, _utc(committed)),
            message=message.rstrip("\n"),
        )

    def commit_file(
        self,
        parent: str,
        path: str,
        file: TreeEntry,
        message: str,
        author: Identity,
        committer: Identity,
    ) -> str:
        """A new commit on top of ``parent`` whose tree differs in ``path`` only, where it
        holds ``file`` (a stored blob). No branch moves: that is ``move_branch``."""
        with tempfile.TemporaryDirectory(prefix="contents-index-") as scratch:
            index = {"GIT_INDEX_FILE": str(Path(scratch) / "index")}
            self._git("read-tree", parent, env=index)
            self._git("update-index", "--add", "--cacheinfo", file.mode, file.sha, path, env=index)
            tree = self._git("write-tree", env=index)
        people = {
            "GIT_AUTHOR_NAME": author.name,
            "GIT_AUTHOR_EMAIL": author.email,
            "GIT_COMMITTER_NAME": committer.name,
            "GIT_COMMITTER_EMAIL": committer.email,
        }
        # The message goes on stdin, kept as given (plus git's final newline); --no-gpg-sign:
        # a git config's commit.gpgSign is not for the server to follow.
        text = message if message.endswith("\n") else message + "\n"
        return self._git("commit-tree", "--no-gpg-sign", tree, "-p", parent, stdin=text, env=people)

    def move_branch(self, branch: str, new: str, old: str) -> bool:
        """Point the branch at ``new`` if it is still at ``old``; False if it moved meanwhile."""
        ref = f"refs/heads/{branch}"
        result = self._run("update-ref", ref, new, old, check=False)
        if result.returncode == 0:
            return True
        if self.head(branch) != old:
            return False
        raise OpsError(f"git update-ref {ref} in {self.git_dir} failed: {tail(result.stderr)}")


def _utc(iso: str) -> str:
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def git_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment the server's git runs in: ``base`` (None: what ops gives every child)
    without the GIT_ variables that would say where objects or the index are, or who commits
    and when; those are the server's to say. The GIT_CONFIG ones stay: a caller may keep this
    host's git config out (as the tests do)."""
    base = processes.minimal_environment() if base is None else base
    return {
        name: value
        for name, value in base.items()
        if not name.startswith("GIT_") or name.startswith("GIT_CONFIG")
    }


# -- the request body of a PUT ---------------------------------------------------------------


@dataclass(frozen=True)
class FileChange:
    """A PUT's body, validated."""

    message: str
    content: bytes
    sha: str | None  # the blob replaced; None when the file is meant to be new
    branch: str | None  # None: the default branch
    author: Identity
    committer: Identity


def file_change(body: bytes, default_committer: Identity) -> FileChange:
    fields = _json_object(body)
    committer = _identity(fields, "committer") or default_committer
    return FileChange(
        message=_required(fields, "message"),
        content=_base64(_required(fields, "content")),
        sha=_string(fields, "sha"),
        branch=_string(fields, "branch"),
        author=_identity(fields, "author") or committer,  # GitHub's default
        committer=committer,
    )


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        fields = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RequestError(400, "Problems parsing JSON") from error
    if not isinstance(fields, dict):
        raise RequestError(400, "Problems parsing JSON")
    return fields


def _string(fields: dict[str, Any], name: str, where: str = "") -> str | None:
    """A string field, or None if absent; ``where``: the object it is in, for the message."""
    value = fields.get(name)
    if value is not None and not isinstance(value, str):
        raise _invalid(f"For 'properties/{where}{name}', {json.dumps(value)} is not a string.")
    return value


def _required(fields: dict[str, Any], name: str, where: str = "") -> str:
    value = _string(fields, name, where)
    if value is None:
        raise _invalid(f'"{where}{name}" wasn\'t supplied.')
    return value


def _base64(text: str) -> bytes:
    try:  # whitespace too: GitHub's own answers wrap base64 in lines, a client may send it back
        return base64.b64decode("".join(text.split()), validate=True)
    except binascii.Error as error:
        raise _invalid("content is not valid Base64") from error


def _identity(fields: dict[str, Any], role: str) -> Identity | None:
    person = fields.get(role)
    if person is None:
        return None
    if not isinstance(person, dict):
        raise _invalid(f"For 'properties/{role}', {json.dumps(person)} is not an object.")
    return Identity(_identity_part(person, role, "name"), _identity_part(person, role, "email"))


def _identity_part(person: dict[str, Any], role: str, part: str) -> str:
    value = _required(person, part, where=f"{role}/")
    # git refuses an empty name; < > or a line break would make another identity than sent
    if not value.strip() or any(c in value for c in "<>\n"):
        raise _invalid(f"{role}/{part} {json.dumps(value)} is not a {part} git can commit as.")
    return value


def file_path(raw: str) -> str | None:
    """The repository path a URL names; None for one no git tree can hold."""
    path = unquote(raw)
    parts = path.split("/")
    if any(part in ("", ".", "..") or part.lower() == ".git" for part in parts):
        return None
    if any(ord(character) < 0x20 for character in path):
        return None
    return path


def _ancestors(path: str) -> list[str]:
    """``a/b/c`` -> ``["a", "a/b"]``."""
    parts = path.split("/")
    return ["/".join(parts[:depth]) for depth in range(1, len(parts))]


def _base64_lines(data: bytes) -> str:
    encoded = base64.b64encode(data).decode()
    step = BASE64_LINE_CHARS
    return "".join(encoded[at : at + step] + "\n" for at in range(0, len(encoded), step))


# -- the server ------------------------------------------------------------------------------


@dataclass
class ServedRepository:
    """A repository as the server knows it: its GitHub name, its git directory, and the lock
    its writes take turns on."""

    full_name: str
    git: BareRepository
    write_lock: threading.Lock = field(default_factory=threading.Lock)


class GitHubContentsServer(StandInServer):
    poll_seconds = STOP_POLL_SECONDS

    def __init__(
        self,
        repositories: Mapping[str, Path],
        token: str,
        *,
        bind: str = HOST,
        port: int = 0,
        committer: Identity = DEFAULT_COMMITTER,
        environment: Mapping[str, str] | None = None,
    ):
        """``repositories``: bare git directories by ``owner/name``; ``token``: the one
        credential accepted; ``committer``: who commits when a request does not say;
        ``environment``: git's (see ``git_environment``)."""
        if not token:
            raise OpsError("the contents server needs a token: an empty one would admit anyone")
        git_env = git_environment(environment)
        # GitHub's owner and repository names are case-insensitive.
        self._repositories = {
            name.lower(): ServedRepository(name, BareRepository(Path(git_dir), git_env))
            for name, git_dir in repositories.items()
        }
        for served in self._repositories.values():
            served.git.check()
        self._token = token.encode()
        self.committer = committer
        self._http = ThreadingHTTPServer((bind, port), self._handler())
        self._http.daemon_threads = True

    # -- control ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host!s}:{port}"

    # -- HTTP ------------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # One write per response, no Nagle (see github_replay_server).
            wbufsize = 1 << 16
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                server._serve(self, "GET")

            def do_PUT(self) -> None:
                server._serve(self, "PUT")

            # Not served, but answered as GitHub answers what it has no route for: JSON, 404.
            def do_POST(self) -> None:
                server._serve(self, "POST")

            def do_PATCH(self) -> None:
                server._serve(self, "PATCH")

            def do_DELETE(self) -> None:
                server._serve(self, "DELETE")

        return Handler

    def _serve(self, request: BaseHTTPRequestHandler, method: str) -> None:
        """Answer one request; whatever goes wrong becomes this request's JSON answer."""
        try:
            body = self._body(request)
            self._authenticate(request.headers.get("Authorization", ""))
            status, payload = self._route(method, request.path, body)
        except RequestError as refused:
            status, payload = refused.status, {"message": refused.message}
        except Exception as error:
            log.exception("%s %s failed", method, urlsplit(request.path).path)
            status, payload = 500, {"message": f"Server Error: {error}"}
        self._send(request, status, payload)

    @staticmethod
    def _body(request: BaseHTTPRequestHandler) -> bytes:
        """The whole body, read before anything can fail: on a kept-alive connection, what is
        left of it would be taken for the next request."""
        try:
            length = int(request.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            request.close_connection = True  # where the body ends is unknown, or too far
            raise RequestError(400 if length < 0 else 413, "Content-Length is not acceptable")
        return request.rfile.read(length) if length else b""

    def _authenticate(self, authorization: str) -> None:
        scheme, _, credential = authorization.partition(" ")
        known_scheme = scheme.lower() in ("bearer", "token")
        # compare_digest: how long the comparison takes says nothing of the token
        if not (known_scheme and hmac.compare_digest(credential.strip().encode(), self._token)):
            raise RequestError(401, "Bad credentials")

    def _route(self, method: str, target: str, body: bytes) -> tuple[int, Any]:
        url = urlsplit(target)
        if contents := CONTENTS_PATH.fullmatch(url.path):
            served = self._served(contents["owner"], contents["name"])
            if method == "GET":
                ref = parse_qs(url.query).get("ref", [None])[0]
                return 200, self._read_file(served, contents["path"], ref)
            if method == "PUT":
                return self._write_file(served, contents["path"], body)
        if (commits := COMMITS_PATH.fullmatch(url.path)) and method == "GET":
            served = self._served(commits["owner"], commits["name"])
            return 200, self._head_commit(served, unquote(commits["ref"]))
        raise RequestError(404, "Not Found")

    def _served(self, owner: str, name: str) -> ServedRepository:
        served = self._repositories.get(f"{unquote(owner)}/{unquote(name)}".lower())
        if served is None:
            raise RequestError(404, "Not Found")
        return served

    @staticmethod
    def _branch_head(served: ServedRepository, branch: str | None) -> tuple[str, str]:
        """The branch (None: the default one) and the commit it is at, or a 404."""
        branch = branch or served.git.default_branch()
        head = served.git.head(branch) if branch else None
        if branch is None or head is None:
            raise RequestError(404, f"No commit found for the ref {branch or 'HEAD'}")
        return branch, head

    # -- endpoints -------------------------------------------------------------------------
    def _read_file(self, served: ServedRepository, raw_path: str, ref: str | None) -> Any:
        path = file_path(raw_path)
        if path is None:
            raise RequestError(404, "Not Found")
        branch, head = self._branch_head(served, ref)
        found = served.git.entry(head, path)
        if found is None or not found.is_regular_file:
            raise RequestError(404, "Not Found")
        content = served.git.blob(found.sha)
        return {
            **self._file(served, branch, path, found.sha, len(content)),
            "encoding": "base64",
            "content": _base64_lines(content),
        }

    def _write_file(self, served: ServedRepository, raw_path: str, body: bytes) -> tuple[int, Any]:
        path = file_path(raw_path)
        if path is None:
            raise _invalid(f"{json.dumps(unquote(raw_path))} is not a path a repository holds.")
        change = file_change(body, self.committer)
        with served.write_lock:
            branch, head = self._branch_head(served, change.branch)
            mode = self._mode_to_write(served.git, head, path, change.sha)
            blob = TreeEntry(mode, "blob", served.git.store_blob(change.content))
            commit = served.git.commit_file(
                head, path, blob, change.message, change.author, change.committer
            )
            if not served.git.move_branch(branch, commit, head):
                now = served.git.head(branch)
                raise RequestError(409, f"refs/heads/{branch} is at {now} but expected {head}")
        answer = {
            # GitHub's answer to a write names the file, without its content again
            "content": self._file(served, branch, path, blob.sha, len(change.content)),
            "commit": _commit_json(served.git.commit(commit)),
        }
        return (201 if change.sha is None else 200), answer

    @staticmethod
    def _mode_to_write(git: BareRepository, head: str, path: str, sha: str | None) -> str:
        """The mode the file keeps (a new file: 100644), once GitHub's rules allow the change:
        ``sha`` names the blob replaced, and is required when there is one."""
        current = git.entry(head, path)
        if current is None:
            if sha is not None:
                raise RequestError(409, f"{path} does not match {sha}")
            for ancestor in _ancestors(path):
                above = git.entry(head, ancestor)
                if above is None:
                    break  # new directories from here down
                if above.type != "tree":
                    raise _invalid(f"{ancestor} is a file, not a directory.")
            return NEW_FILE_MODE
        if not current.is_regular_file:
            raise _invalid(f"{path} is not a file.")
        if sha is None:
            raise _invalid('"sha" wasn\'t supplied.')
        if sha != current.sha:
            raise RequestError(409, f"{path} does not match {sha}")
        return current.mode

    def _head_commit(self, served: ServedRepository, branch: str) -> Any:
        _, head = self._branch_head(served, branch)
        commit = _commit_json(served.git.commit(head))
        return {
            "sha": commit["sha"],
            "commit": {key: commit[key] for key in ("message", "author", "committer", "tree")},
            "parents": commit["parents"],
        }

    def _file(
        self, served: ServedRepository, branch: str, path: str, sha: str, size: int
    ) -> dict[str, Any]:
        location = f"{served.full_name}/contents/{quote(path)}?ref={quote(branch, safe='')}"
        return {
            "type": "file",
            "name": path.rsplit("/", 1)[-1],
            "path": path,
            "sha": sha,
            "size": size,
            "url": f"{self.url}/repos/{location}",
        }

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json; charset=utf-8")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)


def _commit_json(commit: Commit) -> dict[str, Any]:
    def person(signature: Signature) -> dict[str, str]:
        return {"name": signature.name, "email": signature.email, "date": signature.date}

    return {
        "sha": commit.sha,
        "message": commit.message,
        "author": person(commit.author),
        "committer": person(commit.committer),
        "tree": {"sha": commit.tree},
        "parents": [{"sha": parent} for parent in commit.parents],
    }


# -- command line ----------------------------------------------------------------------------


def _repository_argument(text: str) -> tuple[str, Path]:
    name, equals, directory = text.partition("=")
    if not equals or name.count("/") != 1 or not all(name.split("/")) or not directory:
        raise argparse.ArgumentTypeError(f"{text!r} is not OWNER/NAME=DIR")
    return name, Path(directory)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repository",
        type=_repository_argument,
        action="append",
        required=True,
        metavar="OWNER/NAME=DIR",
        help="a bare git repository served as OWNER/NAME (repeatable)",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        required=True,
        help="the file holding the token requests must carry (a file: never in a process list)",
    )
    parser.add_argument("--bind", default=HOST)
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    args = parser.parse_args(argv)
    token = args.token_file.read_text().strip()
    if not token:
        parser.error(f"{args.token_file} holds no token")
    server = GitHubContentsServer(dict(args.repository), token, bind=args.bind, port=args.port)
    names = ", ".join(name for name, _ in args.repository)
    print(f"GitHub contents server on {server.url} serving {names}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
