"""The scoring API contract, served by FastAPI in-process with a real (small) model loaded
from the real MLflow registry."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from ml_pipeline.feature_frames import (
    attach_context,
    compute_features,
    feature_context,
    score_frame,
)
from model_serving.app import (
    MicroBatcher,
    ModelHolder,
    UnscorableRecordError,
    create_app,
)
from model_serving.bodies import PullRequests, decode_pull_requests
from model_serving.model_source import LoadedModel, load_model
from model_serving.settings import ServingSettings
from pipeline_common.limits import MAX_COUNT
from pipeline_contracts.drift import DRIFT_ALERT_PSI
from pipeline_contracts.features import (
    FEATURE_NAMES,
    MERGED_BEFORE_CREATED,
    feature_matrix,
)
from pipeline_contracts.registry import ModelReference

MAX_BATCH = 5
MAX_BODY_BYTES = 64 * 1024
JSON = {"content-type": "application/json"}
VERDICT_KEYS = {
    "number",
    "score",
    "threshold",
    "is_anomaly",
    "top_features",
    "model_name",
    "model_version",
}


def wait_ready(client: TestClient, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get("/readyz")
        if response.status_code == 200 or time.monotonic() > deadline:
            return response
        time.sleep(0.02)


def assert_no_stack_trace(text: str) -> None:
    assert "Traceback" not in text
    assert 'File "' not in text
    assert ".py" not in text


@pytest.fixture(scope="module")
def model(registered_model) -> LoadedModel:
    return load_model(
        registered_model["tracking_uri"], ModelReference.parse(registered_model["uri"])
    )


@pytest.fixture(scope="module")
def client(model: LoadedModel) -> Iterator[TestClient]:
    app = create_app(
        lambda: model, ServingSettings(max_batch=MAX_BATCH, max_body_bytes=MAX_BODY_BYTES)
    )
    with TestClient(app) as client:
        assert wait_ready(client).status_code == 200
        yield client


@pytest.fixture
def record(serving_records) -> dict[str, Any]:
    """A minimal valid request: only the fields the model reads."""
    raw = serving_records[0]
    keys = ("number", "title", "body", "additions", "deletions", "changed_files", "commits")
    return {
        **{k: raw[k] for k in keys},
        "created_at": raw["created_at"],
        "merged_at": raw["merged_at"],
    }


def test_healthz_and_readyz_follow_the_model_load(model: LoadedModel) -> None:
    release = threading.Event()

    def slow_loader() -> LoadedModel:
        release.wait(timeout=30)
        return model

    try:
        with TestClient(create_app(slow_loader)) as client:
            assert client.get("/healthz").status_code == 200
            loading = client.get("/readyz")
            assert loading.status_code == 503
            assert "loading" in loading.json()["detail"]
            scoring = client.post("/v1/score", json={"additions": 1})
            assert scoring.status_code in (422, 503)
            release.set()
            ready = wait_ready(client)
            assert ready.status_code == 200
            assert ready.json()["model_version"] == model.version
            assert client.get("/healthz").status_code == 200
    finally:
        release.set()


def test_scoring_before_the_model_is_loaded_is_503(model, record) -> None:
    release = threading.Event()
    try:
        with TestClient(create_app(lambda: release.wait(30) and model)) as client:
            response = client.post("/v1/score", json=record)
            assert response.status_code == 503
            assert response.json()["detail"] == "model is loading"
    finally:
        release.set()


def test_a_failed_load_keeps_readyz_503_with_the_reason() -> None:
    def broken_loader() -> LoadedModel:
        raise FileNotFoundError("models:/pr-anomaly@champion has no scorer artifact")

    with TestClient(create_app(broken_loader)) as client:
        deadline = time.monotonic() + 10
        while "FileNotFoundError" not in client.get("/readyz").text:
            assert time.monotonic() < deadline, "the load error never showed in /readyz"
            time.sleep(0.02)
        response = client.get("/readyz")
        assert response.status_code == 503
        assert "no scorer artifact" in response.json()["detail"]
        assert_no_stack_trace(response.text)
        assert client.get("/healthz").status_code == 200


def test_single_record_gets_one_verdict(client, record, scorer, model) -> None:
    response = client.post("/v1/score", json=record)
    assert response.status_code == 200, response.text
    [verdict] = response.json()["results"]
    assert set(verdict) == VERDICT_KEYS
    expected = score_frame(scorer, [record])[0]
    assert verdict["score"] == pytest.approx(expected["score"], rel=1e-5)
    assert verdict["threshold"] == pytest.approx(scorer.threshold)
    assert verdict["is_anomaly"] == (verdict["score"] > verdict["threshold"])
    assert len(verdict["top_features"]) == 3
    assert set(verdict["top_features"]) <= set(FEATURE_NAMES)
    assert verdict["number"] == record["number"]
    assert (verdict["model_name"], verdict["model_version"]) == (model.name, model.version)


def test_a_list_gets_one_verdict_per_record_in_order(client, serving_records, scorer) -> None:
    batch = serving_records[:MAX_BATCH]
    response = client.post("/v1/score", json=batch)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["number"] for r in results] == [r["number"] for r in batch]
    expected = score_frame(scorer, batch)
    assert [r["score"] for r in results] == pytest.approx([e["score"] for e in expected], 1e-5)
    assert client.post("/v1/score", json=[]).json() == {"results": []}


def test_the_model_flags_an_absurd_pull_request(client, record) -> None:
    absurd = {**record, "additions": 10**7, "deletions": 0, "changed_files": 5000}
    [ordinary] = client.post("/v1/score", json=record).json()["results"]
    [flagged] = client.post("/v1/score", json=absurd).json()["results"]
    assert flagged["is_anomaly"] is True
    assert flagged["score"] > ordinary["score"]
    assert "log_additions" in flagged["top_features"]


def test_unknown_fields_are_ignored(client, record, serving_records) -> None:
    full = serving_records[0]  # the GitHub shape: user, base, labels, derivation, ...
    assert set(full) - set(record)
    plain = client.post("/v1/score", json=record).json()["results"]
    extra = client.post("/v1/score", json={**full, "surprise": {"nested": [1, 2]}})
    assert extra.status_code == 200, extra.text
    assert extra.json()["results"] == plain


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"additions": -1}, "additions"),
        ({"deletions": "many"}, "deletions"),
        ({"commits": True}, "commits"),
        ({"changed_files": 1.5}, "changed_files"),
        ({"created_at": "yesterday"}, "created_at"),
        ({"created_at": None}, "created_at"),
        ({"created_at": "0001-01-01T00:00:00Z"}, "created_at"),
        ({"merged_at": "9999-12-31T00:00:00Z"}, "merged_at"),
    ],
)
def test_invalid_record_is_422_naming_the_field(client, record, change, field) -> None:
    response = client.post("/v1/score", json={**record, **change})
    assert response.status_code == 422
    assert field in {loc for error in response.json()["detail"] for loc in error["loc"]}
    assert_no_stack_trace(response.text)
    # inside a batch too, with the record's position
    response = client.post("/v1/score", json=[record, {**record, **change}])
    assert response.status_code == 422
    locs = [error["loc"] for error in response.json()["detail"]]
    assert ["body", 1, field] in locs


def test_missing_created_at_is_422(client, record) -> None:
    del record["created_at"]
    response = client.post("/v1/score", json=record)
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert any(e["loc"][-1] == "created_at" and e["type"] == "missing" for e in errors)
    assert_no_stack_trace(response.text)


def test_malformed_json_is_422_without_stack_trace(client) -> None:
    response = client.post(
        "/v1/score", content=b'{"additions": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert_no_stack_trace(response.text)


def test_batch_over_max_batch_is_413(client, serving_records) -> None:
    response = client.post("/v1/score", json=serving_records[: MAX_BATCH + 1])
    assert response.status_code == 413
    assert str(MAX_BATCH) in response.json()["detail"]
    assert_no_stack_trace(response.text)


def test_non_finite_and_huge_numbers_are_422_naming_the_field(client, record) -> None:
    body = json.dumps(record).replace(f'"additions": {record["additions"]}', '"additions": NaN')
    response = client.post("/v1/score", content=body, headers=JSON)
    assert response.status_code == 422
    assert "additions" in {loc for e in response.json()["detail"] for loc in e["loc"]}
    body = json.dumps(record).replace(f'"commits": {record["commits"]}', '"commits": 1e400')
    response = client.post("/v1/score", content=body, headers=JSON)
    assert response.status_code == 422
    assert "commits" in {loc for e in response.json()["detail"] for loc in e["loc"]}


def test_a_body_over_the_limit_is_413_by_content_length(client, record) -> None:
    body = json.dumps({**record, "body": "x" * MAX_BODY_BYTES}).encode()
    response = client.post("/v1/score", content=body, headers=JSON)
    assert response.status_code == 413
    assert str(MAX_BODY_BYTES) in response.json()["detail"]
    assert_no_stack_trace(response.text)


def test_a_streamed_body_over_the_limit_is_413(client, record) -> None:
    def chunks() -> Iterator[bytes]:  # chunked transfer encoding: no Content-Length
        yield b'{"title": "'
        for _ in range(MAX_BODY_BYTES // 1024 + 1):
            yield b"x" * 1024
        yield b'"}'

    response = client.post("/v1/score", content=chunks(), headers=JSON)
    assert response.status_code == 413
    assert "content-length" not in response.request.headers
    assert_no_stack_trace(response.text)


@pytest.fixture
def vector(scorer, record) -> dict[str, float]:
    """The record's features as the model computes them, context from its snapshot."""
    flat = {
        **record,
        "repository": ((record.get("base") or {}).get("repo") or {}).get("full_name"),
        "author": (record.get("user") or {}).get("login"),
    }
    frame = attach_context(pd.DataFrame([flat]), scorer.context)
    row = compute_features(frame).iloc[0]
    return {name: float(row[name]) for name in FEATURE_NAMES}


