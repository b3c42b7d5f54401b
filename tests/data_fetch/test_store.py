"""The write path against the real FerretDB: newer wins even when another writer changed
the collection after this one read the stored versions (the database decides)."""

from __future__ import annotations

import gzip
import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pymongo
import pytest

from data_fetch.records import PullRequestRecord, normalize_rest_pull_request
from data_fetch.store import FetchState, PullRequestStore
from pipeline_ops.local_env import LocalEnvironment


@pytest.fixture
def collection_name(local_env: LocalEnvironment) -> Iterator[tuple[pymongo.MongoClient, str]]:
    client = pymongo.MongoClient(
        local_env.stage_secrets()["data-fetch"]["mongo_uri"], tz_aware=True
    )
    name = f"t_store_{uuid.uuid4().hex[:10]}"
    try:
        yield client, name
    finally:
        client.drop_database(name)
        client.close()


@pytest.fixture(scope="module")
def payload(samples_dir: Path) -> dict[str, Any]:
    with gzip.open(samples_dir / "pallets__flask.prs.jsonl.gz", "rt") as lines:
        return json.loads(next(lines))


def _version(payload: dict[str, Any], days: int, title: str) -> PullRequestRecord:
    record = normalize_rest_pull_request(payload)
    return record.model_copy(
        update={"updated_at": record.updated_at + timedelta(days=days), "title": title}
    )


def _stores(client: pymongo.MongoClient, name: str) -> tuple[PullRequestStore, PullRequestStore]:
    first, second = (PullRequestStore(client, name, "pull_requests") for _ in range(2))
    first.ensure_indexes()
    return first, second


def test_a_stale_writer_cannot_overwrite_a_newer_copy_stored_meanwhile(collection_name, payload):
    client, name = collection_name
    stale, fresh = _stores(client, name)
    stale.read_stored_versions({"pallets/flask"})  # none stored yet
    fresh.upsert([_version(payload, 2, "newer")], [payload])

    counts = stale.upsert([_version(payload, 1, "older")], [payload])

    assert (counts.inserted, counts.updated, counts.unchanged) == (0, 0, 1)
    assert client[name].pull_requests.find_one({})["title"] == "newer"


def test_a_newer_copy_wins_over_an_older_one_stored_meanwhile(collection_name, payload):
    client, name = collection_name
    late, other = _stores(client, name)
    late.read_stored_versions({"pallets/flask"})
    other.upsert([_version(payload, 1, "older")], [payload])

    counts = late.upsert([_version(payload, 2, "newer")], [payload])

    assert (counts.inserted, counts.updated, counts.unchanged) == (0, 1, 0)
    assert client[name].pull_requests.count_documents({}) == 1
    assert client[name].pull_requests.find_one({})["title"] == "newer"


def test_fetch_state_round_trips(collection_name):
    client, name = collection_name
    store = PullRequestStore(client, name, "pull_requests")
    state = store.load_state("github", "pallets/flask")
    assert (state.high_water_mark, state.cursor, state.in_progress) == (None, None, False)
    state.cursor, state.pass_run_id, state.inserted = "abc", "run1", 7

    store.save_state(state)

    loaded = store.load_state("github", "pallets/flask")
    assert isinstance(loaded, FetchState)
    assert (loaded.cursor, loaded.in_progress, loaded.inserted) == ("abc", True, 7)
    assert loaded.saved_at is not None
