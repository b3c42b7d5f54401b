"""The feature spec over pandas DataFrames: Spark partitions (``applyInPandas``), training
data sets and the MLflow pyfunc's input. Every formula is
``pipeline_contracts.features.feature_matrix``; this module only turns frames into its
arrays and back, and holds the validation rules, context columns and scoring that need whole
frames. Serving never imports it (no pandas in its image).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from pipeline_contracts.features import (
    CONTEXT_COLUMNS,
    FEATURE_NAMES,
    MERGED_BEFORE_CREATED,
    FeatureContext,
    FeatureInputs,
    feature_matrix,
    missing_reason,
    negative_reason,
    non_finite_reason,
)
from pipeline_contracts.pull_requests import NON_NEGATIVE_COLUMNS, REQUIRED_COLUMNS
from pipeline_contracts.scorer import AnomalyScorer

_EPOCH = pd.Timestamp(0, tz="UTC")


def input_problems(records: pd.DataFrame) -> pd.Series:
    """The first validation rule each record breaks (None when it breaks none)."""
    reasons = pd.Series(None, index=records.index, dtype="object")

    def flag(mask: pd.Series, reason: str) -> None:
        reasons.loc[mask & reasons.isna()] = reason

    for column in REQUIRED_COLUMNS:
        flag(records[column].isna(), missing_reason(column))
    for column in NON_NEGATIVE_COLUMNS:
        flag(pd.to_numeric(records[column], errors="coerce") < 0, negative_reason(column))
    created = pd.to_datetime(records["created_at"], utc=True)
    merged = pd.to_datetime(records["merged_at"], utc=True)
    flag(merged < created, MERGED_BEFORE_CREATED)
    return reasons.astype(object).where(reasons.notna(), None)


def feature_problems(features: pd.DataFrame) -> pd.Series:
    """``non-finite <feature>`` for the first feature that is NaN or infinite, else None."""
    reasons = pd.Series(None, index=features.index, dtype="object")
    for name in FEATURE_NAMES:
        bad = ~np.isfinite(features[name].to_numpy(dtype="float64"))
        reasons.loc[bad & reasons.isna().to_numpy()] = non_finite_reason(name)
    return reasons.astype(object).where(reasons.notna(), None)


def context_columns(records: pd.DataFrame) -> pd.DataFrame:
    """The context columns of pull requests, as of each one (spark-preprocess applies this
    to each repository's rows).

    Both look only at the pull requests of the same repository ordered by (created_at,
    number) before this one. ``author_prior_pull_requests``: how many of them the author
    opened. ``repository_median_changes``: the median of their additions + deletions (the
    pull request's own when it is the repository's first).
    """
    created = pd.to_datetime(records["created_at"], utc=True)
    changes = records["additions"].astype("float64") + records["deletions"].astype("float64")
    order = records.assign(_created=created, _changes=changes).sort_values(
        ["_created", "number"], kind="stable"
    )
    prior = order.groupby(["repository", "author"], sort=False).cumcount()
    earlier_median = order.groupby("repository", sort=False)["_changes"].transform(
        lambda sizes: sizes.expanding().median().shift(1)
    )
    median = earlier_median.fillna(order["_changes"]).reindex(records.index)
    return pd.DataFrame(
        {
            "author_prior_pull_requests": prior.reindex(records.index).astype("float64"),
            "repository_median_changes": median.astype("float64"),
        },
        index=records.index,
    )


def feature_context(records: pd.DataFrame) -> FeatureContext:
    """The context at the end of a snapshot of records, saved with a model: each author's
    pull requests per repository, and each repository's median additions + deletions."""
    changes = records["additions"].astype("float64") + records["deletions"].astype("float64")
    medians = changes.groupby(records["repository"]).median()
    counts = records.groupby(["repository", "author"]).size()
    authors: dict[str, dict[str, int]] = {}
    for (repository, author), count in counts.items():
        authors.setdefault(str(repository), {})[str(author)] = int(count)
    return FeatureContext({str(k): float(v) for k, v in medians.items()}, authors)


def attach_context(records: pd.DataFrame, context: FeatureContext | None) -> pd.DataFrame:
    """``records`` with the context columns filled where the record does not carry them
    (see :meth:`FeatureContext.fill`)."""
    frame = records.copy()
    nothing = np.full(len(frame), np.nan)
    given = {c: frame[c].to_numpy(np.float64) if c in frame else nothing for c in CONTEXT_COLUMNS}
    blank = [""] * len(frame)
    repositories = frame["repository"].tolist() if "repository" in frame else blank
    authors = frame["author"].tolist() if "author" in frame else blank
    own_changes = frame["additions"].to_numpy(np.float64) + frame["deletions"].to_numpy(np.float64)
    prior, median = (context or FeatureContext()).fill(
        repositories, authors, own_changes, *given.values()
    )
    frame["author_prior_pull_requests"] = prior
    frame["repository_median_changes"] = median
    return frame


def inputs_of_frame(records: pd.DataFrame) -> FeatureInputs:
    """From a frame with the feature input columns and :data:`CONTEXT_COLUMNS` (times as
    ISO strings, datetimes or datetime64, any zone)."""

    def number(column: str) -> np.ndarray:
        return number_of(records[column])

    def length(column: str) -> np.ndarray:
        return number_of(records[column].fillna("").str.len())

    def seconds(column: str) -> np.ndarray:
        moments = pd.to_datetime(records[column], utc=True)
        return number_of((moments - _EPOCH).dt.total_seconds())

    return FeatureInputs(
        additions=number("additions"),
        deletions=number("deletions"),
        changed_files=number("changed_files"),
        commits=number("commits"),
        title_length=length("title"),
        body_length=length("body"),
        created_seconds=seconds("created_at"),
        merged_seconds=seconds("merged_at"),
        author_prior_pull_requests=number("author_prior_pull_requests"),
        repository_median_changes=number("repository_median_changes"),
    )


def number_of(values: pd.Series) -> np.ndarray:
    return values.to_numpy(np.float64, na_value=np.nan)


def compute_features(records: pd.DataFrame) -> pd.DataFrame:
    """:func:`feature_matrix` of a frame, as a frame with the records' index.

    ``records`` carries the feature input columns (``pull_requests.FEATURE_INPUT_COLUMNS``)
    and the :data:`CONTEXT_COLUMNS`.
    """
    matrix = feature_matrix(inputs_of_frame(records))
    return pd.DataFrame(matrix, index=records.index, columns=list(FEATURE_NAMES))


def score_frame(
    scorer: AnomalyScorer, records: Sequence[dict[str, Any]] | pd.DataFrame
) -> list[dict[str, Any]]:
    """Verdicts of records given as a frame or dicts (the pyfunc's and training's path);
    context values a record lacks come from the scorer's snapshot."""
    frame = records if isinstance(records, pd.DataFrame) else pd.DataFrame(list(records))
    return scorer.score_features(compute_features(attach_context(frame, scorer.context)).to_numpy())
