"""MongoDB side of data-fetch: newer-wins upserts keyed on (repository, number), the
quarantine, and the per-repository fetch state that makes a killed run resumable."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import bson
import bson.errors
from pymongo import ASCENDING, InsertOne, MongoClient, UpdateOne
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError

from data_fetch.records import PullRequestRecord

DUPLICATE_KEY = 11000


# MongoDB's largest document; pymongo refuses a larger one for the whole bulk write
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
# how much of a server's error message a reason quotes (never the whole document)
_MESSAGE_CHARS = 300
_EXCERPT_CHARS = 64 * 1024
INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class RefusedRecord:
    """A payload the database would not store, and why: the caller quarantines it."""

    payload: Any
    reason: str


@dataclass
class WriteCounts:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0  # the stored copy was as new or newer
    refused: list[RefusedRecord] = field(default_factory=list)

    def add(self, other: WriteCounts) -> None:
        self.inserted += other.inserted
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.refused += other.refused


def escape_key(key: str) -> str:
    """A payload key MongoDB accepts: ``$`` first, ``.`` and NUL are reserved in field
    names, so they (and ``%``, to keep it reversible) are percent-escaped."""
    escaped = key.replace("%", "%25").replace(".", "%2E").replace("\0", "%00")
    return "%24" + escaped[1:] if escaped.startswith("$") else escaped


def unescape_key(key: str) -> str:
    return key.replace("%24", "$").replace("%2E", ".").replace("%00", "\0").replace("%25", "%")


def storable(value: Any) -> Any:
    """A JSON payload as MongoDB stores it whatever it holds: keys escaped
    (:func:`escape_key`), integers past 64 bits (which BSON cannot hold) as their decimal
    text. Everything else is kept as received."""
    if isinstance(value, dict):
        return {escape_key(str(k)): storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [storable(v) for v in value]
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and not (INT64[0] <= value <= INT64[1])
    ):
        return str(value)
    return value


def unstorable_reason(document: dict[str, Any]) -> str | None:
    """Why MongoDB would refuse ``document``, or None (checked before a bulk write, where
    one unencodable document fails the whole page)."""
    try:
        size = len(bson.encode(document))
    except (bson.errors.InvalidDocument, OverflowError, RecursionError) as error:
        return f"MongoDB cannot store it: {type(error).__name__}: {str(error)[:_MESSAGE_CHARS]}"
    if size > MAX_DOCUMENT_BYTES:
        return f"its document is {size:,} bytes, over MongoDB's limit of {MAX_DOCUMENT_BYTES:,}"
    return None


def document_id(repository: str, number: int) -> str:
    """The document id: the natural key, as a string (FerretDB looks string ids up directly)."""
    return f"{repository}#{number}"


def _as_utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def pull_request_document(
    record: PullRequestRecord, payload: Any, fetched_at: datetime
) -> dict[str, Any]:
    """The stored shape (the cross-stage contract): normalised fields at the top level,
    the source payload under ``raw`` (keys escaped, see :func:`storable`), and the record's
    ``schema_version``."""
    return {
        "_id": document_id(record.repository, record.number),
        **record.model_dump(mode="python"),
        "labels": list(record.labels),
        "assignees": list(record.assignees),
        "raw": storable(payload),
        "fetched_at": fetched_at,
    }


class PullRequestStore:
    """Writes one page of records with one bulk write.

    Whether a record is written is decided by the database: a new pull request is an
    ``InsertOne`` (the ``_id`` and the unique (repository, number) index reject a second
    copy), a known one is an ``UpdateOne`` whose filter is ``{_id, updated_at: {$lt: new}}``,
    so an older or equal copy never overwrites a newer one, whoever wrote it.

    Which of the two a record needs is guessed from the stored ``updated_at`` values, read
    once per repository and run (one query) and kept current as pages are written. The
    guess only saves work: a record known to be stored as new or newer is not sent at all.
    Without it, every unchanged record of a re-run would be a conditional update, and
    FerretDB (our local MongoDB) evaluates any filter other than a bare string ``_id`` by
    scanning the collection: 5,053 conditional upserts take over ten minutes there, against
    about two seconds this way (README, "Write path"). A wrong guess stays correct: an
    insert of an id that another writer stored meanwhile fails with a duplicate key and is
    retried as a conditional update.
    """

    def __init__(self, client: MongoClient, database: str, collection: str):
        db = client[database]
        self.pull_requests: Collection = db[collection]
        self.quarantine: Collection = db[f"{collection}_quarantine"]
        self.fetch_state: Collection = db[f"{collection}_fetch_state"]
        self._stored: dict[str, datetime] = {}
        self._loaded_repositories: set[str] = set()

    def ensure_indexes(self) -> None:
        self.pull_requests.create_index(
            [("repository", ASCENDING), ("number", ASCENDING)], unique=True, name="pr_key"
        )

    def read_stored_versions(self, repositories: set[str]) -> None:
        for repository in repositories - self._loaded_repositories:
            cursor = self.pull_requests.find({"repository": repository}, {"updated_at": 1})
            self._stored.update({doc["_id"]: _as_utc(doc["updated_at"]) for doc in cursor})
            self._loaded_repositories.add(repository)

    def upsert(self, records: list[PullRequestRecord], raw: list[Any]) -> WriteCounts:
        """Write one page; returns what happened to each record. A record the database
        refuses is in ``refused`` (with the reason); the rest of the page is written."""
        self.read_stored_versions({record.repository for record in records})
        counts = WriteCounts()
        fetched_at = datetime.now(UTC)
        # The newest copy of each pull request in the page (a page may repeat one).
        newest: dict[str, dict[str, Any]] = {}
        payloads: dict[str, Any] = {}
        for record, payload in zip(records, raw, strict=True):
            doc = pull_request_document(record, payload, fetched_at)
            problem = unstorable_reason(doc)
            if problem is not None:
                counts.refused.append(RefusedRecord(payload, problem))
                continue
            kept = newest.get(doc["_id"])
            if kept is None or kept["updated_at"] < doc["updated_at"]:
                newest[doc["_id"]] = doc
                payloads[doc["_id"]] = payload
        counts.unchanged += len(records) - len(counts.refused) - len(newest)

        inserts, updates = [], []
        for doc_id, doc in newest.items():
            stored = self._stored.get(doc_id)
            if stored is None:
                inserts.append(doc)
            elif stored < doc["updated_at"]:
                updates.append(doc)
            else:
                counts.unchanged += 1
        written = self._write(inserts, updates)
        counts.add(written.counts)
        counts.refused += [RefusedRecord(payloads[i], why) for i, why in written.refused.items()]
        for doc in inserts + updates:
            previous = self._stored.get(doc["_id"])
            if doc["_id"] not in written.refused and (
                previous is None or previous < doc["updated_at"]
            ):
                self._stored[doc["_id"]] = doc["updated_at"]
        return counts

    def _write(self, inserts: list[dict], updates: list[dict]) -> _Written:
        counts = WriteCounts()
        operations = [InsertOne(doc) for doc in inserts] + [_newer_only(doc) for doc in updates]
        if not operations:
            return _Written(counts, {})
        refused: dict[str, str] = {}
        details: Mapping[str, Any]  # the counts, from the result or from the error
        try:
            result = self.pull_requests.bulk_write(operations, ordered=False)
            details = {"nInserted": result.inserted_count, "nMatched": result.matched_count}
            lost_inserts: list[dict] = []
        except BulkWriteError as error:
            # Never str(error): its details carry every refused document in full.
            details = error.details
            documents = inserts + updates
            lost_inserts = []
            for e in details["writeErrors"]:
                if e["code"] == DUPLICATE_KEY and e["index"] < len(inserts):
                    lost_inserts.append(inserts[e["index"]])
                else:
                    refused[documents[e["index"]]["_id"]] = (
                        f"MongoDB refused it (code {e['code']}): "
                        f"{str(e.get('errmsg'))[:_MESSAGE_CHARS]}"
                    )
        refused_updates = sum(1 for doc in updates if doc["_id"] in refused)
        counts.inserted = details["nInserted"]
        counts.updated = details["nMatched"]
        counts.unchanged = len(updates) - refused_updates - details["nMatched"]
        if lost_inserts:
            # Stored by someone else since the stored versions were read: newer wins.
            retry = self.pull_requests.bulk_write(
                [_newer_only(doc) for doc in lost_inserts], ordered=False
            )
            counts.updated += retry.matched_count
            counts.unchanged += len(lost_inserts) - retry.matched_count
        return _Written(counts, refused)

    def quarantine_payload(self, payload: Any, reason: str, source: str, run_id: str) -> None:
        """Keep a payload that could not be normalised or stored, with the reason. Keyed on
        the payload's content, so re-running over the same input stores it once. A payload
        too large to store even so keeps its first bytes, its size and its digest."""
        content = json.dumps(payload, sort_keys=True, default=str)
        digest = hashlib.sha256(content.encode()).hexdigest()
        document = {
            "payload": storable(payload),
            "reason": reason,
            "source": source,
            "run_id": run_id,
            "quarantined_at": datetime.now(UTC),
        }
        if unstorable_reason(document) is not None:
            document["payload"] = {
                "excerpt": content[:_EXCERPT_CHARS],
                "characters": len(content),
                "sha256": digest,
            }
            document["reason"] = f"{reason}; payload too large to keep whole: an excerpt"
        self.quarantine.replace_one({"_id": digest}, document, upsert=True)

    # -- fetch state ---------------------------------------------------------------------
    def load_state(self, source: str, repository: str) -> FetchState:
        doc = self.fetch_state.find_one({"_id": FetchState.state_id(source, repository)})
        return FetchState.from_document(doc) if doc else FetchState(source, repository)

    def save_state(self, state: FetchState) -> None:
        self.fetch_state.replace_one({"_id": state.id}, state.to_document(), upsert=True)


@dataclass(frozen=True)
class _Written:
    counts: WriteCounts
    refused: dict[str, str]  # document id -> why the database refused it


def _newer_only(doc: dict[str, Any]) -> UpdateOne:
    fields = {k: v for k, v in doc.items() if k != "_id"}
    return UpdateOne(
        {"_id": doc["_id"], "updated_at": {"$lt": doc["updated_at"]}}, {"$set": fields}
    )


@dataclass
class FetchState:
    """Where fetching one repository from one source stands, saved after every written page.

    ``high_water_mark`` is the newest ``updated_at`` of the last *completed* pass: pages
    come newest first, so a pass can stop at the first record at or below it. While a pass
    runs, ``cursor`` says where the next page starts and ``pass_high_water_mark`` is the
    newest record the pass has seen; a run killed in between resumes at ``cursor``, and the
    mark moves only when the pass reaches its end.
    """

    source: str
    repository: str
    high_water_mark: datetime | None = None
    cursor: str | None = None
    pass_high_water_mark: datetime | None = None
    pass_run_id: str | None = None
    pages: int = 0
    fetched: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    quarantined: int = 0
    last_run_id: str | None = None
    last_completed_at: datetime | None = None
    saved_at: datetime | None = None

    @staticmethod
    def state_id(source: str, repository: str) -> str:
        return f"{source}:{repository}"

    @property
    def id(self) -> str:
        return self.state_id(self.source, self.repository)

    @property
    def in_progress(self) -> bool:
        return self.pass_run_id is not None

    def reset_counts(self) -> None:
        self.pages = self.fetched = self.inserted = self.updated = 0
        self.unchanged = self.quarantined = 0

    def to_document(self) -> dict[str, Any]:
        return {"_id": self.id, **asdict(self), "saved_at": datetime.now(UTC)}

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> FetchState:
        fields = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
        for name in ("high_water_mark", "pass_high_water_mark", "last_completed_at", "saved_at"):
            if fields.get(name) is not None:
                fields[name] = _as_utc(fields[name])
        return cls(**fields)
