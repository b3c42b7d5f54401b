"""FetchJob and the data-fetch command against the real FerretDB (MongoDB wire protocol)
and the real Vault: inserts, idempotent re-runs, newer-wins updates, quarantine."""

from __future__ import annotations

import copy
import gzip
import json
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from data_fetch.cli import replay_files
from data_fetch.job import FetchJob
from data_fetch.settings import FetchSecret
from pipeline_common.settings import ConfigError
from pipeline_ops.local_env import LocalEnvironment

DATA_FETCH = Path(sys.executable).parent / "data-fetch"
GOOD = 20


@pytest.fixture(scope="module")
def real_prs(samples_dir: Path) -> list[dict[str, Any]]:
    with gzip.open(samples_dir / "fastapi__fastapi.prs.jsonl.gz", "rt") as lines:
        return [json.loads(next(lines)) for _ in range(GOOD)]


def _write_replay(path: Path, payloads: list[Any], *, extra_lines: list[str] = ()) -> Path:
    lines = [json.dumps(p) for p in payloads] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def replay(tmp_path: Path, real_prs: list[dict[str, Any]]) -> Path:
    """20 real pull requests, a negative count, a line that is not JSON, a blank line."""
    negative = {**copy.deepcopy(real_prs[0]), "number": 999_999, "additions": -3}
    return _write_replay(
        tmp_path / "prs.jsonl", [*real_prs, negative], extra_lines=["", '{"number": 1,']
    )


def _run(secret: FetchSecret, *files: Path, **options: Any) -> dict[str, Any]:
    return FetchJob(secret, replay_files=list(files), **options).run()


def test_first_run_inserts_valid_records_and_quarantines_bad_ones(database, replay: Path):
    secret, client = database

    summary = _run(secret, replay)

    assert summary["records_read"] == GOOD + 2  # the blank line is not a record
    assert (summary["inserted"], summary["updated"], summary["unchanged"]) == (GOOD, 0, 0)
    assert summary["quarantined"] == 2
    assert summary["collection_count"] == GOOD
    assert summary["collection"] == f"{secret.mongo_database}.pull_requests"
    db = client[secret.mongo_database]
    stored = db.pull_requests.find_one({"_id": "fastapi/fastapi#" + str(_first_number(replay))})
    assert stored["repository"] == "fastapi/fastapi"
    assert stored["raw"]["number"] == stored["number"]  # the payload is kept alongside
    reasons = sorted(doc["reason"] for doc in db.pull_requests_quarantine.find())
    assert len(reasons) == 2
    assert any("additions" in r for r in reasons)
    assert any("not a JSON object" in r for r in reasons)  # the undecodable line
    sources = {doc["source"] for doc in db.pull_requests_quarantine.find()}
    assert sources == {"replay:prs.jsonl:21", "replay:prs.jsonl:23"}


def _first_number(replay: Path) -> int:
    return json.loads(replay.read_text().splitlines()[0])["number"]


def test_rerun_changes_nothing(database, replay: Path):
    secret, client = database
    _run(secret, replay)

    again = _run(secret, replay)

    assert (again["inserted"], again["updated"], again["unchanged"]) == (0, 0, GOOD)
    assert again["collection_count"] == GOOD
    assert client[secret.mongo_database].pull_requests_quarantine.count_documents({}) == 2


def _shift(payload: dict[str, Any], days: int, title: str) -> dict[str, Any]:
    changed = copy.deepcopy(payload)
    updated = datetime.fromisoformat(payload["updated_at"].replace("Z", "+00:00"))
    changed["updated_at"] = (updated + timedelta(days=days)).isoformat()
    changed["title"] = title
    return changed


def test_newer_record_replaces_the_stored_copy_and_older_does_not(
    database, replay: Path, real_prs: list[dict[str, Any]], tmp_path: Path
):
    secret, client = database
    _run(secret, replay)
    newer = _shift(real_prs[3], +1, "edited title")
    older = _shift(real_prs[5], -1, "stale title")
    update = _write_replay(tmp_path / "update.jsonl", [newer, older])

    summary = _run(secret, update)

    assert (summary["inserted"], summary["updated"], summary["unchanged"]) == (0, 1, 1)
    assert summary["collection_count"] == GOOD
    prs = client[secret.mongo_database].pull_requests
    assert prs.find_one({"number": real_prs[3]["number"]})["title"] == "edited title"
    assert prs.find_one({"number": real_prs[5]["number"]})["title"] == real_prs[5]["title"]
    # a later run with the original (older) copy does not undo the update
    _run(secret, replay)
    assert prs.find_one({"number": real_prs[3]["number"]})["title"] == "edited title"


