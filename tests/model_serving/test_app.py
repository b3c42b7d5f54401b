"""The scoring API contract, served by FastAPI in-process with a real (small) scorer."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ml_pipeline.features import FEATURE_NAMES
from ml_pipeline.scoring import AnomalyScorer
from model_serving.app import create_app
from model_serving.model_source import LoadedModel

MAX_BATCH = 5
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
def model(scorer: AnomalyScorer) -> LoadedModel:
    return LoadedModel(name="pr-anomaly", version="7", alias="champion", scorer=scorer)


@pytest.fixture(scope="module")
def client(model: LoadedModel) -> Iterator[TestClient]:
    with TestClient(create_app(lambda: model, max_batch=MAX_BATCH)) as client:
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
            assert ready.json()["model_version"] == "7"
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


def test_single_record_gets_one_verdict(client, record, scorer) -> None:
    response = client.post("/v1/score", json=record)
    assert response.status_code == 200, response.text
    [verdict] = response.json()["results"]
    assert set(verdict) == VERDICT_KEYS
    expected = scorer.score_records([record])[0]
    assert verdict["score"] == pytest.approx(expected["score"], rel=1e-5)
    assert verdict["threshold"] == pytest.approx(scorer.threshold)
    assert verdict["is_anomaly"] == (verdict["score"] > verdict["threshold"])
    assert len(verdict["top_features"]) == 3
    assert set(verdict["top_features"]) <= set(FEATURE_NAMES)
    assert verdict["number"] == record["number"]
    assert (verdict["model_name"], verdict["model_version"]) == ("pr-anomaly", "7")


def test_a_list_gets_one_verdict_per_record_in_order(client, serving_records, scorer) -> None:
    batch = serving_records[:MAX_BATCH]
    response = client.post("/v1/score", json=batch)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["number"] for r in results] == [r["number"] for r in batch]
    expected = scorer.score_records(batch)
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
    assert ["body", "list[PullRequestIn]", 1, field] in locs


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
