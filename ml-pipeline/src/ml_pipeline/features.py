"""The feature definition: one spec, used by Spark preprocessing, training and serving.

Pure pandas/numpy: Spark applies :func:`compute_features` to each partition
(``mapInPandas``), the model applies it to raw records at scoring time, so training and
serving cannot disagree. Bump ``FEATURE_SPEC_VERSION`` whenever a formula changes.

Two features need more than the record itself: the author's history in the repository and
the repository's typical size. They read two *context columns*. Preprocessing computes them
over the whole data set (as of each pull request, so no look-ahead); at scoring time
:func:`attach_context` fills them from a :class:`FeatureContext` saved with the model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

FEATURE_SPEC_VERSION = "2"


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    formula: str
    unit: str


FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec("log_additions", "ln(1 + additions)", "log lines"),
    FeatureSpec("log_deletions", "ln(1 + deletions)", "log lines"),
    FeatureSpec("log_changed_files", "ln(1 + changed_files)", "log files"),
    FeatureSpec("log_commits", "ln(1 + commits)", "log commits"),
    FeatureSpec(
        "churn_balance",
        "(additions - deletions) / (additions + deletions), 0 when both are 0",
        "ratio in [-1, 1]",
    ),
    FeatureSpec("log_hours_to_merge", "ln(1 + hours from created_at to merged_at)", "log hours"),
    FeatureSpec("log_title_length", "ln(1 + characters in title)", "log characters"),
    FeatureSpec("log_body_length", "ln(1 + characters in body)", "log characters"),
    FeatureSpec("merge_hour_sin", "sin(2 pi hour(merged_at, UTC) / 24)", "unit circle"),
    FeatureSpec("merge_hour_cos", "cos(2 pi hour(merged_at, UTC) / 24)", "unit circle"),
    FeatureSpec("merged_on_weekend", "1 if merged_at falls on Saturday or Sunday (UTC)", "flag"),
    FeatureSpec(
        "log_author_prior_pull_requests",
        "ln(1 + the author's pull requests in this repository created before this one)",
        "log pull requests",
    ),
    FeatureSpec(
        "size_vs_repository",
        "ln(1 + additions + deletions) - ln(1 + the repository's median additions + deletions)",
        "log ratio",
    ),
)
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)

# Columns that describe a pull request in its repository rather than the pull request alone.
CONTEXT_COLUMNS = ("author_prior_pull_requests", "repository_median_changes")

# Columns of a pull-request record that the features read (besides the context columns).
INPUT_COLUMNS = (
    "additions",
    "deletions",
    "changed_files",
    "commits",
    "title",
    "body",
    "created_at",
    "merged_at",
)


# Validation: a record that breaks one of these rules is quarantined with the first
# broken rule as its reason (Spark evaluates the same rules, see preprocess/job.py).
REQUIRED_COLUMNS = (
    "repository",
    "number",
    "author",
    "created_at",
    "additions",
    "deletions",
    "changed_files",
    "commits",
)
NON_NEGATIVE_COLUMNS = ("number", "additions", "deletions", "changed_files", "commits")
MERGED_BEFORE_CREATED = "merged_at before created_at"


def missing_reason(column: str) -> str:
    return f"missing {column}"


def negative_reason(column: str) -> str:
    return f"negative {column}"


def non_finite_reason(feature: str) -> str:
    return f"non-finite {feature}"


def feature_spec_document() -> dict:
    return {
        "version": FEATURE_SPEC_VERSION,
        "features": [asdict(f) for f in FEATURES],
        "context_columns": list(CONTEXT_COLUMNS),
        "validation": {
            "required": list(REQUIRED_COLUMNS),
            "non_negative": list(NON_NEGATIVE_COLUMNS),
            "ordering": MERGED_BEFORE_CREATED,
            "features": "finite",
        },
    }


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
    """The context columns over a snapshot, in pandas: the single-process reference of
    what Spark's window functions compute (``preprocess.job.with_context``).

    ``author_prior_pull_requests``: the author's pull requests in the repository ordered by
    (created_at, number) before this one. ``repository_median_changes``: the median of
    additions + deletions over the repository's pull requests in the snapshot.
    """
    created = pd.to_datetime(records["created_at"], utc=True)
    order = records.assign(_created=created).sort_values(["_created", "number"], kind="stable")
    prior = order.groupby(["repository", "author"], sort=False).cumcount()
    changes = records["additions"].astype("float64") + records["deletions"].astype("float64")
    median = changes.groupby(records["repository"]).transform("median")
    return pd.DataFrame(
        {
            "author_prior_pull_requests": prior.reindex(records.index).astype("float64"),
            "repository_median_changes": median.astype("float64"),
        },
        index=records.index,
    )


@dataclass(frozen=True)
class FeatureContext:
    """The context columns' values at the end of a data snapshot, saved with the model.

    ``author_pull_requests[repository][author]`` counts the author's pull requests in the
    snapshot, which is exactly "earlier pull requests" for a pull request created after it.
    """

    repository_median_changes: dict[str, float] = field(default_factory=dict)
    author_pull_requests: dict[str, dict[str, int]] = field(default_factory=dict)

    @classmethod
    def from_records(cls, records: pd.DataFrame) -> FeatureContext:
        changes = records["additions"].astype("float64") + records["deletions"].astype("float64")
        medians = changes.groupby(records["repository"]).median()
        counts = records.groupby(["repository", "author"]).size()
        authors: dict[str, dict[str, int]] = {}
        for (repository, author), count in counts.items():
            authors.setdefault(str(repository), {})[str(author)] = int(count)
        return cls({str(k): float(v) for k, v in medians.items()}, authors)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FeatureContext:
        return cls(
            {str(k): float(v) for k, v in data.get("repository_median_changes", {}).items()},
            {
                str(repo): {str(a): int(n) for a, n in authors.items()}
                for repo, authors in data.get("author_pull_requests", {}).items()
            },
        )


def attach_context(records: pd.DataFrame, context: FeatureContext | None) -> pd.DataFrame:
    """``records`` with the context columns filled where the record does not carry them.

    Unknown author: no earlier pull requests. Unknown repository (or no context): the record
    is its own typical size, so ``size_vs_repository`` is 0 rather than a guess.
    """
    context = context or FeatureContext()
    frame = records.copy()
    for column in CONTEXT_COLUMNS:
        if column not in frame:
            frame[column] = np.nan
    repositories = frame["repository"] if "repository" in frame else pd.Series("", frame.index)
    authors = frame["author"] if "author" in frame else pd.Series("", frame.index)
    prior = [
        context.author_pull_requests.get(str(repo), {}).get(str(author), 0)
        for repo, author in zip(repositories, authors, strict=True)
    ]
    own_changes = frame["additions"].astype("float64") + frame["deletions"].astype("float64")
    medians = repositories.map(lambda repo: context.repository_median_changes.get(str(repo)))
    frame["author_prior_pull_requests"] = (
        frame["author_prior_pull_requests"]
        .astype("float64")
        .fillna(pd.Series(prior, frame.index, dtype="float64"))
    )
    frame["repository_median_changes"] = (
        frame["repository_median_changes"]
        .astype("float64")
        .fillna(medians.astype("float64"))
        .fillna(own_changes)
    )
    return frame


def compute_features(records: pd.DataFrame) -> pd.DataFrame:
    """One row of features per record, in ``FEATURE_NAMES`` order (float64).

    ``records`` carries the :data:`INPUT_COLUMNS` and the :data:`CONTEXT_COLUMNS`.
    """
    additions = records["additions"].astype("float64")
    deletions = records["deletions"].astype("float64")
    churn = additions + deletions
    created = pd.to_datetime(records["created_at"], utc=True)
    merged = pd.to_datetime(records["merged_at"], utc=True)
    # An unmerged pull request has no merge time: its merge features are 0.
    hours_to_merge = ((merged - created).dt.total_seconds() / 3600).clip(lower=0).fillna(0)
    merge_hour = merged.dt.hour + merged.dt.minute / 60
    angle = 2 * np.pi * merge_hour / 24
    features = pd.DataFrame(
        {
            "log_additions": np.log1p(additions),
            "log_deletions": np.log1p(deletions),
            "log_changed_files": np.log1p(records["changed_files"].astype("float64")),
            "log_commits": np.log1p(records["commits"].astype("float64")),
            "churn_balance": np.where(
                churn > 0, (additions - deletions) / churn.where(churn > 0, 1), 0.0
            ),
            "log_hours_to_merge": np.log1p(hours_to_merge),
            "log_title_length": np.log1p(records["title"].fillna("").str.len().astype("float64")),
            "log_body_length": np.log1p(records["body"].fillna("").str.len().astype("float64")),
            "merge_hour_sin": np.sin(angle).fillna(0.0),
            "merge_hour_cos": np.cos(angle).fillna(0.0),
            "merged_on_weekend": (merged.dt.dayofweek >= 5).astype("float64"),
            "log_author_prior_pull_requests": np.log1p(
                records["author_prior_pull_requests"].astype("float64")
            ),
            "size_vs_repository": np.log1p(churn)
            - np.log1p(records["repository_median_changes"].astype("float64")),
        },
        index=records.index,
    )
    return features[list(FEATURE_NAMES)].astype("float64")
