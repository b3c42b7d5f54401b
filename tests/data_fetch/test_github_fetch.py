"""The github source against our GitHub replay server (a real HTTP server serving the real
sample) and the real FerretDB: pagination, incremental re-runs, updates, idempotence,
rate limits, faults, quarantine, the REST fallback, and a real kill mid-run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import hvac
import pymongo
import pytest
from pydantic import SecretStr

from data_fetch.github import (
    BudgetExhaustedError,
    GitHubClient,
    GitHubError,
    RetryPolicy,
    graphql_pages,
)
from data_fetch.job import FetchJob
from data_fetch.settings import FetchSecret
from pipeline_ops.github_replay_server import GitHubReplayServer, load_samples
from pipeline_ops.local_env import LocalEnvironment

DATA_FETCH = Path(sys.executable).parent / "data-fetch"
FLASK = "pallets/flask"
FASTAPI = "fastapi/fastapi"
FASTAPI_SUBSET = 250
TOKEN = "ghp_replay_test_token_do_not_print_0123456789"


@pytest.fixture(scope="module")
def samples(samples_dir: Path) -> dict[str, list[dict[str, Any]]]:
    loaded = load_samples(samples_dir)
    loaded[FASTAPI] = loaded[FASTAPI][:FASTAPI_SUBSET]
    return loaded


@pytest.fixture
def github(samples: dict[str, list[dict[str, Any]]]) -> Iterator[GitHubReplayServer]:
    with GitHubReplayServer(samples) as server:
        yield server


def _client(server: GitHubReplayServer, **retry: Any) -> GitHubClient:
    policy = RetryPolicy(**{"base_delay": 0.01, "max_delay": 0.05, **retry})
    return GitHubClient(server.url, SecretStr(TOKEN), retry=policy)


def _fetch(secret: FetchSecret, server: GitHubReplayServer, *repos: str, **options: Any):
    client = options.pop("client", None) or _client(server)
    job = FetchJob(
        secret, source="github", repositories=list(repos) or [FLASK], client=client, **options
    )
    return job.run()


def _documents(client: pymongo.MongoClient, database: str) -> dict[str, dict[str, Any]]:
    return {
        doc["_id"]: {k: v for k, v in doc.items() if k != "fetched_at"}
        for doc in client[database].pull_requests.find()
    }


def test_full_fetch_pages_through_every_pull_request_with_one_request_a_page(
    database, github: GitHubReplayServer, samples
):
    secret, client = database

    summary = _fetch(secret, github, FLASK, FASTAPI)

    expected = len(samples[FLASK]) + FASTAPI_SUBSET
    assert summary["fetched"] == summary["inserted"] == summary["collection_count"] == expected
    assert summary["pages"] == 16 + 3  # 1,511 and 250 pull requests, 100 a page
    assert summary["requests_used"] == github.requests["graphql"] == 19
    assert summary["complete"] is True
    stored = client[secret.mongo_database].pull_requests.find_one({"_id": "pallets/flask#228"})
    assert stored["author"] == "akavlie"
    assert stored["title"] == "Corrections to fabfile example"
    assert stored["raw"]["number"] == 228
    assert stored["schema_version"] == 1
    state = client[secret.mongo_database].pull_requests_fetch_state.find_one(
        {"_id": f"github:{FLASK}"}
    )
    newest = max(p["updated_at"] for p in samples[FLASK])
    assert state["high_water_mark"] == datetime.fromisoformat(newest.replace("Z", "+00:00"))
    assert state["cursor"] is None
    assert state["inserted"] == len(samples[FLASK])


def test_unchanged_rerun_costs_one_request_per_repository_and_writes_nothing(
    database, github: GitHubReplayServer
):
    secret, client = database
    _fetch(secret, github, FLASK, FASTAPI)
    before = _documents(client, secret.mongo_database)

    again = _fetch(secret, github, FLASK, FASTAPI)

    assert again["requests_used"] == 2
    assert (again["inserted"], again["updated"], again["fetched"]) == (0, 0, 0)
    assert _documents(client, secret.mongo_database) == before


def test_a_changed_pull_request_is_fetched_and_updated(database, github: GitHubReplayServer):
    secret, client = database
    _fetch(secret, github)
    changed = github.update_pull(FLASK, 228, title="retitled", comments=7)

    summary = _fetch(secret, github)

    assert (summary["fetched"], summary["updated"], summary["inserted"]) == (1, 1, 0)
    assert summary["requests_used"] == 1
    stored = client[secret.mongo_database].pull_requests.find_one({"_id": "pallets/flask#228"})
    assert (stored["title"], stored["comments"]) == ("retitled", 7)
    assert stored["updated_at"] == datetime.fromisoformat(
        changed["updated_at"].replace("Z", "+00:00")
    )
    assert summary["collection_count"] == 1511


def test_since_stops_at_that_date(database, github: GitHubReplayServer, samples):
    secret, _ = database
    since = datetime.fromisoformat("2020-01-01T00:00:00+00:00")
    newer = [p for p in samples[FLASK] if p["updated_at"] > "2020-01-01T00:00:00Z"]

    summary = _fetch(secret, github, since=since)

    assert summary["inserted"] == len(newer)
    assert summary["requests_used"] == len(newer) // 100 + 1


def test_max_pages_stops_early_and_the_next_run_resumes_at_the_cursor(
    database, github: GitHubReplayServer, samples
):
    secret, client = database

    first = _fetch(secret, github, max_pages=3)
    rest = _fetch(secret, github)

    assert first["complete"] is False
    assert first["inserted"] == 300
    assert rest["repositories"][FLASK]["resumed"] is True
    assert rest["inserted"] == len(samples[FLASK]) - 300
    assert rest["requests_used"] == 16 - 3  # no page fetched twice
    assert client[secret.mongo_database].pull_requests.count_documents({}) == len(samples[FLASK])


def test_rate_limits_5xx_and_truncated_json_are_retried(database, github: GitHubReplayServer):
    secret, _ = database
    # five failures in a row: one short of the six attempts a request gets
    for fault in ("502", "truncated", "secondary-403", "502", "secondary-429"):
        github.inject(fault)

    summary = _fetch(secret, github)

    assert summary["inserted"] == summary["collection_count"] == 1511
    assert summary["requests_used"] == 16 + 5
    assert github.requests["fault:secondary-429"] == 1


def test_a_server_that_keeps_failing_ends_the_run_with_a_clear_error(
    database, github: GitHubReplayServer
):
    secret, client = database
    _fetch(secret, github, max_pages=1)
    github.inject("502", 6)

    with pytest.raises(GitHubError, match="did not answer POST /graphql after 6 attempts"):
        _fetch(secret, github)

    state = client[secret.mongo_database].pull_requests_fetch_state.find_one()
    assert state["pages"] == 1
    assert state["cursor"]


def test_primary_budget_exhausted_saves_progress_and_stops(
    database, github: GitHubReplayServer, samples
):
    secret, _ = database
    _fetch(secret, github, max_pages=2)
    github.exhaust_budget(reset_after_seconds=3600)

    with pytest.raises(BudgetExhaustedError, match="--wait-for-reset") as stopped:
        _fetch(secret, github)

    assert stopped.value.exit_code == 4
    github.restore_budget()
    summary = _fetch(secret, github)
    assert summary["inserted"] == len(samples[FLASK]) - 200


def test_a_short_primary_reset_is_waited_for(database, github: GitHubReplayServer):
    secret, _ = database
    github.exhaust_budget(reset_after_seconds=1)

    summary = _fetch(secret, github)

    assert summary["inserted"] == 1511


def test_a_fetch_bigger_than_the_budget_waits_for_each_reset(samples) -> None:
    """GitHub's budget in small: 4 points a 1-second window, a page costs 2."""
    pulls = samples[FLASK][:500]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    with GitHubReplayServer(
        {FLASK: pulls}, rate_limit=4, window_seconds=1, graphql_cost=2
    ) as server:
        client = GitHubClient(
            server.url, SecretStr(TOKEN), retry=RetryPolicy(wait_for_reset=True), sleep=sleep
        )
        pages = list(graphql_pages(client, FLASK, None))

    assert sum(len(page.payloads) for page in pages) == 500
    assert client.requests_made == 5  # no page refused: the client waits before asking
    assert len(waits) == 2  # two pages a window
    assert server.requests["graphql"] == 5


