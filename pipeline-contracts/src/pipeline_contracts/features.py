"""The feature definition: one spec, used by Spark preprocessing, training and serving.

The formulas live in one numpy function, :func:`feature_matrix`, over plain float arrays
(:class:`FeatureInputs`). Spark, training and the pyfunc reach it from DataFrames through
``ml_pipeline.feature_frames``; serving builds the arrays straight from the validated
request, and this package imports no pandas, so neither does the serving image. Training and
serving therefore cannot disagree. Bump ``FEATURE_SPEC_VERSION`` whenever a formula changes.

Two features need more than the record itself: the author's history in the repository and
the repository's typical size. They read two *context columns*. Preprocessing computes them
as of each pull request, from the earlier ones only (no look-ahead: a training row never
sees the test period, and a served pull request sees exactly what came before it); at
scoring time :meth:`FeatureContext.fill` fills them from the snapshot saved with the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from pipeline_contracts.pull_requests import NON_NEGATIVE_COLUMNS, REQUIRED_COLUMNS

FEATURE_SPEC_VERSION = "4"
# The author's earlier pull requests count up to this many: past it an author is as
# established as any. The raw count only grows with the repository's history (a
# maintainer's reaches thousands), so its distribution could never hold still (issue 24).
AUTHOR_PRIOR_CAP = 3


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
        "log_author_prior_pull_requests_capped",
        f"ln(1 + min({AUTHOR_PRIOR_CAP}, the author's pull requests in this repository "
        "created before this one)): 0 for a first pull request",
        "log pull requests",
    ),
    FeatureSpec(
        "size_vs_repository",
        "ln(1 + additions + deletions) - ln(1 + median additions + deletions of the "
        "repository's earlier pull requests; its own size when there are none)",
        "log ratio",
    ),
)
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)

# Columns that describe a pull request in its repository rather than the pull request alone.
CONTEXT_COLUMNS = ("author_prior_pull_requests", "repository_median_changes")

# Validation: a record that breaks one of these rules is quarantined with the first
# broken rule as its reason (Spark evaluates the same rules, see preprocess/job.py); the
# columns come from the input table (pull_requests.py).
MERGED_BEFORE_CREATED = "merged_at before created_at"


def missing_reason(column: str) -> str:
    return f"missing {column}"


def negative_reason(column: str) -> str:
    return f"negative {column}"


def non_finite_reason(feature: str) -> str:
    return f"non-finite {feature}"


def feature_spec_document() -> dict[str, Any]:
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


@dataclass(frozen=True)
class FeatureContext:
    """The context columns' values at the end of a data snapshot, saved with the model.

    ``author_pull_requests[repository][author]`` counts the author's pull requests in the
    snapshot and ``repository_median_changes`` is the median over all of the repository's:
    exactly "the earlier pull requests" for a pull request created after the snapshot.
    """

    repository_median_changes: dict[str, float] = field(default_factory=dict)
    author_pull_requests: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @cached_property
    def _pull_requests_by_author(self) -> dict[tuple[object, object], int]:
        # keyed by what records carry (a missing author is None): looked up, never stored
        return {
            (repository, author): count
            for repository, authors in self.author_pull_requests.items()
            for author, count in authors.items()
        }

    @cached_property
    def _median_by_repository(self) -> dict[object, float]:
        return {repository: median for repository, median in self.repository_median_changes.items()}

    def fill(
        self,
        repositories: Sequence[object],
        authors: Sequence[object],
        own_changes: np.ndarray,
        prior: np.ndarray,
        median: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The context columns ``(prior, median)`` with their NaN entries filled from the
        snapshot (a record that carries a value keeps it).

        Unknown author: no earlier pull requests. Unknown repository: the record is its own
        typical size, so ``size_vs_repository`` is 0 rather than a guess.
        """
        prior = np.asarray(prior, dtype=np.float64)
        median = np.asarray(median, dtype=np.float64)
        missing_prior, missing_median = np.isnan(prior), np.isnan(median)
        if missing_prior.any():
            counts = self._pull_requests_by_author
            known = np.fromiter(
                (counts.get(key, 0) for key in zip(repositories, authors, strict=True)),
                np.float64,
                len(prior),
            )
            prior = np.where(missing_prior, known, prior)
        if missing_median.any():
            medians: dict[object, float] = self._median_by_repository
            known = np.fromiter(
                (medians.get(r, np.nan) for r in repositories), np.float64, len(median)
            )
            # unknown repository: the record's own size
            median = np.where(missing_median, np.where(np.isnan(known), own_changes, known), median)
        return prior, median

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureContext:
        return cls(
            {str(k): float(v) for k, v in data.get("repository_median_changes", {}).items()},
            {
                str(repo): {str(a): int(n) for a, n in authors.items()}
                for repo, authors in data.get("author_pull_requests", {}).items()
            },
        )


