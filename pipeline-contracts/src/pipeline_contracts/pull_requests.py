"""The pull-request input columns: one table from which every stage derives its view.

data-fetch writes these fields into MongoDB; spark-preprocess reads them (its Mongo
projection and Spark read schema are derived here) and validates them by the rules below;
model-serving's request model carries the same fields with the same bounds
(``pipeline_common.limits``), and builds :class:`~pipeline_contracts.features.FeatureInputs`
from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["text", "count", "time"]
SPARK_TYPES: dict[Kind, str] = {"text": "string", "count": "long", "time": "timestamp"}


@dataclass(frozen=True)
class InputColumn:
    name: str
    kind: Kind
    required: bool  # a record without it is quarantined ("missing <name>")
    feature_input: bool  # the feature formulas read it
    description: str

    @property
    def non_negative(self) -> bool:
        return self.kind == "count"


PULL_REQUEST_COLUMNS: tuple[InputColumn, ...] = (
    InputColumn("repository", "text", True, False, "owner/name"),
    InputColumn("number", "count", True, False, "the pull request's number in its repository"),
    InputColumn("author", "text", True, False, "the author's login"),
    InputColumn("title", "text", False, True, "title"),
    InputColumn("body", "text", False, True, "description; absent means empty"),
    InputColumn("created_at", "time", True, True, "when it was opened (UTC)"),
    InputColumn("merged_at", "time", False, True, "when it was merged (UTC); absent: not merged"),
    InputColumn("additions", "count", True, True, "lines added"),
    InputColumn("deletions", "count", True, True, "lines deleted"),
    InputColumn("changed_files", "count", True, True, "files changed"),
    InputColumn("commits", "count", True, True, "commits"),
)
COLUMNS_BY_NAME = {column.name: column for column in PULL_REQUEST_COLUMNS}
# The record's key: the identity of a pull request, not something the features read.
KEY_COLUMNS = ("repository", "number", "author", "created_at", "merged_at")
# What the feature formulas read from a record (besides the context columns).
FEATURE_INPUT_COLUMNS = tuple(c.name for c in PULL_REQUEST_COLUMNS if c.feature_input)
REQUIRED_COLUMNS = tuple(c.name for c in PULL_REQUEST_COLUMNS if c.required)
NON_NEGATIVE_COLUMNS = tuple(c.name for c in PULL_REQUEST_COLUMNS if c.non_negative)
COUNT_COLUMNS = tuple(c.name for c in PULL_REQUEST_COLUMNS if c.kind == "count")
# An older data-fetch wrote the author as `author_login`; readers take either.
LEGACY_AUTHOR_FIELD = "author_login"


def spark_schema(columns: tuple[InputColumn, ...] = PULL_REQUEST_COLUMNS) -> str:
    """The columns as a Spark DDL schema, the document's ``_id`` first."""
    return ", ".join(["_id string", *(f"{c.name} {SPARK_TYPES[c.kind]}" for c in columns)])