def test_bad_records_from_github_are_quarantined_with_reasons(
    database, github: GitHubReplayServer, samples
):
    secret, client = database
    good = samples[FLASK][0]
    github.add_pull(
        FLASK, {**good, "number": 900001, "additions": -4, "updated_at": "2030-01-01T00:00:00Z"}
    )
    github.add_pull(
        FLASK,
        {**good, "number": 900002, "created_at": "yesterday", "updated_at": "2030-01-02T00:00:00Z"},
    )

    summary = _fetch(secret, github)

    assert summary["quarantined"] == 2
    assert summary["inserted"] == 1511
    quarantine = list(client[secret.mongo_database].pull_requests_quarantine.find())
    reasons = {doc["payload"]["number"]: doc["reason"] for doc in quarantine}
    assert "additions" in reasons[900001]
    assert "created_at" in reasons[900002]
    assert {doc["source"] for doc in quarantine} == {f"github:{FLASK}"}


def test_rest_fallback_when_the_server_has_no_graphql(database, samples):
    secret, client = database
    subset = {FLASK: samples[FLASK][:250]}
    with GitHubReplayServer(subset, graphql_enabled=False) as server:
        first = _fetch(secret, server)
        server.update_pull(FLASK, subset[FLASK][-1]["number"], title="changed")
        again = _fetch(secret, server)

    assert first["inserted"] == 250
    # 1 GraphQL probe, 3 list pages, one request per pull request
    assert first["requests_used"] == 1 + 3 + 250
    assert (again["updated"], again["requests_used"]) == (1, 1 + 1 + 1)
    docs = _documents(client, secret.mongo_database)
    assert all(doc["additions"] is not None for doc in docs.values())


