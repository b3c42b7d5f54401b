"""MongoDB side of data-fetch: upserts keyed on (repository, number), and the quarantine."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, MongoClient
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError

from data_fetch.records import PullRequestRecord

DUPLICATE_KEY = 11000


@dataclass
class WriteCounts:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0  # the stored copy was as new or newer

    def add(self, other: WriteCounts) -> None:
        self.inserted += other.inserted
        self.updated += other.updated
        self.unchanged += other.unchanged


def document_id(repository: str, number: int) -> str:
    """The document id: the natural key, as a string (FerretDB looks string ids up directly)."""
    return f"{repository}#{number}"


def _as_utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class PullRequestStore:
    def __init__(self, client: MongoClient, database: str, collection: str):
        db = client[database]
        self.pull_requests: Collection = db[collection]
        self.quarantine: Collection = db[f"{collection}_quarantine"]
        # updated_at of stored pull requests by id, read once per repository and run
        self._stored: dict[str, datetime] = {}
        self._loaded_repositories: set[str] = set()

    def ensure_indexes(self) -> None:
        self.pull_requests.create_index(
            [("repository", ASCENDING), ("number", ASCENDING)], unique=True, name="pr_key"
        )

    def _load_stored_versions(self, repositories: set[str]) -> None:
        for repository in repositories - self._loaded_repositories:
            cursor = self.pull_requests.find({"repository": repository}, {"updated_at": 1})
            self._stored.update({doc["_id"]: _as_utc(doc["updated_at"]) for doc in cursor})
            self._loaded_repositories.add(repository)

    def upsert(self, records: list[PullRequestRecord], raw: list[dict[str, Any]]) -> WriteCounts:
        """Write the page: new pull requests in one bulk insert, changed ones (a newer
        ``updated_at`` than the stored copy) replaced by id, the rest left alone.

        Why not one conditional upsert per record (``{key, updated_at: {$lt: new}}``)?
        FerretDB 1.x, our local MongoDB, evaluates such filters by scanning the collection
        for every operation, which makes a 5,000-record replay take tens of minutes. Instead
        the stored versions are read once per repository and run. The stage runs as a
        single writer (CronJob with ``concurrencyPolicy: Forbid``), so they cannot go stale
        during a run, and the unique index still rejects a duplicate insert.
        """
        self._load_stored_versions({record.repository for record in records})
        stored = self._stored
        counts = WriteCounts()
        fetched_at = datetime.now(UTC)
        new_docs, changed = [], []
        for record, payload in zip(records, raw, strict=True):
            doc = {
                "_id": document_id(record.repository, record.number),
                **record.model_dump(mode="python"),
                "labels": list(record.labels),
                "raw": payload,
                "fetched_at": fetched_at,
            }
            previous = stored.get(doc["_id"])
            if previous is None:
                new_docs.append(doc)
            elif previous < record.updated_at:
                changed.append(doc)
            else:
                counts.unchanged += 1
                continue
            stored[doc["_id"]] = record.updated_at
        if new_docs:
            try:
                counts.inserted += len(
                    self.pull_requests.insert_many(new_docs, ordered=False).inserted_ids
                )
            except BulkWriteError as error:
                if any(e["code"] != DUPLICATE_KEY for e in error.details["writeErrors"]):
                    raise
                counts.inserted += error.details["nInserted"]
                counts.unchanged += len(error.details["writeErrors"])
        for doc in changed:
            self.pull_requests.replace_one({"_id": doc["_id"]}, doc)
            counts.updated += 1
        return counts

    def quarantine_payload(self, payload: Any, reason: str, source: str, run_id: str) -> None:
        """Keep a payload that could not be normalised, with the reason. Keyed on the
        payload's content, so re-running over the same input stores it once."""
        content = json.dumps(payload, sort_keys=True, default=str)
        self.quarantine.update_one(
            {"_id": hashlib.sha256(content.encode()).hexdigest()},
            {
                "$set": {
                    "payload": payload,
                    "reason": reason,
                    "source": source,
                    "run_id": run_id,
                    "quarantined_at": datetime.now(UTC),
                }
            },
            upsert=True,
        )
