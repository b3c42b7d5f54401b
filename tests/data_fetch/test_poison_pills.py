"""Poison pills for data-fetch, through both sources (replay files, and the GitHub replay
server over GraphQL and REST) into the real FerretDB: a record that no database or later
stage can take is quarantined with its reason, the rest of its page is written, every
re-run passes, no error or log prints the record, and a record claiming to come from the
future cannot freeze incremental fetching."""

from __future__ import annotations

import copy
import gzip
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from data_fetch.github import GitHubClient, RetryPolicy
from data_fetch.job import FetchJob
from data_fetch.settings import FetchSecret
from data_fetch.store import MAX_DOCUMENT_BYTES, unescape_key
from pipeline_common.limits import MAX_COUNT
from pipeline_ops.github_replay_server import GitHubReplayServer

FLASK = "pallets/flask"
GOOD = 30
# in every poison's body: no log line or error may carry it (it would carry the record)
MARKER = "poison-body-that-must-not-be-printed"
TOKEN = "ghp_poison_test_token_0123456789"


def _poisons(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Poisons by name, each a real pull request with one hostile change and its own number."""
    changes: dict[str, dict[str, Any]] = {
        "reserved keys in labels": {
            "labels": [{"name": "bug", "$where": "sleep(10)", "color.hex": "f00", "%": 1}]
        },
        "integer past 64 bits outside the counts": {"labels": [{"name": "big", "id": 10**25}]},
        "title that is an object": {"title": {"$gt": ""}},
        "count past the limit": {"additions": 10**30},
        "count just past the limit": {"deletions": MAX_COUNT + 1},
        "updated in the future": {"updated_at": "2030-01-01T00:00:00Z"},
    }
    poisons = {}
    for offset, (name, change) in enumerate(changes.items()):
        poison = {**copy.deepcopy(template), **change, "number": 990_000 + offset}
        poison["body"] = MARKER
        poisons[name] = poison
    return poisons


STORED = {"reserved keys in labels", "integer past 64 bits outside the counts"}
REASONS = {
    "title that is an object": "title",
    "count past the limit": "additions",
    "count just past the limit": "deletions",
    "updated in the future": "updated_at 2030-01-01T00:00:00+00:00 is in the future",
}


@pytest.fixture(scope="module")
def real_prs(samples_dir: Path) -> list[dict[str, Any]]:
    with gzip.open(samples_dir / "pallets__flask.prs.jsonl.gz", "rt") as lines:
        return [json.loads(next(lines)) for _ in range(GOOD)]


def _unescaped(value: Any) -> Any:
    if isinstance(value, dict):
        return {unescape_key(k): _unescaped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unescaped(v) for v in value]
    return value


def _assert_poisons_handled(db, poisons: dict[str, dict[str, Any]], source: str) -> None:
    stored = {doc["number"]: doc for doc in db.pull_requests.find({"number": {"$gte": 990_000}})}
    assert set(stored) == {poisons[name]["number"] for name in STORED}

    def raw_labels(name: str) -> list[dict[str, Any]]:
        raw = stored[poisons[name]["number"]]["raw"]["labels"]
        return raw["nodes"] if isinstance(raw, dict) else raw  # GraphQL or REST shape

    assert stored[poisons["reserved keys in labels"]["number"]]["labels"] == ["bug"]
    assert (
        _unescaped(raw_labels("reserved keys in labels"))
        == (poisons["reserved keys in labels"]["labels"])
    )
    # kept, as its decimal text
    assert raw_labels("integer past 64 bits outside the counts")[0]["id"] == str(10**25)

    quarantine = {doc["payload"]["number"]: doc for doc in db.pull_requests_quarantine.find()}
    for name, reason in REASONS.items():
        doc = quarantine[poisons[name]["number"]]
        assert reason in doc["reason"], (name, doc["reason"])
        assert doc["source"].startswith(source)
        assert _unescaped(doc["payload"])["title"] == poisons[name]["title"]


def _assert_nothing_printed_the_record(caplog: pytest.LogCaptureFixture) -> None:
    for record in caplog.records:
        assert MARKER not in record.getMessage() + json.dumps(record.__dict__, default=str)


def test_poison_pills_in_a_replay_file_are_quarantined_and_the_rest_is_written(
    database, real_prs, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    secret, client = database
    poisons = _poisons(real_prs[0])
    replay = tmp_path / "poisoned.jsonl"
    payloads = [*real_prs[:15], *poisons.values(), *real_prs[15:]]  # poisons mid-page
    replay.write_text("".join(json.dumps(p) + "\n" for p in payloads))
    caplog.set_level(logging.INFO)

    first = FetchJob(secret, replay_files=[replay]).run()
    again = FetchJob(secret, replay_files=[replay]).run()

    assert first["inserted"] == GOOD + len(STORED)
    assert first["quarantined"] == len(REASONS)
    assert (again["inserted"], again["updated"]) == (0, 0)  # a re-run passes the same way
    assert again["quarantined"] == len(REASONS)
    db = client[secret.mongo_database]
    assert db.pull_requests_quarantine.count_documents({}) == len(REASONS)  # kept once
    _assert_poisons_handled(db, poisons, "replay:poisoned.jsonl")
    _assert_nothing_printed_the_record(caplog)


def test_a_record_over_the_database_document_limit_is_quarantined_with_an_excerpt(
    database, real_prs, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    secret, client = database
    huge = {**real_prs[0], "number": 990_100, "body": MARKER + "x" * MAX_DOCUMENT_BYTES}
    replay = tmp_path / "huge.jsonl"
    replay.write_text("".join(json.dumps(p) + "\n" for p in [*real_prs[:5], huge]))
    caplog.set_level(logging.INFO)

    summary = FetchJob(secret, replay_files=[replay]).run()

    assert (summary["inserted"], summary["quarantined"]) == (5, 1)
    [kept] = client[secret.mongo_database].pull_requests_quarantine.find()
    assert f"over MongoDB's limit of {MAX_DOCUMENT_BYTES:,}" in kept["reason"]
    assert kept["payload"]["characters"] > MAX_DOCUMENT_BYTES
    assert kept["payload"]["excerpt"].startswith('{"')
    assert kept["payload"]["sha256"]
    _assert_nothing_printed_the_record(caplog)


@pytest.fixture
def github(real_prs) -> Iterator[GitHubReplayServer]:
    with GitHubReplayServer({FLASK: copy.deepcopy(real_prs)}) as server:
        yield server


def _fetch(secret: FetchSecret, server: GitHubReplayServer, api: str) -> dict[str, Any]:
    client = GitHubClient(server.url, SecretStr(TOKEN), retry=RetryPolicy(base_delay=0.01))
    return FetchJob(secret, source="github", repositories=[FLASK], client=client, api=api).run()


@pytest.mark.parametrize("api", ["graphql", "rest"])
def test_poison_pills_from_the_github_api_are_quarantined_and_the_pass_completes(
    database, github: GitHubReplayServer, real_prs, api: str, caplog: pytest.LogCaptureFixture
):
    secret, client = database
    poisons = _poisons(real_prs[0])
    for poison in poisons.values():
        github.add_pull(FLASK, poison)
    caplog.set_level(logging.INFO)

    first = _fetch(secret, github, api)
    again = _fetch(secret, github, api)

    assert first["complete"] is True
    assert again["complete"] is True
    assert first["inserted"] == GOOD + len(STORED)
    assert first["quarantined"] == len(REASONS)
    _assert_poisons_handled(client[secret.mongo_database], poisons, f"github:{FLASK}")
    _assert_nothing_printed_the_record(caplog)


def test_a_record_from_the_future_does_not_freeze_incremental_fetching(
    database, github: GitHubReplayServer, real_prs
):
    """One record "updated in 2030" must not become the high-water mark: the real update
    made after the first run is fetched by the second."""
    secret, client = database
    github.add_pull(FLASK, {**real_prs[0], "number": 990_200, "updated_at": "2030-01-01T00:00:00Z"})
    _fetch(secret, github, "graphql")
    state = client[secret.mongo_database].pull_requests_fetch_state.find_one(
        {"_id": f"github:{FLASK}"}
    )
    assert state["high_water_mark"] <= datetime.now(UTC)

    changed = github.update_pull(FLASK, real_prs[5]["number"], title="a real update")
    again = _fetch(secret, github, "graphql")

    assert again["updated"] == 1
    stored = client[secret.mongo_database].pull_requests.find_one(
        {"number": changed["number"]}, {"title": 1}
    )
    assert stored["title"] == "a real update"
