"""A local stand-in for api.github.com: a real HTTP server on 127.0.0.1 that serves
recorded pull requests (the bundled sample) through the GraphQL query and the REST
endpoints data-fetch uses, with GitHub's rate-limit headers and injectable faults.

    server = GitHubReplayServer.from_samples(Path("data/samples")).start()
    server.url               # http://127.0.0.1:PORT  (GraphQL at /graphql)
    server.inject("502", 2)  # the next two API requests answer 502
    server.stop()

Or from a shell: ``python -m pipeline_ops.github_replay_server --port 8765``.

Served: ``POST /graphql`` (the ``repository.pullRequests`` query, ordered by update time,
newest first, opaque cursors), ``GET /repos/O/R/pulls`` (list pages without the counts,
``Link: rel="next"``), ``GET /repos/O/R/pulls/N`` (the full pull request), ``GET /rate_limit``.
Faults: ``502``, ``truncated`` (half a JSON body), ``secondary-403`` and ``secondary-429``
(with ``Retry-After``), ``primary`` (budget exhausted: 403 for REST, a RATE_LIMITED error for
GraphQL, ``X-RateLimit-Remaining: 0``). ``graphql_enabled=False`` answers 404 on /graphql.

The primary budget is GitHub's: ``rate_limit`` points a window of ``window_seconds`` (an
hour), a REST request costs one, a GraphQL query ``graphql_cost`` (GitHub derives it from
the query's connections; the default 1 is the floor), and a request the points left cannot
pay for is refused until the window resets. A shorter window replays hours in seconds.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import gzip
import json
import re
import threading
import time
from collections import Counter, deque
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pipeline_common.github import DETAIL_ONLY_FIELDS
from pipeline_ops.stand_in_http import StandInServer

HOST = "127.0.0.1"
FAULTS = ("502", "truncated", "secondary-403", "secondary-429", "primary")


def load_samples(samples_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Pull requests by repository from ``*.prs.jsonl(.gz)`` files."""
    repositories: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(samples_dir.glob("*.jsonl*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as lines:
            for line in lines:
                if line.strip():
                    pull = json.loads(line)
                    repositories.setdefault(pull["base"]["repo"]["full_name"], []).append(pull)
    return repositories


def to_graphql_node(pull: dict[str, Any]) -> dict[str, Any]:
    """A REST-shaped pull request as a node of the data-fetch GraphQL query."""
    state = (pull.get("state") or "open").upper()
    if state == "CLOSED" and pull.get("merged_at"):
        state = "MERGED"

    def total(name: str) -> dict[str, int] | None:
        return None if pull.get(name) is None else {"totalCount": pull[name]}

    return {
        "number": pull.get("number"),
        "title": pull.get("title"),
        "body": pull.get("body"),
        "state": state,
        "authorAssociation": pull.get("author_association"),
        "createdAt": pull.get("created_at"),
        "updatedAt": pull.get("updated_at"),
        "closedAt": pull.get("closed_at"),
        "mergedAt": pull.get("merged_at"),
        "additions": pull.get("additions"),
        "deletions": pull.get("deletions"),
        "changedFiles": pull.get("changed_files"),
        "author": pull.get("user"),
        "commits": total("commits"),
        "comments": total("comments"),
        "reviewThreads": total("review_comments"),
        "labels": {"nodes": pull.get("labels") or []},
        "assignees": {"nodes": pull.get("assignees") or []},
    }


def _cursor(offset: int) -> str:
    return base64.b64encode(f"cursor:v2:{offset}".encode()).decode()


def _offset(cursor: str | None) -> int:
    if not cursor:
        return 0
    return int(base64.b64decode(cursor).decode().rsplit(":", 1)[1])


class GitHubReplayServer(StandInServer):
    def __init__(
        self,
        repositories: dict[str, list[dict[str, Any]]],
        *,
        rate_limit: int = 5000,
        window_seconds: int = 3600,
        graphql_cost: int = 1,
        retry_after_seconds: int = 1,
        graphql_enabled: bool = True,
        delay_seconds: float = 0.0,
        port: int = 0,
    ):
        self._lock = threading.Lock()
        self._pulls = {
            repo: {p["number"]: p for p in pulls} for repo, pulls in repositories.items()
        }
        self.rate_limit = rate_limit
        self.remaining = rate_limit
        self.window_seconds = window_seconds
        self.graphql_cost = graphql_cost
        self.reset_at = int(time.time()) + window_seconds
        self.retry_after_seconds = retry_after_seconds
        self.graphql_enabled = graphql_enabled
        self.delay_seconds = delay_seconds
        self._faults: deque[str] = deque()
        self.requests: Counter[str] = Counter()  # "graphql", "rest-list", "rest-pull", faults
        self.authorizations: set[str] = set()
        self._http = ThreadingHTTPServer((HOST, port), self._handler())
        self._http.daemon_threads = True

    @classmethod
    def from_samples(cls, samples_dir: Path, **options: Any) -> GitHubReplayServer:
        return cls(load_samples(samples_dir), **options)

    # -- control ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{HOST}:{self._http.server_port}"

    def inject(self, fault: str, times: int = 1) -> None:
        """The next ``times`` API requests fail with ``fault`` (one of FAULTS)."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {FAULTS}")
        with self._lock:
            self._faults.extend([fault] * times)

    def exhaust_budget(self, reset_after_seconds: int = 3600) -> None:
        with self._lock:
            self.remaining = 0
            self.reset_at = int(time.time()) + reset_after_seconds

    def restore_budget(self) -> None:
        with self._lock:
            self.remaining = self.rate_limit

    def update_pull(self, repository: str, number: int, **fields: Any) -> dict[str, Any]:
        """Change a pull request as GitHub would: new fields and a fresh ``updated_at``."""
        with self._lock:
            pull = copy.deepcopy(self._pulls[repository][number])
            pull.update(fields)
            if "updated_at" not in fields:
                pull["updated_at"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            self._pulls[repository][number] = pull
            return pull

    def add_pull(self, repository: str, pull: dict[str, Any]) -> None:
        """Add a pull request as given (it may be malformed on purpose)."""
        with self._lock:
            self._pulls.setdefault(repository, {})[pull.get("number")] = pull

    def pulls(self, repository: str) -> list[dict[str, Any]]:
        """Newest update first, ties by number (the order both APIs serve)."""
        with self._lock:
            pulls = list(self._pulls.get(repository, {}).values())
        return sorted(
            pulls, key=lambda p: (str(p.get("updated_at")), str(p.get("number"))), reverse=True
        )

    @property
    def total_requests(self) -> int:
        return sum(
            v
            for k, v in self.requests.items()
            if k in ("graphql", "rest-list", "rest-pull", "other")
        )

    # -- HTTP ------------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # One write per response, no Nagle: otherwise headers and body go out in two
            # packets and every keep-alive request waits ~40 ms for a delayed ACK.
            wbufsize = 1 << 16
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                server._serve(self, "GET")

            def do_POST(self) -> None:
                server._serve(self, "POST")

        return Handler

    def _serve(self, request: BaseHTTPRequestHandler, method: str) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        if request.headers.get("Authorization"):
            self.authorizations.add(request.headers["Authorization"])
        if self.delay_seconds:
            time.sleep(self.delay_seconds)
        url = urlsplit(request.path)
        kind = self._kind(method, url.path)
        with self._lock:
            if time.time() >= self.reset_at:  # a new rate-limit window
                self.remaining = self.rate_limit
                self.reset_at = int(time.time()) + self.window_seconds
            fault = self._faults.popleft() if self._faults and kind != "rate" else None
            if fault == "primary":
                self.remaining = 0
            cost = 0 if kind == "rate" else self.graphql_cost if kind == "graphql" else 1
            exhausted = cost > self.remaining
            # refused: GitHub answers X-RateLimit-Remaining: 0 until the window resets
            self.remaining = 0 if exhausted else self.remaining - cost
            self.requests[kind] += 1
            if fault:
                self.requests[f"fault:{fault}"] += 1
        headers = {
            "X-RateLimit-Limit": str(self.rate_limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_at),
            "X-RateLimit-Used": str(self.rate_limit - self.remaining),
        }
        if fault == "502":
            return self._send(request, 502, {"message": "Server Error"}, headers)
        if fault in ("secondary-403", "secondary-429"):
            headers["Retry-After"] = str(self.retry_after_seconds)
            message = "You have exceeded a secondary rate limit. Please wait a few minutes."
            return self._send(request, int(fault[-3:]), {"message": message}, headers)
        if exhausted:
            if kind == "graphql":
                error = {"type": "RATE_LIMITED", "message": "API rate limit exceeded"}
                return self._send(request, 200, {"errors": [error]}, headers)
            return self._send(request, 403, {"message": "API rate limit exceeded"}, headers)
        status, payload, extra = self._route(kind, url, body)
        headers.update(extra)
        self._send(request, status, payload, headers, truncate=fault == "truncated")

    @staticmethod
    def _kind(method: str, path: str) -> str:
        if method == "POST" and path == "/graphql":
            return "graphql"
        if path == "/rate_limit":
            return "rate"
        if re.fullmatch(r"/repos/[^/]+/[^/]+/pulls", path):
            return "rest-list"
        if re.fullmatch(r"/repos/[^/]+/[^/]+/pulls/\d+", path):
            return "rest-pull"
        return "other"

    def _route(self, kind: str, url: Any, body: bytes) -> tuple[int, Any, dict[str, str]]:
        if kind == "rate":
            core = {"limit": self.rate_limit, "remaining": self.remaining, "reset": self.reset_at}
            return 200, {"resources": {"core": core, "graphql": core}, "rate": core}, {}
        if kind == "graphql":
            if not self.graphql_enabled:
                return 404, {"message": "Not Found"}, {}
            return 200, self._graphql(json.loads(body or b"{}")), {}
        parts = url.path.strip("/").split("/")
        repository = f"{parts[1]}/{parts[2]}"
        if repository not in self._pulls:
            return 404, {"message": "Not Found"}, {}
        if kind == "rest-pull":
            pull = self._pulls[repository].get(int(parts[4]))
            return (200, pull, {}) if pull is not None else (404, {"message": "Not Found"}, {})
        if kind == "rest-list":
            query = parse_qs(url.query)
            per_page = min(100, int(query.get("per_page", ["30"])[0]))
            page = int(query.get("page", ["1"])[0])
            pulls = self.pulls(repository)
            items = [
                self._list_item(repository, p)
                for p in pulls[(page - 1) * per_page : page * per_page]
            ]
            headers = {}
            if page * per_page < len(pulls):
                base = f"{self.url}/repos/{repository}/pulls"
                headers["Link"] = (
                    f"<{base}?state=all&sort=updated&direction=desc&per_page={per_page}"
                    f'&page={page + 1}>; rel="next"'
                )
            return 200, items, headers
        return 404, {"message": "Not Found"}, {}

    def _list_item(self, repository: str, pull: dict[str, Any]) -> dict[str, Any]:
        item = {k: v for k, v in pull.items() if k not in DETAIL_ONLY_FIELDS}
        item["url"] = f"{self.url}/repos/{repository}/pulls/{pull.get('number')}"
        return item

    def _graphql(self, request: dict[str, Any]) -> dict[str, Any]:
        variables = request.get("variables") or {}
        repository = f"{variables.get('owner')}/{variables.get('name')}"
        if "pullRequests" not in request.get("query", "") or repository not in self._pulls:
            message = f"Could not resolve to a Repository with the name '{repository}'."
            return {
                "data": {"repository": None},
                "errors": [{"type": "NOT_FOUND", "message": message}],
            }
        first = min(100, int(variables.get("first") or 100))
        offset = _offset(variables.get("after"))
        pulls = self.pulls(repository)
        window = pulls[offset : offset + first]
        end = offset + len(window)
        return {
            "data": {
                "rateLimit": {
                    "cost": self.graphql_cost,
                    "remaining": self.remaining,
                    "resetAt": datetime.fromtimestamp(self.reset_at, UTC).isoformat(),
                },
                "repository": {
                    "pullRequests": {
                        "pageInfo": {"hasNextPage": end < len(pulls), "endCursor": _cursor(end)},
                        "nodes": [to_graphql_node(p) for p in window],
                    }
                },
            }
        }

    @staticmethod
    def _send(
        request: BaseHTTPRequestHandler,
        status: int,
        payload: Any,
        headers: dict[str, str],
        *,
        truncate: bool = False,
    ) -> None:
        data = json.dumps(payload).encode()
        if truncate:
            data = data[: max(1, len(data) // 2)]
        request.send_response(status)
        request.send_header("Content-Type", "application/json; charset=utf-8")
        request.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            request.send_header(name, value)
        request.end_headers()
        request.wfile.write(data)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=Path, default=Path("data/samples"))
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rate-limit", type=int, default=5000, help="points a window")
    parser.add_argument("--window-seconds", type=int, default=3600, help="a rate-limit window")
    parser.add_argument("--graphql-cost", type=int, default=1, help="points a GraphQL query")
    parser.add_argument("--no-graphql", action="store_true")
    args = parser.parse_args(argv)
    server = GitHubReplayServer.from_samples(
        args.samples,
        port=args.port,
        rate_limit=args.rate_limit,
        window_seconds=args.window_seconds,
        graphql_cost=args.graphql_cost,
        graphql_enabled=not args.no_graphql,
    )
    print(f"GitHub replay server on {server.url} (GraphQL at {server.url}/graphql)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
