"""FetchJob: read pull requests from a source, normalise them, upsert them into MongoDB."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymongo import MongoClient

from data_fetch.records import InvalidRecordError, normalize_rest_pull_request
from data_fetch.replay import read_replay_file
from data_fetch.settings import FetchSecret
from data_fetch.store import PullRequestStore, WriteCounts

log = logging.getLogger(__name__)

PAGE_SIZE = 100


@dataclass
class FetchJob:
    secret: FetchSecret
    replay_files: list[Path]
    limit_per_file: int | None = None
    dry_run: bool = False
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def run(self) -> dict[str, Any]:
        counts = WriteCounts()
        read = quarantined = 0
        with MongoClient(self.secret.mongo_uri.get_secret_value(), tz_aware=True) as client:
            store = PullRequestStore(
                client, self.secret.mongo_database, self.secret.mongo_collection
            )
            if not self.dry_run:
                store.ensure_indexes()
            for path in self.replay_files:
                source = f"replay:{path.name}"
                for page in _pages(read_replay_file(path), PAGE_SIZE, self.limit_per_file):
                    records, payloads = [], []
                    for line_number, payload in page:
                        read += 1
                        try:
                            records.append(normalize_rest_pull_request(payload))
                            payloads.append(payload)
                        except InvalidRecordError as error:
                            quarantined += 1
                            log.warning(
                                "quarantined a record",
                                extra={
                                    "source": source,
                                    "line": line_number,
                                    "reason": error.reason,
                                },
                            )
                            if not self.dry_run:
                                store.quarantine_payload(
                                    payload, error.reason, f"{source}:{line_number}", self.run_id
                                )
                    if not self.dry_run:
                        counts.add(store.upsert(records, payloads))
                log.info("replayed %s", path.name, extra={"records_read": read})
            total = store.pull_requests.count_documents({})
        return {
            "stage": "data-fetch",
            "run_id": self.run_id,
            "source": "replay",
            "records_read": read,
            "inserted": counts.inserted,
            "updated": counts.updated,
            "unchanged": counts.unchanged,
            "quarantined": quarantined,
            "dry_run": self.dry_run,
            "collection": f"{self.secret.mongo_database}.{self.secret.mongo_collection}",
            "collection_count": total,
        }


def _pages(items: Iterable[Any], size: int, limit: int | None) -> Iterable[list[Any]]:
    page: list[Any] = []
    for index, item in enumerate(items):
        if limit is not None and index >= limit:
            break
        page.append(item)
        if len(page) == size:
            yield page
            page = []
    if page:
        yield page