# -- the command, as a pod runs it: real process, real kill ---------------------------------------


@pytest.fixture
def fetch_secret_with_token(local_env: LocalEnvironment) -> Iterator[dict[str, str]]:
    """The data-fetch Vault secret with a GitHub token and a database of its own; the
    original secret is put back afterwards."""
    root = hvac.Client(
        url=local_env.platform.service("vault").url, token=local_env.platform.vault_root_token()
    )
    mount, path = local_env.layout.secret_path("data-fetch").split("/", 1)
    original = root.secrets.kv.v2.read_secret_version(
        path=path, mount_point=mount, raise_on_deleted_version=True
    )
    values = {
        **original["data"]["data"],
        "github_token": TOKEN,
        "mongo_database": f"t_cli_{uuid.uuid4().hex[:10]}",
    }
    root.secrets.kv.v2.create_or_update_secret(path=path, secret=values, mount_point=mount)
    try:
        yield values
    finally:
        root.secrets.kv.v2.create_or_update_secret(
            path=path, secret=original["data"]["data"], mount_point=mount
        )
        pymongo.MongoClient(values["mongo_uri"]).drop_database(values["mongo_database"])


def _command_env(local_env: LocalEnvironment) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "GITHUB_"))}
    return {**base, **local_env.stage_env("data-fetch")}


def test_killed_mid_run_then_resumed_gives_exactly_the_clean_run_collection(
    local_env: LocalEnvironment, fetch_secret_with_token, samples, database
):
    secret, client = database
    values = fetch_secret_with_token
    argv = [str(DATA_FETCH), "--repository", FLASK, "--repository", FASTAPI]
    with GitHubReplayServer(samples, delay_seconds=0.05) as server:
        argv += ["--api-url", server.url]
        for kill_after_pages in (4, 9):
            process = subprocess.Popen(
                argv, env=_command_env(local_env), stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            deadline = time.monotonic() + 60
            while server.requests["graphql"] < kill_after_pages and process.poll() is None:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            process.send_signal(signal.SIGKILL)
            process.communicate()
            assert process.returncode == -signal.SIGKILL
        resumed = subprocess.run(
            argv, env=_command_env(local_env), capture_output=True, text=True, timeout=120
        )
        # the same source fetched once, cleanly, into another database
        _fetch(secret, server, FLASK, FASTAPI)

    assert resumed.returncode == 0, resumed.stderr
    killed_db = values["mongo_database"]
    assert _documents(client, killed_db) == _documents(client, secret.mongo_database)
    assert client[killed_db].pull_requests.count_documents({}) == 1511 + FASTAPI_SUBSET
    state = client[killed_db].pull_requests_fetch_state.find_one({"_id": f"github:{FLASK}"})
    clean = client[secret.mongo_database].pull_requests_fetch_state.find_one(
        {"_id": f"github:{FLASK}"}
    )
    assert state["high_water_mark"] == clean["high_water_mark"]
    assert state["cursor"] is None


def test_cli_github_run_keeps_secrets_out_of_all_output(
    local_env: LocalEnvironment, fetch_secret_with_token, samples
):
    values = fetch_secret_with_token
    with GitHubReplayServer({FLASK: samples[FLASK][:150]}) as server:
        server.inject("502")
        server.inject("secondary-429")
        result = subprocess.run(
            [
                str(DATA_FETCH),
                "--repository",
                FLASK,
                "--api-url",
                server.url,
                "--log-level",
                "DEBUG",
            ],
            env=_command_env(local_env),
            capture_output=True,
            text=True,
            timeout=120,
        )
        sent = server.authorizations

    assert result.returncode == 0, result.stderr
    assert sent == {f"bearer {TOKEN}"}  # the token from Vault reached GitHub...
    output = result.stdout + result.stderr
    assert TOKEN not in output  # ...and nowhere else
    assert values["mongo_uri"] not in output
    assert '"source": "github"' in result.stdout
    assert '"inserted": 150' in result.stdout


def test_cli_exits_4_with_a_clear_message_when_the_budget_is_spent(
    local_env: LocalEnvironment, fetch_secret_with_token, samples
):
    with GitHubReplayServer({FLASK: samples[FLASK][:150]}) as server:
        server.exhaust_budget(reset_after_seconds=3600)
        result = subprocess.run(
            [str(DATA_FETCH), "--repository", FLASK, "--api-url", server.url],
            env=_command_env(local_env),
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert result.returncode == 4
    assert "GitHub API budget exhausted" in result.stderr
    assert "Progress is saved" in result.stderr
    assert "Traceback" not in result.stderr