def test_the_same_pull_request_twice_in_one_run_is_stored_once(
    database, real_prs: list[dict[str, Any]], tmp_path: Path
):
    secret, client = database
    first, later = real_prs[0], _shift(real_prs[0], +2, "later title")
    replay = _write_replay(tmp_path / "dupes.jsonl", [first, first, later])

    summary = _run(secret, replay)

    assert summary["collection_count"] == 1
    # copies within one page are folded to the newest before the write
    assert (summary["inserted"], summary["updated"], summary["unchanged"]) == (1, 0, 2)
    stored = client[secret.mongo_database].pull_requests.find_one({})
    assert stored["title"] == "later title"


def test_dry_run_writes_nothing(database, replay: Path):
    secret, client = database

    summary = _run(secret, replay, dry_run=True)

    assert summary["dry_run"] is True
    assert (summary["records_read"], summary["quarantined"]) == (GOOD + 2, 2)
    assert (summary["inserted"], summary["collection_count"]) == (0, 0)
    assert secret.mongo_database not in client.list_database_names()


def test_limit_reads_at_most_that_many_records_per_file(database, replay: Path):
    secret, _ = database

    summary = _run(secret, replay, replay, limit_per_file=5)

    assert summary["records_read"] == 10
    assert (summary["inserted"], summary["unchanged"], summary["collection_count"]) == (5, 5, 5)


def test_a_unique_index_guards_the_natural_key(database, replay: Path):
    secret, client = database
    _run(secret, replay)

    indexes = client[secret.mongo_database].pull_requests.index_information()

    assert indexes["pr_key"]["key"] == [("repository", 1), ("number", 1)]
    assert indexes["pr_key"]["unique"] is True


# -- the data-fetch command, as a pod runs it -----------------------------------------------------


def _command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    return subprocess.run(
        [str(DATA_FETCH), *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_fetches_with_the_stage_identity_and_prints_a_summary(
    local_env: LocalEnvironment, replay: Path
):
    result = _command(local_env.stage_env("data-fetch"), "--replay-path", str(replay))

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["stage"] == "data-fetch"
    assert summary["records_read"] == GOOD + 2
    assert summary["quarantined"] == 2
    assert summary["inserted"] + summary["updated"] + summary["unchanged"] == GOOD
    assert summary["collection"] == "github.pull_requests"
    # stderr carries the JSON logs (not a terminal), stdout only the summary
    logs = [json.loads(line) for line in result.stderr.splitlines()]
    assert {entry["stage"] for entry in logs} == {"data-fetch"}
    assert next(e for e in logs if e["message"] == "quarantined a record")["line"] == 21
    secret_value = local_env.stage_secrets()["data-fetch"]["mongo_uri"]
    assert secret_value not in result.stdout + result.stderr


def test_cli_with_another_stages_secret_path_exits_3_permission_denied(
    local_env: LocalEnvironment, replay: Path
):
    env = {**local_env.stage_env("data-fetch"), "VAULT_SECRET_PATH": "secret/mlops/ml-training"}

    result = _command(env, "--replay-path", str(replay))

    assert result.returncode == 3
    assert result.stdout == ""
    assert "data-fetch: Vault error: permission denied reading secret/mlops/ml-training" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr


def test_cli_without_vault_settings_exits_2_naming_them(tmp_path: Path, replay: Path):
    result = _command({}, "--replay-path", str(replay))

    assert result.returncode == 2
    assert "VAULT_ADDR" in result.stderr
    assert "VAULT_SECRET_PATH" in result.stderr
    assert "Traceback" not in result.stderr


def test_replay_paths_are_checked_before_anything_runs(tmp_path: Path, replay: Path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(ConfigError, match=re.escape(f"--replay-path {missing} does not exist")):
        replay_files([missing])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"no \.jsonl or \.jsonl\.gz files"):
        replay_files([empty])
    assert replay_files([tmp_path]) == [replay]  # a folder: its .jsonl files


@pytest.mark.parametrize("secret_path", ["", "secret"])
def test_cli_with_an_unusable_secret_path_exits_2_at_start_naming_it(
    local_env: LocalEnvironment, replay: Path, secret_path: str
):
    env = {**local_env.stage_env("data-fetch"), "VAULT_SECRET_PATH": secret_path}

    result = _command(env, "--replay-path", str(replay))

    assert result.returncode == 2, result.stderr
    assert "VAULT_SECRET_PATH" in result.stderr
    assert "MOUNT/PATH" in result.stderr
    assert "Traceback" not in result.stderr
