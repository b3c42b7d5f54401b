"""Request bodies to columns: GitHub's pull requests take the fast decoder alone, and what it
cannot say is decided by the request model, with the model's errors. (The property that
both accept the same records with the same values: test_request_properties.py.)"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import numpy as np
import pytest
from fastapi.exceptions import RequestValidationError

from model_serving import bodies
from model_serving.bodies import (
    PullRequestFields,
    PullRequestIn,
    decode_feature_vectors,
    decode_pull_requests,
)
from pipeline_contracts.features import FEATURE_NAMES, MERGED_BEFORE_CREATED


def test_the_fast_decoder_has_the_models_fields_and_required_ones() -> None:
    model = {name: field.is_required() for name, field in PullRequestIn.model_fields.items()}
    fast = {
        field.name: field.required for field in msgspec.inspect.type_info(PullRequestFields).fields
    }
    # GitHub's nested fields, which the model reads by alias
    assert fast.pop("base") is fast.pop("user") is False
    assert fast == model


@pytest.fixture
def without_the_model(monkeypatch) -> None:
    def refuse(*args: Any) -> None:
        raise AssertionError("the body went to the request model")

    monkeypatch.setattr(bodies, "validate_body", refuse)


def test_github_pull_requests_are_decoded_without_the_model(
    serving_records, without_the_model
) -> None:
    """Raw GitHub REST payloads, nested fields and all: repository and author come from
    base.repo.full_name and user.login, merged_at may equal created_at (squash merges)."""
    records, is_list = decode_pull_requests(json.dumps(serving_records).encode())
    assert is_list
    assert len(records) == len(serving_records)
    assert records.repositories[0] == serving_records[0]["base"]["repo"]["full_name"]
    assert records.authors[0] == serving_records[0]["user"]["login"]
    assert records.numbers == [r["number"] for r in serving_records]
    one, is_list = decode_pull_requests(json.dumps(serving_records[0]).encode())
    assert not is_list
    np.testing.assert_array_equal(one.inputs, records.inputs[:1])  # NaN: not merged


def test_feature_vectors_are_decoded_without_the_model(without_the_model) -> None:
    vector = {name: float(i) for i, name in enumerate(FEATURE_NAMES)}
    matrix, _ = decode_feature_vectors(json.dumps([vector, vector]).encode())
    assert matrix.tolist() == [list(vector.values())] * 2


def _refusal(payload: Any) -> list[dict[str, Any]]:
    with pytest.raises(RequestValidationError) as refused:
        decode_pull_requests(json.dumps(payload).encode())
    return refused.value.errors()


@pytest.mark.parametrize(
    ("change", "loc", "says"),
    [
        ({"created_at": "1969-12-31T23:59:59Z"}, ["body", 1, "created_at"], "1970"),
        ({"created_at": "2200-01-01T00:00:00Z"}, ["body", 1, "created_at"], "2200"),
        ({"merged_at": "2200-01-01T00:00:00Z"}, ["body", 1, "merged_at"], "2200"),
        ({"merged_at": "2000-01-01T00:00:00Z"}, ["body", 1, "merged_at"], MERGED_BEFORE_CREATED),
        ({"additions": -1}, ["body", 1, "additions"], "greater than or equal to 0"),
        ({"title": None}, ["body", 1, "title"], "string"),
    ],
)
def test_what_the_fast_decoder_refuses_is_refused_in_the_models_words(
    serving_records, change, loc, says
) -> None:
    """The time bounds and merged_at's order are checked on the decoded columns; any
    failure there, or in decoding, goes to the model for its 422."""
    [error] = _refusal([serving_records[0], {**serving_records[1], **change}])
    assert list(error["loc"]) == loc
    assert says in error["msg"]


def test_what_only_the_model_accepts_is_accepted(serving_records) -> None:
    """A time without a zone (UTC, as the model reads it) and a time with a comma for its
    decimals fail the fast decoder and are accepted by the model, with the same value as
    the zoned time."""
    record = serving_records[0]
    zoned, _ = decode_pull_requests(json.dumps(record).encode())
    created = record["created_at"].removesuffix("Z")
    for variant in (created, created + ",0Z"):
        naive, _ = decode_pull_requests(json.dumps({**record, "created_at": variant}).encode())
        np.testing.assert_array_equal(naive.inputs, zoned.inputs)
