"""Hostile input against a real model-serving process: the OpenAPI document is one a client
can read, a bounded fuzz of it finds no 5xx and no answer outside its schema, and under a
mixed concurrent load with one bad request in eight no good request fails."""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from schemathesis.specs.openapi.checks import positive_data_acceptance

from pipeline_common.limits import MAX_COUNT

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def openapi(served) -> dict[str, Any]:
    response = httpx.get(served.url + "/openapi.json", timeout=10)
    assert response.status_code == 200
    return response.json()


def _refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        if isinstance(value.get("$ref"), str):
            yield value["$ref"]
        for inner in value.values():
            yield from _refs(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _refs(inner)


def test_the_openapi_document_validates_and_defines_every_schema_it_references(openapi):
    validate(openapi)  # OpenAPI 3.1, including the resolution of every $ref
    schemas = openapi["components"]["schemas"]
    for ref in set(_refs(openapi)):
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    body = openapi["paths"]["/v1/score"]["post"]["requestBody"]["content"]["application/json"]
    assert {"$ref": "#/components/schemas/PullRequestIn"} in body["schema"]["anyOf"]
    record = schemas["PullRequestIn"]["properties"]
    # the GitHub-shaped aliases a client may send instead of repository and author
    assert "base.repo.full_name is read as repository" in record["base"]["description"]
    assert "user.login is read as author" in record["user"]["description"]
    assert "base.repo.full_name" in record["repository"]["description"]
    assert record["additions"]["maximum"] == MAX_COUNT
    assert {"413", "415", "422", "503"} <= set(openapi["paths"]["/v1/score"]["post"]["responses"])


@pytest.fixture(scope="module")
def api_schema(served):
    return schemathesis.openapi.from_url(served.url + "/openapi.json")


fuzzed = schemathesis.pytest.from_fixture("api_schema")


@fuzzed.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_a_bounded_fuzz_of_the_api_finds_no_server_error_and_no_answer_off_its_schema(case):
    """Schema-valid and schema-breaking bodies alike: never a 5xx, every answer as the
    document says (status, content type, body schema), every body that breaks the schema
    refused. Not checked: that every schema-valid body is accepted, since JSON Schema cannot
    say all the server checks (times between 1970 and 2200, merged_at not before
    created_at, an integer written as 1.0); the document says those in words."""
    case.call_and_validate(excluded_checks=[positive_data_acceptance])


def _bad_requests(record: dict[str, Any]) -> list[dict[str, Any]]:
    """One of each kind of bad request a hostile client sends, and the status it earns."""
    huge = json.dumps({**record, "additions": 0}).replace(
        '"additions": 0', '"additions": 1' + "0" * 400
    )
    return [
        {"content": huge, "headers": JSON, "status": 422},
        {"json": {**record, "deletions": MAX_COUNT + 1}, "status": 422},
        {"json": [record, {**record, "commits": "many"}], "status": 422},
        {"json": {**record, "merged_at": "1999-01-01T00:00:00Z"}, "status": 422},
        {"content": b'{"additions": ', "headers": JSON, "status": 422},
        {"content": json.dumps(record), "headers": {"content-type": "text/plain"}, "status": 415},
        {"json": {**record, "created_at": "20240-01-01T00:00:00Z"}, "status": 422},
        {"json": [record] * 1001, "status": 413},
    ]


async def _mixed_load(url: str, good: list[dict[str, Any]], bad: list[dict[str, Any]]):
    """Requests in flight together, one bad one in eight, sent over 16 connections."""
    limits = httpx.Limits(max_connections=16)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

        async def send(request: dict[str, Any]) -> tuple[dict[str, Any], httpx.Response]:
            options = {k: v for k, v in request.items() if k != "status"}
            return request, await client.post("/v1/score", **options)

        requests = []
        for index, record in enumerate(good):
            requests.append({"json": record if index % 2 else [record, record], "status": 200})
            if index % 7 == 6:
                requests.append(bad[(index // 7) % len(bad)])
        return await asyncio.gather(*(send(r) for r in requests))


def test_under_a_mixed_load_with_one_bad_request_in_eight_no_good_request_fails(
    start_server, serving_records
):
    server = start_server()
    server.wait_ready()
    logs: list[str] = []  # read while it runs: a full pipe would stall the server
    reader = threading.Thread(target=lambda: logs.append(server.process.stderr.read()))
    reader.start()
    good = serving_records[:280]  # GitHub-shaped, as a client sends them

    answers = asyncio.run(_mixed_load(server.url, good, _bad_requests(good[0])))
    assert server.stop() == 0
    reader.join(timeout=30)

    good_answers = [(r, a) for r, a in answers if r["status"] == 200]
    bad_answers = [(r, a) for r, a in answers if r["status"] != 200]
    assert len(good_answers) == 280
    assert len(bad_answers) == 40
    failed = [a.status_code for _, a in good_answers if a.status_code != 200]
    assert failed == [], f"{len(failed)} good requests failed: {sorted(set(failed))}"
    for _, answer in good_answers:
        for verdict in answer.json()["results"]:
            assert math.isfinite(verdict["score"])
    assert [a.status_code for r, a in bad_answers] == [r["status"] for r, _ in bad_answers]
    assert "Traceback" not in "".join(logs)
