"""Property tests (hypothesis) over the pull-request record normaliser and the stored
document: whatever a payload holds, normalising it either quarantines it with a reason or
gives a record every stage can represent, stored as a document MongoDB accepts."""

from __future__ import annotations

import copy
import gzip
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_fetch.records import InvalidRecordError, graphql_to_rest, normalize_rest_pull_request
from data_fetch.store import (
    escape_key,
    pull_request_document,
    storable,
    unescape_key,
    unstorable_reason,
)
from pipeline_common.github import COUNT_FIELDS
from pipeline_common.limits import EARLIEST_TIME, MAX_CLOCK_SKEW, MAX_COUNT
from pipeline_ops.github_replay_server import to_graphql_node

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"
COUNTS = COUNT_FIELDS
TIMES = ("created_at", "updated_at", "closed_at", "merged_at")
# keys MongoDB reserves or cannot encode, beside ordinary text
TRICKY_KEYS = ["$where", "$", "a.b", ".", "%", "%24", "a\0b", "name", "login"]
keys = st.sampled_from(TRICKY_KEYS) | st.text(max_size=6)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: 10**400 is valid JSON
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=12,
)
times = st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(9999, 1, 1), timezones=st.just(UTC)
).map(lambda moment: moment.isoformat().replace("+00:00", "Z"))
field_values = st.one_of(json_values, times, st.integers(min_value=-1, max_value=2 * MAX_COUNT))
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def real_pull_request() -> dict[str, Any]:
    with gzip.open(SAMPLES / "pallets__flask.prs.jsonl.gz", "rt", encoding="utf-8") as lines:
        return json.loads(next(lines))


def _keys(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [*value, *(k for v in value.values() for k in _keys(v))]
    if isinstance(value, list):
        return [k for v in value for k in _keys(v)]
    return []


def _assert_storable(document: dict[str, Any]) -> None:
    for key in _keys(document):
        assert not key.startswith("$"), key
        assert "." not in key, key
        assert "\0" not in key, key
    assert unstorable_reason(document) is None
    bson.encode(document)


REST_FIELDS = (*COUNTS, *TIMES, "title", "body", "labels", "user", "base", "state")
GRAPHQL_FIELDS = ("title", "body", "author", "labels", "additions", "updatedAt", "commits")


@PROPERTY
@given(changes=st.dictionaries(st.sampled_from(REST_FIELDS), field_values, max_size=6))
def test_a_payload_is_quarantined_or_becomes_a_record_every_stage_can_represent(
    real_pull_request, changes
):
    payload = {**copy.deepcopy(real_pull_request), **changes}
    now = datetime.now(UTC)
    try:
        record = normalize_rest_pull_request(payload, now=now)
    except InvalidRecordError as error:
        assert error.reason  # quarantined, with a reason
        return
    for name in COUNTS:
        value = getattr(record, name)
        assert value is None or 0 <= value <= MAX_COUNT
    for name in TIMES:
        value = getattr(record, name)
        assert value is None or EARLIEST_TIME <= value <= now + MAX_CLOCK_SKEW
    _assert_storable(pull_request_document(record, payload, now))


@PROPERTY
@given(changes=st.dictionaries(st.sampled_from(GRAPHQL_FIELDS), json_values, max_size=4))
def test_a_graphql_node_is_quarantined_or_stored_like_its_rest_twin(real_pull_request, changes):
    node = {**to_graphql_node(real_pull_request), **changes}
    repository = real_pull_request["base"]["repo"]["full_name"]
    try:
        record = normalize_rest_pull_request(graphql_to_rest(node), repository)
    except InvalidRecordError:
        return
    _assert_storable(pull_request_document(record, node, datetime.now(UTC)))


@settings(max_examples=500, deadline=None)
@given(key=st.text(max_size=12) | keys)
def test_an_escaped_key_is_one_mongodb_accepts_and_unescapes_to_the_original(key: str):
    escaped = escape_key(key)
    assert not escaped.startswith("$")
    assert "." not in escaped
    assert "\0" not in escaped
    assert unescape_key(escaped) == key


@PROPERTY
@given(value=json_values)
def test_any_json_payload_is_storable(value: Any):
    _assert_storable({"raw": storable(value)})