def test_feature_vectors_score_like_the_raw_record(client, record, vector, model) -> None:
    [from_raw] = client.post("/v1/score", json=record).json()["results"]
    response = client.post("/v1/score/features", json={**vector, "unknown": 1})
    assert response.status_code == 200, response.text
    [verdict] = response.json()["results"]
    assert verdict["score"] == pytest.approx(from_raw["score"], rel=1e-5)
    assert verdict["top_features"] == from_raw["top_features"]
    assert verdict["model_version"] == model.version
    batch = client.post("/v1/score/features", json=[vector] * MAX_BATCH)
    assert len(batch.json()["results"]) == MAX_BATCH
    too_many = client.post("/v1/score/features", json=[vector] * (MAX_BATCH + 1))
    assert too_many.status_code == 413


@pytest.mark.parametrize(
    ("value", "problem"),
    [("NaN", "finite"), ("Infinity", "finite"), ('"1.5"', "number"), ("true", "number")],
)
def test_a_bad_feature_value_is_422_naming_the_feature(client, vector, value, problem) -> None:
    body = json.dumps({**vector, "log_commits": 12345.0}).replace("12345.0", value)
    response = client.post("/v1/score/features", content=body, headers=JSON)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "log_commits"]
    assert problem in error["msg"]


def test_a_missing_feature_is_422_naming_it(client, vector) -> None:
    del vector["churn_balance"]
    response = client.post("/v1/score/features", json=[vector])
    assert response.status_code == 422
    assert ["body", 0, "churn_balance"] in [e["loc"] for e in response.json()["detail"]]


