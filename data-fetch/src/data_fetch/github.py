"""The GitHub source: pull requests of one repository, newest update first, one page at a time.

GraphQL returns 100 pull requests with every field the model needs in one request; the REST
fallback (for servers without GraphQL) needs a list request per 100 plus one request per
pull request for the counts the list lacks, and makes that request only for pull requests
newer than the high-water mark.

Every request goes through :class:`GitHubClient`, which honours the primary rate limit
(``X-RateLimit-Remaining``/``X-RateLimit-Reset``), secondary limits (403/429, ``Retry-After``)
and transient failures (5xx, cut-off JSON) with bounded exponential backoff and full jitter.
When the budget is spent it raises :class:`BudgetExhaustedError` instead of sleeping for an
hour, unless told to wait.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests
from pydantic import SecretStr

from pipeline_common.cli import StageError

log = logging.getLogger(__name__)

PAGE_SIZE = 100
EXIT_BUDGET_EXHAUSTED = 4

PULL_REQUESTS_QUERY = """
query($owner: String!, $name: String!, $first: Int!, $after: String) {
  rateLimit { cost remaining resetAt }
  repository(owner: $owner, name: $name) {
    pullRequests(first: $first, after: $after, orderBy: {field: UPDATED_AT, direction: DESC}) {
      pageInfo { hasNextPage endCursor }
      nodes {
        number title body state authorAssociation
        createdAt updatedAt closedAt mergedAt
        additions deletions changedFiles
        author { login }
        commits { totalCount }
        comments { totalCount }
        reviewThreads { totalCount }
        labels(first: 20) { nodes { name } }
        assignees(first: 10) { nodes { login } }
      }
    }
  }
}
""".strip()


class GitHubError(StageError):
    """GitHub answered in a way retrying cannot fix (bad token, unknown repository...)."""


class BudgetExhaustedError(StageError):
    """The API budget is spent; progress is saved and a later run carries on."""

    exit_code = EXIT_BUDGET_EXHAUSTED


class GraphQLUnavailableError(GitHubError):
    """The server has no GraphQL endpoint: use REST."""


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with full jitter (sleep uniform(0, min(cap, base*2^n)))."""

    attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 30.0
    # Waits for a rate-limit reset up to this long are just taken; longer ones end the run
    # (BudgetExhaustedError) unless ``wait_for_reset`` is set.
    max_reset_wait: float = 60.0
    wait_for_reset: bool = False

    def backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))


@dataclass
class RateBudget:
    limit: int | None = None
    remaining: int | None = None
    reset_at: datetime | None = None

    def update(self, headers: requests.structures.CaseInsensitiveDict) -> None:
        if "X-RateLimit-Remaining" in headers:
            self.remaining = int(headers["X-RateLimit-Remaining"])
        if "X-RateLimit-Limit" in headers:
            self.limit = int(headers["X-RateLimit-Limit"])
        if "X-RateLimit-Reset" in headers:
            self.reset_at = datetime.fromtimestamp(int(headers["X-RateLimit-Reset"]), UTC)

    def seconds_to_reset(self) -> float:
        if self.reset_at is None:
            return 60.0
        return max(0.0, (self.reset_at - datetime.now(UTC)).total_seconds()) + 1.0


