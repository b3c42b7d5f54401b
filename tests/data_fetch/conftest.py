"""Fixtures for the data-fetch tests: a database of its own in the real FerretDB."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pymongo
import pytest

from data_fetch.settings import FetchSecret
from pipeline_ops.local_env import LocalEnvironment


@pytest.fixture
def database(local_env: LocalEnvironment) -> Iterator[tuple[FetchSecret, pymongo.MongoClient]]:
    """A database of its own for each test (the stage's Mongo URI), dropped afterwards."""
    uri = local_env.stage_secrets()["data-fetch"]["mongo_uri"]
    name = f"t_fetch_{uuid.uuid4().hex[:10]}"
    client = pymongo.MongoClient(uri, tz_aware=True)
    try:
        yield FetchSecret(mongo_uri=uri, mongo_database=name), client
    finally:
        client.drop_database(name)
        client.close()
