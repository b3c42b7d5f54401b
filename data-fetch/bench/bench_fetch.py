"""`make bench-fetch`: API requests per 1,000 pull requests (data-fetch's GraphQL client
against a naive REST client, on the same local GitHub replay server) and MongoDB upsert
throughput (the full sample, 100,000 synthetic records, and the write strategies that were
considered). Prints figures and ratios; asserts nothing. Runs its own FerretDB in a
temporary directory and stops it by pid.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pymongo
import requests
from pydantic import SecretStr
from pymongo import UpdateOne
from pymongo.errors import BulkWriteError

from data_fetch.github import GitHubClient
from data_fetch.job import FetchJob
from data_fetch.records import normalize_rest_pull_request
from data_fetch.settings import FetchSecret
from data_fetch.store import PullRequestStore, WriteCounts, pull_request_document
from pipeline_ops.github_replay_server import GitHubReplayServer, load_samples
from pipeline_ops.local_platform import LocalPlatform

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SAMPLES = PROJECT_ROOT / "data" / "samples"


def naive_rest_fetch(server_url: str, repositories: list[str]) -> tuple[int, int]:
    """What the original project did through PyGithub's lazy fields: list pages, then one
    request per pull request for the counts. Returns (pull requests, requests)."""
    session, made, pulls = requests.Session(), 0, 0
    for repository in repositories:
        url: str | None = f"{server_url}/repos/{repository}/pulls"
        params: dict[str, Any] | None = {"state": "all", "per_page": 100}
        while url:
            response = session.get(url, params=params, timeout=30)
            made += 1
            for item in response.json():
                session.get(item["url"], timeout=30).json()
                made += 1
                pulls += 1
            url, params = response.links.get("next", {}).get("url"), None
    return pulls, made


def per_thousand(requests_made: int, pulls: int) -> float:
    return 1000 * requests_made / max(pulls, 1)


def bench_requests(mongo_uri: str, samples: dict[str, list[dict]]) -> None:
    repositories = sorted(samples)
    secret = FetchSecret(mongo_uri=mongo_uri, mongo_database=f"bench_{uuid.uuid4().hex[:8]}")
    # A budget large enough for the naive client (GitHub's is 5,000 an hour).
    with GitHubReplayServer(samples, rate_limit=1_000_000) as server:

        def ours() -> dict[str, Any]:
            client = GitHubClient(server.url, SecretStr("bench-token"))
            return FetchJob(secret, source="github", repositories=repositories, client=client).run()

        full = ours()
        unchanged = ours()
        pulls, naive_full = naive_rest_fetch(server.url, repositories)
        _, naive_again = naive_rest_fetch(server.url, repositories)
    pymongo.MongoClient(mongo_uri).drop_database(secret.mongo_database)
    total = full["fetched"]
    print(f"\nAPI requests ({len(repositories)} repositories, {total:,} pull requests)")
    print(f"  {'':34}{'data-fetch (GraphQL)':>22}{'naive REST':>14}{'ratio':>9}")
    rows = [
        ("full fetch: requests", full["requests_used"], naive_full),
        (
            "full fetch: per 1,000 PRs",
            per_thousand(full["requests_used"], total),
            per_thousand(naive_full, pulls),
        ),
        ("unchanged re-run: requests", unchanged["requests_used"], naive_again),
        (
            "unchanged re-run: per repository",
            unchanged["requests_used"] / len(repositories),
            naive_again / len(repositories),
        ),
    ]
    for label, mine, naive in rows:
        print(f"  {label:34}{mine:>22,.1f}{naive:>14,.1f}{naive / max(mine, 1e-9):>8.0f}x")


def sample_records(samples: dict[str, list[dict]]) -> list[tuple[Any, dict]]:
    payloads = [p for pulls in samples.values() for p in pulls]
    return [(normalize_rest_pull_request(p), p) for p in payloads]


def synthetic_records(samples: dict[str, list[dict]], count: int) -> list[tuple[Any, dict]]:
    """``count`` records shaped like the sample (cycled through it) in one repository."""
    base = [p for pulls in samples.values() for p in pulls]
    start = datetime(2020, 1, 1, tzinfo=UTC)
    records = []
    for index in range(count):
        payload = copy.deepcopy(base[index % len(base)])
        payload["number"] = index + 1
        payload["base"] = {"repo": {"full_name": "synthetic/pulls"}}
        stamp = (start + timedelta(minutes=index)).strftime("%Y-%m-%dT%H:%M:%SZ")
        payload["created_at"] = payload["updated_at"] = stamp
        payload["closed_at"] = payload["merged_at"] = stamp
        records.append((normalize_rest_pull_request(payload), payload))
    return records


def timed_upsert(store: PullRequestStore, records: list[tuple[Any, dict]]) -> tuple[float, Any]:
    counts = WriteCounts()
    started = time.perf_counter()
    for offset in range(0, len(records), 100):
        page = records[offset : offset + 100]
        counts.add(store.upsert([r for r, _ in page], [p for _, p in page]))
    return time.perf_counter() - started, counts


def conditional_upserts(collection: Any, records: list[tuple[Any, dict]]) -> float:
    """The MongoDB idiom, one bulk per page: UpdateOne({_id, updated_at < new}, $set,
    upsert=True); a stale copy fails with a duplicate key (counted as unchanged)."""
    now = datetime.now(UTC)
    started = time.perf_counter()
    for offset in range(0, len(records), 100):
        operations = []
        for record, payload in records[offset : offset + 100]:
            doc = pull_request_document(record, payload, now)
            doc_id = doc.pop("_id")
            operations.append(
                UpdateOne(
                    {"_id": doc_id, "updated_at": {"$lt": doc["updated_at"]}},
                    {"$set": doc},
                    upsert=True,
                )
            )
        with contextlib.suppress(BulkWriteError):
            collection.bulk_write(operations, ordered=False)
    return time.perf_counter() - started


def bench_writes(
    mongo_uri: str,
    samples: dict[str, list[dict]],
    synthetic: int,
    conditional_sample: int,
    changed: int,
) -> None:
    client = pymongo.MongoClient(mongo_uri, tz_aware=True)
    sample = sample_records(samples)
    print("\nMongoDB writes (FerretDB 1.24.2, SQLite), 100 records a bulk write")
    print(f"  {'case':58}{'records':>9}{'seconds':>9}{'rec/s':>9}")

    def row(label: str, records: int, seconds: float) -> None:
        print(f"  {label:58}{records:>9,}{seconds:>9.2f}{records / seconds:>9,.0f}")

    name = f"bench_{uuid.uuid4().hex[:8]}"
    store = PullRequestStore(client, name, "pull_requests")
    store.ensure_indexes()
    seconds, _ = timed_upsert(store, sample)
    row("chosen: full sample into an empty collection", len(sample), seconds)
    seconds, counts = timed_upsert(PullRequestStore(client, name, "pull_requests"), sample)
    assert counts.unchanged == len(sample)
    row("chosen: full sample again, unchanged (new process)", len(sample), seconds)
    bumped = [
        (r.model_copy(update={"updated_at": r.updated_at + timedelta(days=1)}), p)
        for r, p in sample[:changed]
    ]
    seconds, counts = timed_upsert(PullRequestStore(client, name, "pull_requests"), bumped)
    assert counts.updated == changed
    row(f"chosen: {changed} changed records into the full sample", changed, seconds)
    client.drop_database(name)

    name = f"bench_{uuid.uuid4().hex[:8]}"
    collection = client[name]["pull_requests"]
    collection.create_index([("repository", 1), ("number", 1)], unique=True)
    subset = sample[:conditional_sample]
    seconds = conditional_upserts(collection, subset)
    row(f"per-record conditional upsert: first {len(subset)} into empty", len(subset), seconds)
    try:
        seconds = conditional_upserts(collection, subset)
        row(f"per-record conditional upsert: same {len(subset)} again", len(subset), seconds)
    except KeyError as error:
        # FerretDB answers a bulk whose upserts hit duplicate keys without nModified.
        print(
            f"  per-record conditional upsert: same {len(subset)} again: FAILS on FerretDB "
            f"(pymongo KeyError {error} merging the bulk reply)"
        )
    client.drop_database(name)

    if synthetic:
        records = synthetic_records(samples, synthetic)
        name = f"bench_{uuid.uuid4().hex[:8]}"
        store = PullRequestStore(client, name, "pull_requests")
        store.ensure_indexes()
        seconds, counts = timed_upsert(store, records)
        assert counts.inserted == synthetic
        row("chosen: synthetic records into an empty collection", synthetic, seconds)
        client.drop_database(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--synthetic", type=int, default=100_000)
    parser.add_argument("--conditional-sample", type=int, default=200)
    parser.add_argument("--changed", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    samples = load_samples(SAMPLES)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-fetch-") as state:
        platform = LocalPlatform(Path(state))
        try:
            platform.up(["mongo"])
            uri = f"mongodb://127.0.0.1:{platform.service('mongo').port}/"
            bench_requests(uri, samples)
            bench_writes(uri, samples, args.synthetic, args.conditional_sample, args.changed)
        finally:
            platform.down()
    print(f"\nbench-fetch took {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
