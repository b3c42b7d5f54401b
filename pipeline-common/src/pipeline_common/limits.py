"""The largest pull request every stage accepts: one set of numbers for data-fetch's
normaliser, spark-preprocess's input rules and model-serving's request model.

Why these numbers: the feature spec computes on float64 arrays and counts are stored as
64-bit integers (MongoDB, Spark's ``long``). Every whole number up to 2**53 is exact as a
float64, so a count in range means the same thing in every stage; a larger one is a typo or
an attack (GitHub's largest pull requests have a few million changed lines), and one past
2**63 cannot even be stored. Times are bounded the same way: no pull request predates the
Unix epoch, and 2200 catches five-digit years such as 20240-01-01.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

MAX_COUNT = 2**53
EARLIEST_TIME = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_TIME = datetime(2200, 1, 1, tzinfo=UTC)
# A fetched timestamp later than the fetch itself by more than this is not a real update
# (GitHub's clock and ours disagree by seconds, not hours).
MAX_CLOCK_SKEW = timedelta(minutes=10)
