"""A partitioned MongoDB reader on the Spark 4 Python Data Source API.

Why it exists: against FerretDB (our local MongoDB) the official connector only reads in one
partition (its sampling partitioners need ``$collStats``/``$sample``). This reader plans
disjoint partitions on the driver from one ``$group`` (pull requests per repository) and
reads each on an executor with pymongo: a big repository *R* is split into
``{repository: R, number: {$mod: [k, i]}}``, small ones are packed into
``{repository: {$in: [...]}}``. The partitions are disjoint and together hold every
document whose key (repository, number) follows the data-fetch contract; documents
without a repository get a partition of their own, so nothing is dropped silently.

On MongoDB each partition walks the ``(repository, number)`` index prefix of its
repository. FerretDB pushes down only ``_id`` equality, so there each partition scans the
collection: see the README's benchmark for what that costs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pyspark.sql.datasource import DataSource, DataSourceReader, InputPartition
from pyspark.sql.types import StructType

FORMAT = "pull_requests_mongo"

# Read schema: `author` is coalesced from `author` and the older `author_login`.
READ_SCHEMA = (
    "_id string, repository string, number long, author string, title string, body string, "
    "created_at timestamp, merged_at timestamp, "
    "additions long, deletions long, changed_files long, commits long"
)
_PROJECTION = {
    name: 1
    for name in (
        "repository",
        "number",
        "author",
        "author_login",
        "title",
        "body",
        "created_at",
        "merged_at",
        "additions",
        "deletions",
        "changed_files",
        "commits",
    )
}
_INTEGER_FIELDS = ("number", "additions", "deletions", "changed_files", "commits")


@dataclass(frozen=True)
class MongoPartition(InputPartition):
    filter: dict[str, Any]


def plan_partitions(counts: dict[str | None, int], partitions: int) -> list[dict[str, Any]]:
    """Filters for about ``partitions`` disjoint partitions of similar size.

    A repository holding at least two partitions' worth is split by ``number`` modulo its
    share; smaller repositories are packed together (``$in``), so many small repositories
    do not make many partitions (on FerretDB every partition is a collection scan).
    """
    total = sum(counts.values()) or 1
    filters: list[dict[str, Any]] = []
    small: list[tuple[str, int]] = []
    for repository, count in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0]))):
        if repository is None:
            continue
        classes = math.floor(partitions * count / total + 0.5)
        if classes >= 2:
            filters.extend(
                {"repository": repository, "number": {"$mod": [classes, i]}} for i in range(classes)
            )
        else:
            small.append((repository, count))
    bins: list[list[str]] = [[] for _ in range(max(1, partitions - len(filters)))]
    sizes = [0] * len(bins)
    for repository, count in small:  # largest first, into the emptiest bin
        emptiest = sizes.index(min(sizes))
        bins[emptiest].append(repository)
        sizes[emptiest] += count
    for names in bins:
        if names:
            names.sort()
            filters.append(
                {"repository": names[0]} if len(names) == 1 else {"repository": {"$in": names}}
            )
    if None in counts:  # read, then quarantined for the missing repository
        filters.append({"repository": None})
    return filters or [{}]


def _integer(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None  # wrong type: read as missing, so validation quarantines the record


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def document_row(doc: dict[str, Any]) -> tuple:
    from datetime import datetime

    def timestamp(name: str):
        value = doc.get(name)
        return value if isinstance(value, datetime) else None

    return (
        str(doc["_id"]),
        _text(doc.get("repository")),
        _integer(doc.get("number")),
        _text(doc.get("author")) or _text(doc.get("author_login")),
        _text(doc.get("title")),
        _text(doc.get("body")),
        timestamp("created_at"),
        timestamp("merged_at"),
        *(_integer(doc.get(name)) for name in _INTEGER_FIELDS[1:]),
    )


class PullRequestReader(DataSourceReader):
    def __init__(self, options: dict[str, str]):
        self.uri = options["uri"]
        self.database = options["database"]
        self.collection = options["collection"]
        self.partitions_wanted = int(options.get("partitions", "4"))

    def partitions(self) -> list[MongoPartition]:
        import pymongo

        with pymongo.MongoClient(self.uri) as client:
            groups = client[self.database][self.collection].aggregate(
                [{"$group": {"_id": "$repository", "n": {"$sum": 1}}}]
            )
            counts = {group["_id"]: int(group["n"]) for group in groups}
        return [MongoPartition(f) for f in plan_partitions(counts, self.partitions_wanted)]

    def read(self, partition: MongoPartition) -> Iterator[tuple]:
        import pymongo

        # tz_aware: BSON datetimes are UTC; naive ones would be read in the worker's zone
        with pymongo.MongoClient(self.uri, tz_aware=True) as client:
            cursor = client[self.database][self.collection].find(
                partition.filter, _PROJECTION, batch_size=2000
            )
            for doc in cursor:
                yield document_row(doc)


class PullRequestDataSource(DataSource):
    """``spark.read.format("pull_requests_mongo")`` with options uri, database,
    collection, partitions."""

    @classmethod
    def name(cls) -> str:
        return FORMAT

    def schema(self) -> str:
        return READ_SCHEMA

    def reader(self, schema: StructType) -> PullRequestReader:
        return PullRequestReader(dict(self.options))
