"""Property tests (hypothesis) over the request models: whatever JSON a client sends, the
request model either refuses it (a 422 naming the field) or accepts a record, or a feature
vector, that the model scores as a finite number. Nothing accepted can fail in scoring,
where it would share a micro-batch with other requests."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from model_serving.app import FeatureVector, PullRequestIn, feature_inputs
from pipeline_common.limits import MAX_COUNT
from pipeline_contracts.features import FEATURE_NAMES

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
COUNTS = ("additions", "deletions", "changed_files", "commits", "author_prior_pull_requests")
# mostly acceptable values, so that many records get as far as scoring, and the edges
counts = st.one_of(
    st.integers(min_value=0, max_value=10**6),
    st.integers(min_value=MAX_COUNT - 2, max_value=MAX_COUNT + 2),
    st.integers(min_value=0),
    st.sampled_from([10**400, 2**63, 2**64, -1, 1.5, 1e400, True, "7", None]),
)
numbers = counts | st.floats(allow_nan=False, allow_infinity=False)
times = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2300, 1, 1), timezones=st.just(UTC)
).map(datetime.isoformat) | st.sampled_from(["yesterday", "20240-01-01T00:00:00Z", 1700000000])
record_fields = st.fixed_dictionaries(
    {**{name: counts for name in COUNTS}, "created_at": times},
    optional={
        "number": counts,
        "title": st.text(max_size=50) | numbers,
        "body": st.text(max_size=200) | numbers,
        "merged_at": times | st.none(),
        "repository_median_changes": numbers,
        "user": st.fixed_dictionaries({"login": st.text(max_size=8) | numbers}),
        "base": st.fixed_dictionaries(
            {"repo": st.fixed_dictionaries({"full_name": st.text(max_size=8)})}
        ),
    },
)


def _validated(model: Any, payload: dict[str, Any]) -> Any | None:
    """The request model's answer to this JSON body: the validated value, or None (422)."""
    try:
        return model.model_validate_json(json.dumps(payload))
    except ValidationError as error:
        assert all(e["loc"] for e in error.errors())  # each problem names its field
        return None


@PROPERTY
@given(payload=record_fields)
def test_an_accepted_record_always_gets_a_finite_score(scorer, payload):
    record = _validated(PullRequestIn, payload)
    if record is None:
        return
    for name in COUNTS:
        value = getattr(record, name)
        assert value is None or 0 <= value <= MAX_COUNT
    [verdict] = scorer.score_inputs(feature_inputs([record]), [record.repository], [record.author])
    assert math.isfinite(verdict["score"])
    assert verdict["is_anomaly"] == (verdict["score"] > scorer.threshold)


@PROPERTY
@given(
    payload=st.fixed_dictionaries(
        {name: st.floats(allow_nan=False, allow_infinity=False) for name in FEATURE_NAMES}
    )
)
def test_an_accepted_feature_vector_always_gets_a_finite_score(scorer, payload):
    vector = _validated(FeatureVector, payload)
    if vector is None:
        return
    [verdict] = scorer.score_features([[getattr(vector, name) for name in FEATURE_NAMES]])
    assert math.isfinite(verdict["score"])
