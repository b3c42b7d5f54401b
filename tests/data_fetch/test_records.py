"""Normalisation of REST-shaped pull requests: every real sample record passes, and a bad
payload is rejected with a reason that names the field."""

from __future__ import annotations

import copy
import gzip
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from data_fetch.records import (
    InvalidRecordError,
    normalize_graphql_pull_request,
    normalize_rest_pull_request,
)


def _samples(samples_dir: Path, name: str) -> list[dict[str, Any]]:
    with gzip.open(samples_dir / f"{name}.prs.jsonl.gz", "rt", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture(scope="module")
def fastapi_prs(samples_dir: Path) -> list[dict[str, Any]]:
    return _samples(samples_dir, "fastapi__fastapi")


@pytest.fixture
def good(fastapi_prs: list[dict[str, Any]]) -> dict[str, Any]:
    return copy.deepcopy(fastapi_prs[0])


@pytest.mark.parametrize("name", ["fastapi__fastapi", "pallets__flask"])
def test_every_real_sample_record_normalises(samples_dir: Path, name: str):
    raw = _samples(samples_dir, name)

    records = [normalize_rest_pull_request(payload) for payload in raw]

    assert len(records) > 1000
    assert {r.repository for r in records} == {name.replace("__", "/")}
    assert len({r.number for r in records}) == len(records)  # one record per pull request
    for record, payload in zip(records, raw, strict=True):
        assert record.number == payload["number"] > 0
        assert record.updated_at.tzinfo is not None
        assert record.created_at <= record.updated_at
        assert record.merged_at is not None  # the sample holds merged pull requests
        assert record.additions == payload["additions"] >= 0


def test_a_known_record_in_detail(samples_dir: Path):
    flask = {p["number"]: p for p in _samples(samples_dir, "pallets__flask")}
    record = normalize_rest_pull_request(flask[228])

    assert record.repository == "pallets/flask"
    assert record.title == "Corrections to fabfile example"
    assert record.author == "akavlie"
    assert record.created_at == datetime(2011, 3, 15, 3, 32, 33, tzinfo=UTC)
    assert (record.additions, record.deletions, record.changed_files, record.commits) == (
        5,
        5,
        1,
        3,
    )
    assert record.comments is None  # absent from the sample: unknown, not zero
    assert record.key == {"repository": "pallets/flask", "number": 228}


def test_api_extras_labels_and_nulls_are_accepted(good: dict[str, Any]):
    good.update(
        labels=[{"name": "bug"}, {"name": "docs"}],
        comments=3,
        review_comments=None,
        mergeable=True,  # a field the record does not keep
        updated_at=None,  # falls back to created_at
    )

    record = normalize_rest_pull_request(good)

    assert record.labels == ("bug", "docs")
    assert (record.comments, record.review_comments) == (3, None)
    assert record.updated_at == record.created_at


def test_repository_can_be_given_by_the_caller(good: dict[str, Any]):
    del good["base"]

    assert normalize_rest_pull_request(good, repository="o/r").repository == "o/r"


def _break(payload: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    if value is _DELETE:
        del payload[path]
    else:
        payload[path] = value
    return payload


_DELETE = object()


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("number", _DELETE, "number"),
        ("number", 0, "number: Input should be greater than 0"),
        ("additions", -5, "additions: Input should be greater than or equal to 0"),
        ("created_at", "last tuesday", "created_at: Input should be a valid datetime"),
        ("merged_at", "2024-13-45T00:00:00Z", "merged_at"),
        ("created_at", "2024-01-01T10:00:00", "created_at: Value error, timestamp has no time"),
        ("changed_files", "12", "changed_files must be an integer, got str"),
        ("commits", True, "commits must be an integer, got bool"),
        ("deletions", 3.0, "deletions must be an integer, got float"),
        ("comments", "4", "comments must be an integer, got str"),
        ("review_comments", False, "review_comments must be an integer, got bool"),
        ("comments", -1, "comments: Input should be greater than or equal to 0"),
        ("base", _DELETE, "base.repo.full_name is missing"),
        ("base", {"repo": {"full_name": "no-slash"}}, "repository: String should match"),
    ],
)
def test_bad_payload_is_rejected_naming_the_field(
    good: dict[str, Any], field: str, value: Any, reason: str
):
    with pytest.raises(InvalidRecordError) as invalid:
        normalize_rest_pull_request(_break(good, field, value))

    assert reason in invalid.value.reason
    assert str(invalid.value) == invalid.value.reason


@pytest.mark.parametrize(
    ("payload", "kind"),
    [([1, 2], "list"), ("{not json", "str"), (None, "NoneType"), (42, "int")],
)
def test_a_payload_that_is_not_an_object_is_rejected(payload: Any, kind: str):
    with pytest.raises(InvalidRecordError, match=f"payload is a {kind}, not a JSON object"):
        normalize_rest_pull_request(payload)


def test_every_problem_is_reported_at_once(good: dict[str, Any]):
    good.update(additions=-1, deletions=-2, created_at="never")

    with pytest.raises(InvalidRecordError) as invalid:
        normalize_rest_pull_request(good)

    assert all(name in invalid.value.reason for name in ("additions", "deletions", "created_at"))


def test_a_graphql_node_normalises_like_its_rest_twin():
    node = {
        "number": 42,
        "title": "Add x",
        "body": None,
        "state": "MERGED",
        "authorAssociation": "MEMBER",
        "createdAt": "2024-01-01T10:00:00Z",
        "updatedAt": "2024-01-03T10:00:00Z",
        "closedAt": "2024-01-02T10:00:00Z",
        "mergedAt": "2024-01-02T10:00:00Z",
        "additions": 3,
        "deletions": 1,
        "changedFiles": 2,
        "author": {"login": "octocat"},
        "commits": {"totalCount": 2},
        "comments": {"totalCount": 5},
        "reviewThreads": {"totalCount": 1},
        "labels": {"nodes": [{"name": "bug"}]},
        "assignees": {"nodes": [{"login": "hubot"}]},
    }

    record = normalize_graphql_pull_request(node, "o/r")

    assert (record.repository, record.number, record.state, record.body) == (
        "o/r",
        42,
        "closed",
        "",
    )
    assert (record.author, record.author_association) == ("octocat", "MEMBER")
    assert (record.commits, record.comments, record.review_comments) == (2, 5, 1)
    assert (record.labels, record.assignees) == (("bug",), ("hubot",))
    assert record.updated_at == datetime(2024, 1, 3, 10, tzinfo=UTC)


def test_a_graphql_node_whose_author_was_deleted_is_kept():
    node = {
        "number": 7,
        "title": "t",
        "state": "OPEN",
        "createdAt": "2024-01-01T10:00:00Z",
        "updatedAt": "2024-01-01T10:00:00Z",
        "additions": 0,
        "deletions": 0,
        "changedFiles": 0,
        "author": None,
        "commits": {"totalCount": 1},
    }

    record = normalize_graphql_pull_request(node, "o/r")

    assert (record.author, record.state, record.comments, record.labels) == (None, "open", None, ())
