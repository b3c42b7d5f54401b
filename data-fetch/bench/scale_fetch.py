"""One point of `make bench-scale`'s data-fetch curve: fetch every listed repository from a
GitHub API (the replay server, which enforces the rate budget) with data-fetch's GraphQL
client, waiting for the budget's resets (``--wait-for-reset``), normalising and validating
every pull request; ``--dry-run``, so MongoDB is read for the fetch state but not written
(`make bench-fetch` measures the writes). Prints one JSON line: pull requests, requests,
seconds, seconds spent waiting for the budget.

    python data-fetch/bench/scale_fetch.py --api-url URL --mongo-uri URI --repositories FILE
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pydantic import SecretStr

from data_fetch.github import GitHubClient, RetryPolicy
from data_fetch.job import FetchJob
from data_fetch.settings import FetchSecret


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api-url", required=True)
    parser.add_argument("--mongo-uri", required=True)
    parser.add_argument("--repositories", type=Path, required=True, help="one owner/name a line")
    args = parser.parse_args()
    repositories = args.repositories.read_text().split()
    waited = 0.0

    def sleep(seconds: float) -> None:
        nonlocal waited
        waited += seconds
        time.sleep(seconds)

    client = GitHubClient(
        args.api_url,
        SecretStr("bench-scale-token"),
        retry=RetryPolicy(wait_for_reset=True),
        sleep=sleep,
    )
    secret = FetchSecret(mongo_uri=args.mongo_uri, mongo_database="bench_scale")
    started = time.perf_counter()
    summary = FetchJob(
        secret, source="github", repositories=repositories, client=client, dry_run=True
    ).run()
    seconds = time.perf_counter() - started
    result = {
        "rows": summary["fetched"],
        "quarantined": summary["quarantined"],
        "requests": summary["requests_used"],
        "complete": summary["complete"],
        "seconds": seconds,
        "waited_seconds": waited,
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