@dataclass(frozen=True)
class FeatureInputs:
    """What the spec reads from each record, one float64 array per column.

    Times are seconds since the epoch (UTC), NaN when absent (an unmerged pull request has
    no ``merged_seconds``); lengths count characters (code points).
    """

    additions: np.ndarray
    deletions: np.ndarray
    changed_files: np.ndarray
    commits: np.ndarray
    title_length: np.ndarray
    body_length: np.ndarray
    created_seconds: np.ndarray
    merged_seconds: np.ndarray
    author_prior_pull_requests: np.ndarray
    repository_median_changes: np.ndarray

    def with_context(self, prior: np.ndarray, median: np.ndarray) -> FeatureInputs:
        """These inputs with the context columns replaced (``dataclasses.replace``, without
        its introspection: serving calls this for every scoring call)."""
        return FeatureInputs(
            self.additions,
            self.deletions,
            self.changed_files,
            self.commits,
            self.title_length,
            self.body_length,
            self.created_seconds,
            self.merged_seconds,
            prior,
            median,
        )


_SECONDS_PER_DAY = 86_400
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0)


def feature_matrix(inputs: FeatureInputs) -> np.ndarray:
    """The spec's formulas: one row per record, columns in ``FEATURE_NAMES`` order.

    Each feature is written in place into its own row of a feature-major array (returned
    transposed), one or two numpy calls a feature: serving computes this for every scoring
    call, most of them a few records, where the number of calls is the cost."""
    additions, deletions, merged = inputs.additions, inputs.deletions, inputs.merged_seconds
    matrix = np.zeros((len(FEATURE_NAMES), len(additions)))
    feature = dict(zip(FEATURE_NAMES, matrix, strict=True))  # each feature's row, a view
    churn = additions + deletions
    # An unmerged pull request has no merge time: its merge features are 0.
    was_merged = np.isfinite(merged)
    with np.errstate(invalid="ignore", divide="ignore"):
        np.log1p(additions, out=feature["log_additions"])
        np.log1p(deletions, out=feature["log_deletions"])
        np.log1p(inputs.changed_files, out=feature["log_changed_files"])
        np.log1p(inputs.commits, out=feature["log_commits"])
        np.divide(additions - deletions, churn, out=feature["churn_balance"], where=churn > 0)
        # fmax: NaN (not merged) becomes 0, as a negative time does
        hours_to_merge = np.fmax((merged - inputs.created_seconds) / 3600, 0)
        np.log1p(hours_to_merge, out=feature["log_hours_to_merge"])
        np.log1p(inputs.title_length, out=feature["log_title_length"])
        np.log1p(inputs.body_length, out=feature["log_body_length"])
        # hour + minute / 60 of the merge time in UTC (seconds do not count)
        minute_of_day = np.floor(np.mod(merged, _SECONDS_PER_DAY) / 60)
        angle = 2 * np.pi * (minute_of_day / 60) / 24
        np.sin(angle, out=feature["merge_hour_sin"], where=was_merged)
        np.cos(angle, out=feature["merge_hour_cos"], where=was_merged)
        weekday = np.mod(np.floor(merged / _SECONDS_PER_DAY) + _EPOCH_WEEKDAY, 7)
        np.greater_equal(weekday, 5, out=feature["merged_on_weekend"])  # NaN: False, 0
        prior = inputs.author_prior_pull_requests
        capped = feature["log_author_prior_pull_requests_capped"]
        np.log1p(np.minimum(prior, AUTHOR_PRIOR_CAP), out=capped)
        median = np.log1p(inputs.repository_median_changes)
        np.subtract(np.log1p(churn), median, out=feature["size_vs_repository"])
    return matrix.T
