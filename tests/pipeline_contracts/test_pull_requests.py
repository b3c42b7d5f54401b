"""The pull-request input table: every stage's view of a record follows it."""

from __future__ import annotations

from ml_pipeline.preprocess.mongo_source import READ_SCHEMA, document_row
from model_serving.app import PullRequestIn
from pipeline_contracts.pull_requests import (
    PULL_REQUEST_COLUMNS,
    REQUIRED_COLUMNS,
)


def test_the_spark_reader_reads_every_column_of_the_table_in_its_order() -> None:
    names = [part.split()[0] for part in READ_SCHEMA.split(", ")]
    assert names[1 : 1 + len(PULL_REQUEST_COLUMNS)] == [c.name for c in PULL_REQUEST_COLUMNS]
    doc = {"_id": "o/r#1", **{c.name: None for c in PULL_REQUEST_COLUMNS}}
    assert len(document_row(doc)) == len(names)


def test_serving_accepts_every_input_column_and_requires_the_counts_and_times() -> None:
    fields = PullRequestIn.model_fields
    assert {c.name for c in PULL_REQUEST_COLUMNS} <= set(fields)
    required_by_serving = {name for name, field in fields.items() if field.is_required()}
    # serving scores a record without its identity (repository, number, author are context)
    assert required_by_serving == set(REQUIRED_COLUMNS) - {"repository", "number", "author"}
