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

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pyspark.sql.datasource import DataSource, DataSourceReader, InputPartition
from pyspark.sql.types import StructType

from pipeline_common.limits import EARLIEST_TIME, LATEST_TIME, MAX_COUNT
from pipeline_contracts.pull_requests import (
    LEGACY_AUTHOR_FIELD,
    PULL_REQUEST_COLUMNS,
    spark_schema,
)

FORMAT = "pull_requests_mongo"

# The document's fields, as the input table defines them (`author` is coalesced from
# `author` and the older `author_login`).
DOCUMENT_SCHEMA = spark_schema()
# What the reader found wrong with a document's fields (a wrong type, a count or time
# outside pipeline_common.limits), and those fields' original values as JSON: such a field
# is read as null, and the quarantined row still shows what the database held.
READ_PROBLEM = "read_problem"
RAW_VALUES = "raw_values"
READ_SCHEMA = f"{DOCUMENT_SCHEMA}, {READ_PROBLEM} string, {RAW_VALUES} string"


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


def _integer(value: Any) -> tuple[int | None, str | None]:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return None, "is not an integer"
    if value > MAX_COUNT:  # negative ones are the input rules' to quarantine
        return None, f"is above the largest count accepted ({MAX_COUNT})"
    return value, None


def _text(value: Any) -> tuple[str | None, str | None]:
    return (value, None) if isinstance(value, str) else (None, "is not a string")


def _timestamp(value: Any) -> tuple[datetime | None, str | None]:
    if not isinstance(value, datetime):
        return None, "is not a date"
    if not EARLIEST_TIME <= value < LATEST_TIME:
        return None, f"is outside {EARLIEST_TIME:%Y}-{LATEST_TIME:%Y}"
    return value, None


# Each field read, and how its value is checked and converted.
_CONVERTERS = {"text": _text, "count": _integer, "time": _timestamp}
_FIELD_TYPES = {
    **{column.name: _CONVERTERS[column.kind] for column in PULL_REQUEST_COLUMNS},
    LEGACY_AUTHOR_FIELD: _text,
}
_PROJECTION = dict.fromkeys(_FIELD_TYPES, 1)


def document_row(doc: dict[str, Any]) -> tuple:
    """One document as a :data:`READ_SCHEMA` row. A field of the wrong type, or out of
    range, is read as null and named in ``read_problem``, its value kept in ``raw_values``."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    raw: dict[str, Any] = {}
    for name, convert in _FIELD_TYPES.items():
        original = doc.get(name)
        if original is None:
            values[name] = None
            continue
        values[name], problem = convert(original)
        if problem:
            problems.append(f"{name} {problem}")
            raw[name] = original
    values["author"] = values["author"] or values[LEGACY_AUTHOR_FIELD]
    return (
        str(doc["_id"]),
        *(values[column.name] for column in PULL_REQUEST_COLUMNS),
        "; ".join(problems) or None,
        json.dumps(raw, default=str, sort_keys=True) if raw else None,
    )


class PullRequestReader(DataSourceReader):
    def __init__(self, options: dict[str, str]):
        self.uri = options["uri"]
        self.database = options["database"]
        self.collection = options["collection"]
        self.partitions_wanted = int(options.get("partitions", "4"))

    def partitions(self) -> list[MongoPartition]:
        import pymongo

        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(self.uri)
        with client:
            groups = client[self.database][self.collection].aggregate(
                [{"$group": {"_id": "$repository", "n": {"$sum": 1}}}]
            )
            counts = {group["_id"]: int(group["n"]) for group in groups}
        return [MongoPartition(f) for f in plan_partitions(counts, self.partitions_wanted)]

    def read(self, partition: InputPartition) -> Iterator[tuple]:
        import pymongo

        if not isinstance(partition, MongoPartition):  # Spark passes back those planned above
            raise TypeError(f"not a partition this reader planned: {partition!r}")
        # tz_aware: BSON datetimes are UTC; naive ones would be read in the worker's zone
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(self.uri, tz_aware=True)
        with client:
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