@dataclass
class GitHubClient:
    api_url: str
    token: SecretStr | None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float = 30.0
    sleep: Callable[[float], None] = time.sleep
    requests_made: int = 0
    budget: RateBudget = field(default_factory=RateBudget)

    def __post_init__(self) -> None:
        self.api_url = self.api_url.rstrip("/")
        self.session = requests.Session()
        self.session.headers.update(
            {"Accept": "application/vnd.github+json", "User-Agent": "mlops-data-fetch"}
        )
        if self.token is not None:
            self.session.headers["Authorization"] = f"bearer {self.token.get_secret_value()}"

    def __repr__(self) -> str:  # never the token
        return f"GitHubClient({self.api_url})"

    @property
    def graphql_url(self) -> str:
        # api.github.com/graphql; GitHub Enterprise: https://HOST/api/v3 -> /api/graphql
        return re.sub(r"/v3$", "", self.api_url) + "/graphql"

    def graphql(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        body = self.request("POST", self.graphql_url, json={"query": query, "variables": variables})
        errors = body.get("errors") if isinstance(body, dict) else None
        if errors:
            kinds = {e.get("type") for e in errors}
            messages = "; ".join(str(e.get("message")) for e in errors)
            if "NOT_FOUND" in kinds:
                raise GitHubError(f"GitHub GraphQL: {messages}; check --repository")
            raise GitHubError(f"GitHub GraphQL errors: {messages}")
        return body["data"]

    def get(self, url: str, params: dict[str, Any] | None = None) -> tuple[Any, dict[str, str]]:
        """GET a REST resource: (JSON body, response links by rel)."""
        links: dict[str, str] = {}
        body = self.request("GET", url, params=params, links=links)
        return body, links

    def request(
        self, method: str, url: str, *, links: dict[str, str] | None = None, **kwargs: Any
    ) -> Any:
        """One API call, retried through rate limits and transient failures."""
        for attempt in range(self.retry.attempts):
            self._wait_for_budget()
            self.requests_made += 1
            try:
                response = self.session.request(method, url, timeout=self.timeout, **kwargs)
            except requests.ConnectionError as error:
                self._retry_later(attempt, f"cannot connect ({type(error).__name__})")
                continue
            except requests.Timeout:
                self._retry_later(attempt, "timed out")
                continue
            self.budget.update(response.headers)
            status = response.status_code
            if status in (403, 429) and self._is_rate_limited(response):
                self._rate_limited(response, attempt)
                continue
            if status >= 500:
                self._retry_later(attempt, f"HTTP {status}")
                continue
            if status == 401:
                raise GitHubError(
                    "GitHub refused the token (401): check github_token in the stage's Vault secret"
                )
            if status == 404 and url.endswith("/graphql"):
                raise GraphQLUnavailableError(f"no GraphQL endpoint at {url}")
            if status >= 400:
                raise GitHubError(f"GitHub answered {status} for {method} {_path(url)}")
            try:
                body = response.json()
            except ValueError:
                self._retry_later(attempt, "response is not complete JSON")
                continue
            if _graphql_rate_limited(body):
                self._rate_limited(response, attempt)
                continue
            if links is not None:
                links.update({rel: link["url"] for rel, link in response.links.items()})
            return body
        raise GitHubError(
            f"GitHub did not answer {method} {_path(url)} after {self.retry.attempts} attempts"
        )

    # -- waiting ---------------------------------------------------------------------------
    def _wait_for_budget(self) -> None:
        if self.budget.remaining == 0:
            self._wait_or_stop(self.budget.seconds_to_reset(), "primary rate limit reached")
            self.budget.remaining = None  # the reset has passed: ask again

    def _is_rate_limited(self, response: requests.Response) -> bool:
        if response.status_code == 429 or "Retry-After" in response.headers:
            return True
        if response.headers.get("X-RateLimit-Remaining") == "0":
            return True
        return "rate limit" in response.text.lower()

    def _rate_limited(self, response: requests.Response, attempt: int) -> None:
        retry_after = response.headers.get("Retry-After")
        if retry_after is not None:
            delay = float(retry_after) if retry_after.isdigit() else 60.0
            kind = f"secondary rate limit (HTTP {response.status_code})"
        elif self.budget.remaining == 0:
            delay, kind = self.budget.seconds_to_reset(), "primary rate limit reached"
        else:
            # A secondary limit without Retry-After: GitHub asks for at least a minute.
            delay = max(60.0, self.retry.backoff(attempt))
            kind = f"secondary rate limit (HTTP {response.status_code})"
        log.warning(
            "rate limited",
            extra={"kind": kind, "wait_seconds": round(delay, 1), "attempt": attempt},
        )
        self._wait_or_stop(delay, kind)
        if self.budget.remaining == 0:
            self.budget.remaining = None

    def _wait_or_stop(self, delay: float, kind: str) -> None:
        if delay > self.retry.max_reset_wait and not self.retry.wait_for_reset:
            reset = self.budget.reset_at.isoformat() if self.budget.reset_at else "later"
            raise BudgetExhaustedError(
                f"GitHub API budget exhausted ({kind}; next request possible in "
                f"{delay:.0f}s, at {reset}). Progress is saved: run again then, or pass "
                "--wait-for-reset to wait."
            )
        self.sleep(delay)

    def _retry_later(self, attempt: int, why: str) -> None:
        if attempt + 1 >= self.retry.attempts:
            return
        delay = self.retry.backoff(attempt)
        log.warning(
            "GitHub request failed; retrying",
            extra={"why": why, "attempt": attempt + 1, "wait_seconds": round(delay, 2)},
        )
        self.sleep(delay)


def _graphql_rate_limited(body: Any) -> bool:
    return isinstance(body, dict) and any(
        e.get("type") == "RATE_LIMITED" for e in body.get("errors") or [] if isinstance(e, dict)
    )


def _path(url: str) -> str:
    return re.sub(r"^https?://[^/]+", "", url)


@dataclass
class Page:
    """One page of a repository's pull requests, newest update first."""

    payloads: list[Any]  # REST-shaped pull requests or GraphQL nodes, as received
    next_cursor: str | None  # where the page after this one starts; None at the end
    shape: str  # "graphql" or "rest"


def graphql_pages(
    client: GitHubClient, repository: str, cursor: str | None, page_size: int = PAGE_SIZE
) -> Iterator[Page]:
    owner, name = repository.split("/", 1)
    while True:
        data = client.graphql(
            PULL_REQUESTS_QUERY,
            {"owner": owner, "name": name, "first": page_size, "after": cursor},
        )
        if data.get("repository") is None:
            raise GitHubError(f"repository {repository} not found; check --repository")
        connection = data["repository"]["pullRequests"]
        info = connection["pageInfo"]
        cursor = info["endCursor"] if info["hasNextPage"] else None
        yield Page(connection["nodes"], cursor, "graphql")
        if cursor is None:
            return


def rest_pages(
    client: GitHubClient,
    repository: str,
    cursor: str | None,
    is_new: Callable[[Any], bool],
    page_size: int = PAGE_SIZE,
) -> Iterator[Page]:
    """REST: list pages sorted by update, then the full pull request for each new entry
    (the list lacks additions, deletions, changed files, commit and comment counts).
    ``cursor`` is the list page number."""
    # A cursor saved by a GraphQL pass means nothing here: start from the first page.
    page = int(cursor) if cursor and cursor.isdigit() else 1
    while True:
        listing, links = client.get(
            f"{client.api_url}/repos/{repository}/pulls",
            {
                "state": "all",
                "sort": "updated",
                "direction": "desc",
                "per_page": page_size,
                "page": page,
            },
        )
        if not isinstance(listing, list):
            raise GitHubError(f"GitHub REST listing of {repository} is not a list")
        payloads = []
        for item in listing:
            if isinstance(item, dict) and isinstance(item.get("url"), str) and is_new(item):
                full, _ = client.get(item["url"])
                payloads.append(full)
            else:
                payloads.append(item)
        next_cursor = str(page + 1) if "next" in links else None
        yield Page(payloads, next_cursor, "rest")
        if next_cursor is None:
            return
        page += 1


def parse_timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else None