def test_version_names_the_served_model(client, model) -> None:
    info = client.get("/version").json()
    assert info["model_name"] == model.name
    assert info["model_version"] == model.version
    assert info["model_uri"] == model.uri
    assert info["served_model"] == f"models:/{model.name}/{model.version}"
    assert info["feature_spec_version"] == model.scorer.feature_spec_version
    assert info["service_version"]


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        named = line.startswith((name + "{", name + " "))
        if named and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_requests_records_and_anomalies(client, record, model) -> None:
    before = client.get("/metrics").text
    absurd = {**record, "additions": 10**7, "changed_files": 5000}
    assert client.post("/v1/score", json=[record, absurd, record]).status_code == 200
    assert client.post("/v1/score", json={"additions": "x"}).status_code == 422
    after = client.get("/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text
    ok = {"route": "/v1/score", "method": "POST", "status": "200"}
    bad = {**ok, "status": "422"}
    for labels in (ok, bad):
        counted = _metric(text, "model_serving_requests_total", **labels)
        assert counted - _metric(before, "model_serving_requests_total", **labels) == 1
        assert _metric(text, "model_serving_request_duration_seconds_count", **labels) >= 1
    scored = "model_serving_scored_records_total"
    assert (
        _metric(text, scored, input="pull_request") - _metric(before, scored, input="pull_request")
        == 3
    )
    flagged = "model_serving_anomalous_records_total"
    assert (
        _metric(text, flagged, input="pull_request")
        - _metric(before, flagged, input="pull_request")
        >= 1
    )
    assert 0 < _metric(text, "model_serving_anomaly_ratio") <= 1
    assert _metric(text, "model_serving_model_info", model_version=model.version) == 1
    client.get("/no/such/path")
    assert 'route="unmatched"' in client.get("/metrics").text


def test_requests_scored_together_get_their_own_verdicts(model, serving_records) -> None:
    """Concurrent requests share one scoring call; each still gets exactly its verdicts."""
    holder = ModelHolder(lambda: model, lambda _: None)
    holder.load()
    batcher = MicroBatcher(holder)
    requests = [serving_records[i : i + size] for i, size in ((0, 1), (1, 4), (5, 1), (6, 3))]

    async def together():
        parsed = [_decoded(sent) for sent in requests]
        return await asyncio.gather(*(batcher.score(records) for records in parsed))

    answers = asyncio.run(together())
    for sent, answer in zip(requests, answers, strict=True):
        alone = score_frame(model.scorer, sent)
        assert answer.score.tolist() == pytest.approx([e["score"] for e in alone], 1e-6)


def _decoded(records: list[dict[str, Any]]) -> PullRequests:
    """``records`` as the scoring route decodes a request's body of them."""
    decoded, _ = decode_pull_requests(json.dumps(records).encode())
    return decoded


def test_context_features_use_the_models_snapshot_unless_the_caller_sends_them(
    client, serving_records
) -> None:
    """A known author with many earlier pull requests scores differently from a newcomer;
    a caller that sends the context itself overrides the snapshot."""
    record = dict(serving_records[0])
    newcomer = {**record, "user": {"login": "someone-never-seen"}}
    stated = {**newcomer, "author_prior_pull_requests": 500, "repository_median_changes": 1}
    scores = [
        client.post("/v1/score", json=r).json()["results"][0]["score"] for r in (newcomer, stated)
    ]
    assert scores[0] != scores[1]
    bad = client.post("/v1/score", json={**record, "author_prior_pull_requests": -1})
    assert bad.status_code == 422
    assert "author_prior_pull_requests" in bad.text


def test_fast_path_features_equal_the_spec_frame_path(serving_records) -> None:
    """Train/serve skew check for serving: the request path (validated records -> arrays,
    no pandas) and the frame path that Spark and the pyfunc use give the same features,
    with the context filled from a real snapshot (some authors and repositories known)."""
    flat = [
        {**r, "repository": r["base"]["repo"]["full_name"], "author": r["user"]["login"]}
        for r in serving_records
    ]
    context = feature_context(pd.DataFrame(flat[::2]))
    parsed = _decoded(serving_records)

    inputs = parsed.feature_inputs()
    prior, median = context.fill(
        parsed.repositories,
        parsed.authors,
        inputs.additions + inputs.deletions,
        inputs.author_prior_pull_requests,
        inputs.repository_median_changes,
    )
    fast = feature_matrix(
        dataclasses.replace(
            inputs, author_prior_pull_requests=prior, repository_median_changes=median
        )
    )
    reference = compute_features(attach_context(pd.DataFrame(flat), context)).to_numpy()
    assert (prior > 0).any()
    assert (prior == 0).any()
    np.testing.assert_allclose(fast, reference, rtol=1e-12, atol=1e-12)


# -- hostile input: one bad request never hurts another -------------------------------------
COUNTS = ("additions", "deletions", "changed_files", "commits", "author_prior_pull_requests")


@pytest.mark.parametrize("field", COUNTS)
@pytest.mark.parametrize("value", [10**400, MAX_COUNT + 1], ids=["10**400", "MAX_COUNT+1"])
def test_a_count_past_the_shared_limit_is_422_naming_the_field(client, record, field, value):
    """10**400 is a valid JSON integer: it must be refused by validation, before it joins
    a micro-batch, with the limit in the message."""
    body = json.dumps({**record, field: 0}).replace(f'"{field}": 0', f'"{field}": {value}')
    response = client.post("/v1/score", content=body, headers=JSON)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", field]
    assert f"{MAX_COUNT}" in error["msg"]
    assert client.post("/v1/score", json={**record, field: MAX_COUNT}).status_code == 200


def test_one_unscorable_record_fails_only_its_own_request(model, serving_records) -> None:
    """Whatever gets past validation and breaks scoring (here a repository built without
    validation, which the model's context cannot look up) fails its own request with the
    record's position; the requests batched with it are scored as if it had never come."""
    holder = ModelHolder(lambda: model, lambda _: None)
    holder.load()
    batcher = MicroBatcher(holder)
    good = [_decoded(serving_records[i : i + 3]) for i in (0, 3)]
    record = _decoded(serving_records[6:7])
    unhashable = dataclasses.replace(record, repositories=[["not", "a", "name"]])
    poisoned = PullRequests.concat([good[0][0:1], unhashable])

    async def together():
        requests = (good[0], poisoned, good[1])
        return await asyncio.gather(*(batcher.score(r) for r in requests), return_exceptions=True)

    first, failed, second = asyncio.run(together())
    assert isinstance(failed, UnscorableRecordError)
    assert failed.index == 1
    assert "TypeError" in failed.problem
    for sent, answer in ((serving_records[0:3], first), (serving_records[3:6], second)):
        alone = score_frame(model.scorer, sent)
        assert answer.score.tolist() == pytest.approx([e["score"] for e in alone], 1e-6)


@pytest.mark.parametrize("value", [1e20, 3.5e38, 1e300])
def test_a_feature_beyond_float32_still_gets_a_finite_score_and_is_flagged(
    client, vector, value
) -> None:
    response = client.post("/v1/score/features", json={**vector, "log_additions": value})
    assert response.status_code == 200, response.text
    [verdict] = response.json()["results"]
    assert isinstance(verdict["score"], float)
    assert np.isfinite(verdict["score"])
    assert verdict["is_anomaly"] is True
    assert verdict["top_features"][0] == "log_additions"


def test_merged_before_created_is_422_as_preprocessing_quarantines_it(client, record) -> None:
    early = {**record, "created_at": "2024-05-02T10:00:00Z", "merged_at": "2024-05-01T10:00:00Z"}
    response = client.post("/v1/score", json=[record, early])
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", 1, "merged_at"]
    assert MERGED_BEFORE_CREATED in error["msg"]


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_body_that_is_not_declared_json_is_415(client, record, content_type) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    response = client.post("/v1/score", content=json.dumps(record), headers=headers)
    assert response.status_code == 415, response.text
    assert "application/json" in response.json()["detail"]
    charset = {"content-type": "application/json; charset=utf-8"}
    assert client.post("/v1/score", content=json.dumps(record), headers=charset).status_code == 200


def _drift(client: TestClient) -> dict[str, float]:
    text = client.get("/metrics").text
    found = re.findall(r'^model_serving_feature_drift_psi\{feature="(\w+)"\} (\S+)$', text, re.M)
    return {feature: float(value) for feature, value in found}


@pytest.mark.parametrize("shift", [1, 50])
def test_the_drift_metric_rises_for_shifted_records_only(model, serving_records, shift) -> None:
    """The window holds the last 1,000 records scored: ordinary pull requests stay below the
    alert level, the same ones with 50 times the additions rise past it in log_additions."""
    records = [
        {**r, "additions": r["additions"] * shift, "deletions": r["deletions"]}
        for r in serving_records[:1000]
    ]
    with TestClient(create_app(lambda: model)) as fresh:
        assert wait_ready(fresh).status_code == 200
        assert _drift(fresh) == {}  # nothing scored yet
        for start in range(0, len(records), 100):
            assert fresh.post("/v1/score", json=records[start : start + 100]).status_code == 200
        drift = _drift(fresh)
    assert set(drift) == set(FEATURE_NAMES)
    if shift == 1:
        assert max(drift.values()) < DRIFT_ALERT_PSI, drift
    else:
        assert drift["log_additions"] > DRIFT_ALERT_PSI, drift
        assert drift["log_commits"] < 0.1, drift  # what did not change does not drift
