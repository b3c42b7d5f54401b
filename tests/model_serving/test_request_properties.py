"""Property tests (hypothesis) over the request models: whatever JSON a client sends, the
request model either refuses it (a 422 naming the field) or accepts a record, or a feature
vector, that the model scores as a finite number. Nothing accepted can fail in scoring,
where it would share a micro-batch with other requests. The fast decoder (msgspec) accepts
exactly what the request model accepts, with the same values."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import numpy as np
from fastapi.exceptions import RequestValidationError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model_serving.bodies import (
    PullRequestFields,
    PullRequestIn,
    PullRequests,
    decode_feature_vectors,
    decode_pull_requests,
    validate_body,
)
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
        # given flat, they win over GitHub's nested fields (even when null)
        "repository": st.none() | st.text(max_size=8),
        "author": st.none() | st.text(max_size=8) | numbers,
        "base": st.fixed_dictionaries(
            {"repo": st.fixed_dictionaries({"full_name": st.text(max_size=8)})}
        ),
    },
)


def _decoded(decode: Any, payload: Any) -> Any | None:
    """What the server decodes of this JSON body, or None (a 422: each problem names its
    field in the body)."""
    try:
        decoded, _ = decode(json.dumps(payload).encode())
    except RequestValidationError as error:
        assert all(e["loc"][0] == "body" and len(e["loc"]) > 1 for e in error.errors())
        return None
    return decoded


@PROPERTY
@given(payload=record_fields)
def test_an_accepted_record_always_gets_a_finite_score(scorer, payload):
    records = _decoded(decode_pull_requests, payload)
    if records is None:
        return
    counts = records.inputs[:, [0, 1, 2, 3, 8]]  # FeatureInputs' counts, NaN when absent
    assert ((counts >= 0) & (counts <= MAX_COUNT) | np.isnan(counts)).all()
    [verdict] = scorer.score_inputs(records.feature_inputs(), records.repositories, records.authors)
    assert math.isfinite(verdict["score"])
    assert verdict["is_anomaly"] == (verdict["score"] > scorer.threshold)


def _by_the_model(body: bytes) -> PullRequests | None:
    try:
        records, _ = validate_body(body, PullRequestIn)
    except RequestValidationError:
        return None
    return PullRequests.of([PullRequestFields.of(record) for record in records])


# Mostly valid records, varied where the two decoders could read them differently: counts
# at the bounds, times in every accepted form (zone or none, offsets, up to six decimals,
# a space or a lowercase t), merged_at equal to created_at, GitHub's nested fields beside
# the flat ones (null too), any text. Some break one rule, to be refused by both.
_zones = st.sampled_from(["Z", "z", "+00:00", "-00:00", "+05:30", "-0800", ""])
_times = st.builds(
    lambda moment, separator, zone, decimals: (
        moment.strftime(f"%Y-%m-%d{separator}%H:%M:%S")
        + (f".{moment.microsecond:06d}"[: decimals + 1] if decimals else "")
        + zone
    ),
    st.datetimes(min_value=datetime(1969, 12, 31), max_value=datetime(2200, 1, 2)),
    st.sampled_from(["T", "t", " "]),
    _zones,
    st.integers(min_value=0, max_value=6),
)
_counts = st.integers(min_value=0, max_value=50) | st.sampled_from([0, MAX_COUNT, MAX_COUNT + 1])
valid_records = st.fixed_dictionaries(
    {
        **{name: _counts for name in COUNTS[:4]},
        "created_at": _times,
    },
    optional={
        "number": st.integers(min_value=0, max_value=10**6) | st.none(),
        "title": st.text(max_size=20),
        "body": st.text(max_size=40) | st.none(),
        "merged_at": _times | st.none(),
        "repository": st.none() | st.text(max_size=8),
        "author": st.none() | st.text(max_size=8),
        "base": st.fixed_dictionaries(
            {"repo": st.none() | st.fixed_dictionaries({"full_name": st.text(max_size=8)})}
        ),
        "user": st.none() | st.fixed_dictionaries({"login": st.none() | st.text(max_size=8)}),
        "author_prior_pull_requests": _counts | st.none(),
        "repository_median_changes": st.floats(min_value=0, max_value=1e6) | st.none(),
    },
)


@PROPERTY
@given(
    payload=valid_records | st.lists(valid_records, max_size=3) | record_fields,
    ascii_only=st.booleans(),
)
def test_the_fast_decoder_accepts_what_the_model_accepts_with_the_same_values(payload, ascii_only):
    """Times keep at most six decimals here: past that the fast decoder rounds to the
    microsecond where the model truncates (bodies.py says so)."""
    body = json.dumps(payload, ensure_ascii=ascii_only).encode()
    try:
        fast: PullRequests | None = decode_pull_requests(body)[0]
    except RequestValidationError:
        fast = None
    model = _by_the_model(body)
    assert (fast is None) == (model is None)
    if fast is not None and model is not None:
        np.testing.assert_array_equal(fast.inputs, model.inputs)
        assert (fast.numbers, fast.repositories, fast.authors) == (
            model.numbers,
            model.repositories,
            model.authors,
        )


@PROPERTY
@given(
    payload=st.fixed_dictionaries(
        {name: st.floats(allow_nan=False, allow_infinity=False) for name in FEATURE_NAMES}
    )
)
def test_an_accepted_feature_vector_always_gets_a_finite_score(scorer, payload):
    matrix = _decoded(decode_feature_vectors, payload)
    if matrix is None:
        return
    [verdict] = scorer.score_features(matrix)
    assert math.isfinite(verdict["score"])
