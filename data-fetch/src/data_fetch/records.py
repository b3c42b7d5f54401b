"""The pull-request record every source produces, and the normalisation that builds it.

Pure logic: no I/O. A payload that cannot become a valid record raises
:class:`InvalidRecordError` with a reason a person can act on; the caller quarantines it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline_common.github import COUNT_FIELDS
from pipeline_common.limits import EARLIEST_TIME, LATEST_TIME, MAX_CLOCK_SKEW, MAX_COUNT

SCHEMA_VERSION = 1


class InvalidRecordError(ValueError):
    """The payload cannot be normalised; ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


_TIMES = ("created_at", "updated_at", "closed_at", "merged_at")
# Counts and times within the limits every stage shares (pipeline_common.limits), so a
# stored record is one spark-preprocess and model-serving can also represent.
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Time = Annotated[datetime, Field(ge=EARLIEST_TIME, lt=LATEST_TIME)]


class PullRequestRecord(BaseModel):
    """One pull request, normalised. Optional counts are None when the source lacks them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    repository: str = Field(pattern=r"^[^/\s]+/[^/\s]+$")
    number: int = Field(gt=0, le=MAX_COUNT)
    title: str
    body: str = ""
    state: str
    author: str | None = None
    author_association: str | None = None
    created_at: Time
    updated_at: Time
    closed_at: Time | None = None
    merged_at: Time | None = None
    additions: Count
    deletions: Count
    changed_files: Count
    commits: Count
    comments: Count | None = None
    review_comments: Count | None = None
    labels: tuple[str, ...] = ()
    assignees: tuple[str, ...] = ()
    schema_version: int = SCHEMA_VERSION

    @field_validator(*_TIMES)
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("timestamp has no time zone")
        return value

    @property
    def key(self) -> dict[str, Any]:
        return {"repository": self.repository, "number": self.number}


def normalize_rest_pull_request(
    raw: dict[str, Any], repository: str | None = None, *, now: datetime | None = None
) -> PullRequestRecord:
    """Build a record from a GitHub REST-shaped pull request (or the bundled sample).

    ``now`` (default: the clock) is when it was fetched: a pull request cannot have changed
    after that, and one that claims to would, stored, win over every real update of it."""
    record = _normalize(raw, repository)
    latest = (now or datetime.now(UTC)) + MAX_CLOCK_SKEW
    for name in _TIMES:
        value = getattr(record, name)
        if value is not None and value > latest:
            raise InvalidRecordError(
                f"{name} {value.isoformat()} is in the future (fetched at "
                f"{latest - MAX_CLOCK_SKEW:%Y-%m-%dT%H:%M:%SZ}): fix the source's clock or data"
            )
    return record


def _normalize(raw: dict[str, Any], repository: str | None) -> PullRequestRecord:
    if not isinstance(raw, dict):
        raise InvalidRecordError(f"payload is a {type(raw).__name__}, not a JSON object")
    repo = repository or _dig(raw, "base", "repo", "full_name")
    if not repo:
        raise InvalidRecordError("no repository: base.repo.full_name is missing")
    for name in COUNT_FIELDS:
        value = raw.get(name)
        # JSON true/false or "12" must not pass as counts.
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidRecordError(f"{name} must be an integer, got {type(value).__name__}")
    labels = raw.get("labels") or []
    assignees = raw.get("assignees") or []
    try:
        # The payload's values unchecked: validation makes them a record or says what is wrong.
        return PullRequestRecord.model_validate(
            {
                "repository": repo,
                "number": raw.get("number"),
                "title": raw.get("title") or "",
                "body": raw.get("body") or "",
                "state": raw.get("state") or "unknown",
                "author": _dig(raw, "user", "login"),
                "author_association": raw.get("author_association"),
                "created_at": raw.get("created_at"),
                "updated_at": raw.get("updated_at") or raw.get("created_at"),
                "closed_at": raw.get("closed_at"),
                "merged_at": raw.get("merged_at"),
                "additions": raw.get("additions"),
                "deletions": raw.get("deletions"),
                "changed_files": raw.get("changed_files"),
                "commits": raw.get("commits"),
                "comments": raw.get("comments"),
                "review_comments": raw.get("review_comments"),
                "labels": _names(labels, "labels", "name"),
                "assignees": _names(assignees, "assignees", "login"),
            }
        )
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
            for e in error.errors(include_url=False, include_input=False)
        )
        raise InvalidRecordError(problems) from None


def normalize_graphql_pull_request(
    node: Any, repository: str, *, now: datetime | None = None
) -> PullRequestRecord:
    """Build a record from a node of the GraphQL ``pullRequests`` connection (see
    ``github.PULL_REQUESTS_QUERY``), through its REST shape so both sources share one set
    of rules. ``review_comments`` counts review threads: GraphQL has no cheaper total."""
    return normalize_rest_pull_request(graphql_to_rest(node), repository=repository, now=now)


def graphql_to_rest(node: Any) -> Any:
    """The REST field names of a GraphQL pull-request node (anything else passes through,
    to be rejected by normalisation)."""
    if not isinstance(node, dict):
        return node
    state = node.get("state")
    return {
        "number": node.get("number"),
        "title": node.get("title"),
        "body": node.get("body"),
        # REST has open/closed; merged is closed with merged_at set.
        "state": "closed" if state in ("CLOSED", "MERGED") else (state or "").lower() or None,
        "user": node.get("author"),
        "author_association": node.get("authorAssociation"),
        "created_at": node.get("createdAt"),
        "updated_at": node.get("updatedAt"),
        "closed_at": node.get("closedAt"),
        "merged_at": node.get("mergedAt"),
        "additions": node.get("additions"),
        "deletions": node.get("deletions"),
        "changed_files": node.get("changedFiles"),
        "commits": _dig(node, "commits", "totalCount"),
        "comments": _dig(node, "comments", "totalCount"),
        "review_comments": _dig(node, "reviewThreads", "totalCount"),
        "labels": _dig(node, "labels", "nodes") or [],
        "assignees": _dig(node, "assignees", "nodes") or [],
    }


def _names(items: Any, field: str, key: str) -> tuple[str, ...]:
    if not isinstance(items, list):
        raise InvalidRecordError(f"{field} must be a list, got {type(items).__name__}")
    return tuple(str(item.get(key)) if isinstance(item, dict) else str(item) for item in items)


def _dig(raw: dict[str, Any], *keys: str) -> Any:
    value: Any = raw
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value
