"""The launcher: start, report, stop by pid, never trust a stale state file, one operator at
a time. Uses its own state directory and mostly the Vault dev server (quick to start)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import hvac
import pytest
import requests
from proc_table import environ, group_members

from pipeline_ops.base import processes
from pipeline_ops.base.errors import ProcessExited
from pipeline_ops.base.processes import free_port, start_ticks
from pipeline_ops.local_platform import LocalPlatform, PlatformError, platform_state


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalPlatform]:
    platform = LocalPlatform(tmp_path / "platform")
    try:
        yield platform
    finally:
        platform.down()


def _gone(pid: int) -> bool:
    """True when no process has this pid (a zombie counts as gone: it runs nothing)."""
    return start_ticks(pid) is None


def _record(local: LocalPlatform, name: str, pid: int, ticks: int | None) -> None:
    local.state_dir.mkdir(parents=True, exist_ok=True)
    local.state.path.write_text(
        json.dumps(
            {
                "processes": {
                    name: {
                        "name": name,
                        "pid": pid,
                        "start_ticks": ticks,
                        "command": ["bao", "server", "-dev"],
                        "log_file": str(local.state_dir / "x.log"),
                        "ports": {"main": 1},
                    }
                }
            }
        )
    )


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen]:
    """A process that is not ours to stop."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def test_up_reports_healthy_service_with_its_pid(local: LocalPlatform):
    local.up(["vault"])

    status = local.status()

    assert list(status) == ["vault"]
    vault = status["vault"]
    assert vault["healthy"] is True
    assert not _gone(vault["pid"])
    assert b"server" in Path(f"/proc/{vault['pid']}/cmdline").read_bytes().split(b"\0")
    response = requests.get(f"http://127.0.0.1:{vault['port']}/v1/sys/health", timeout=5)
    assert response.json()["initialized"] is True
    # the recorded pid is the one in the state file a later `make down` will use
    saved = json.loads(local.state.path.read_text())["processes"]["vault"]
    assert saved["pid"] == vault["pid"]


def test_up_is_idempotent(local: LocalPlatform):
    first = local.up(["vault"])["vault"]

    second = local.up(["vault"])["vault"]

    assert (second.pid, second.port) == (first.pid, first.port)
    assert local.status()["vault"]["healthy"] is True


def test_down_stops_by_pid_and_the_process_is_gone(local: LocalPlatform):
    pid = local.up(["vault"])["vault"].pid
    port = local.service("vault").port

    assert local.down() == ["vault"]

    assert _gone(pid)
    assert local.status() == {}
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/v1/sys/health", timeout=2)
    with pytest.raises(PlatformError, match="vault is not running"):
        local.service("vault")


def test_dead_pid_in_state_file_is_dropped(local: LocalPlatform):
    finished = subprocess.Popen(["true"])
    ticks = start_ticks(finished.pid)
    finished.wait()
    _record(local, "vault", finished.pid, ticks)

    assert local.running() == {}
    assert local.down() == []
    assert json.loads(local.state.path.read_text())["processes"] == {}  # cleaned up


def test_recycled_pid_is_not_trusted_nor_stopped(local: LocalPlatform, bystander: subprocess.Popen):
    """The recorded pid now belongs to another program (other start time)."""
    real_ticks = start_ticks(bystander.pid)
    assert real_ticks is not None
    _record(local, "vault", bystander.pid, real_ticks - 1)

    assert local.status() == {}
    _record(local, "vault", bystander.pid, real_ticks - 1)
    local.down()

    assert bystander.poll() is None  # still running: down never signalled it
    assert not _gone(bystander.pid)


def test_up_replaces_a_stale_record_with_a_real_server(
    local: LocalPlatform, bystander: subprocess.Popen
):
    _record(local, "vault", bystander.pid, (start_ticks(bystander.pid) or 0) + 1)

    started = local.up(["vault"])["vault"]

    assert started.pid != bystander.pid
    assert local.status()["vault"]["healthy"] is True
    local.down()
    assert _gone(started.pid)
    assert bystander.poll() is None


def test_a_record_without_start_time_is_not_trusted(
    local: LocalPlatform, bystander: subprocess.Popen
):
    """A state file from an older launcher knows only the pid: too weak to kill by."""
    _record(local, "vault", bystander.pid, None)

    assert local.running() == {}
    local.down()
    assert bystander.poll() is None


def test_unknown_service_is_rejected(local: LocalPlatform):
    with pytest.raises(PlatformError, match="unknown service 'redis'"):
        local.up(["redis"])


def test_a_server_that_dies_at_start_is_reported_with_its_log(
    local: LocalPlatform, monkeypatch: pytest.MonkeyPatch
):
    # Another process holds the port: the dev server cannot listen and exits.
    with socket.socket() as holder:
        port = free_port()
        holder.bind(("127.0.0.1", port))
        holder.listen()
        monkeypatch.setenv("PLATFORM_VAULT_PORT", str(port))

        with pytest.raises(ProcessExited, match="vault exited during start") as err:
            local.up(["vault"], timeout=30)

    assert "address already in use" in str(err.value)


def test_the_dev_server_does_not_write_the_home_token_file(
    local: LocalPlatform, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    """Otherwise every start overwrites ~/.vault-token, which hvac and the bao CLI then use."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))

    local.up(["vault"])

    assert not (home / ".vault-token").exists()
    assert os.stat(local.vault_root_token_file).st_mode & 0o077 == 0


def test_the_root_token_is_not_in_the_process_list(local: LocalPlatform):
    """Any user can read a process's arguments (`ps`); the token goes by environment."""
    vault = local.up(["vault"])["vault"]

    arguments = Path(f"/proc/{vault.pid}/cmdline").read_bytes()

    assert local.vault_root_token().encode() not in arguments
    client = hvac.Client(url=vault.url, token=local.vault_root_token())
    assert client.is_authenticated()


def test_servers_get_only_the_environment_they_need(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The operator's own token and cloud key stay with the operator: no server (nor any of
    its children) sees them; SeaweedFS gets the platform's S3 keys, Vault its root token."""
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_operators-own-dummy-token")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "operators-own-dummy-cloud-key")
    monkeypatch.setenv("VAULT_TOKEN", "operators-own-dummy-vault-token")
    local = LocalPlatform(tmp_path / "platform")
    try:
        running = local.up(["vault", "mongo", "mlflow", "s3"])

        seen = {}
        for name, record in running.items():
            group = group_members(record.pid)
            assert record.pid in group
            for pid in group:
                raw = Path(f"/proc/{pid}/environ").read_bytes()
                seen[f"{name} pid {pid}"] = [
                    value
                    for value in (b"ghp_operators-own", b"operators-own-dummy", b"GITHUB_TOKEN")
                    if value in raw
                ]
        assert all(not found for found in seen.values()), seen
        assert len(seen) >= 4
        s3 = environ(running["s3"].pid)
        assert s3["AWS_SECRET_ACCESS_KEY"] == local.s3_credentials()["secret_access_key"]
        assert environ(running["vault"].pid)["BAO_DEV_ROOT_TOKEN_ID"] == local.vault_root_token()
    finally:
        local.down()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_down_stops_every_recorded_process_newest_first(local: LocalPlatform, tmp_path: Path):
    """What `make run` adds to the platform's state file (a model-serving instance) is
    listed by status and stopped by down, before the servers it depends on."""
    local.up(["vault"])
    port = free_port()
    serving = processes.start(
        "model-serving-blue",
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        log_file=tmp_path / "blue.log", env=processes.minimal_environment(), ports={"main": port},
    )  # fmt: skip
    platform_state(local.state_dir).add(serving)
    processes.wait_healthy(serving, lambda: _listening(port), 20)

    status = local.status()

    assert list(status) == ["vault", "model-serving-blue"]
    assert status["model-serving-blue"]["healthy"] is True
    assert status["model-serving-blue"]["port"] == port
    vault_pid = status["vault"]["pid"]
    assert local.down() == ["model-serving-blue", "vault"]
    assert _gone(serving.pid)
    assert _gone(vault_pid)
    assert local.status() == {}


UP = """
import json, sys
from pathlib import Path
from pipeline_ops import local_platform
from pipeline_ops.base.errors import OpsError

local_platform.LOCK_WAIT = float(sys.argv[2])
try:
    record = local_platform.LocalPlatform(Path(sys.argv[1])).up(["vault"])["vault"]
except OpsError as error:
    sys.exit(f"error: {error}")
print(json.dumps({"pid": record.pid}))
"""


def _up_in_another_process(state_dir: Path, wait: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", UP, str(state_dir), str(wait)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _vault_servers_in(state_dir: Path) -> list[int]:
    found = []
    for cwd in Path("/proc").glob("[0-9]*/cwd"):
        try:
            if cwd.resolve() == (state_dir / "vault").resolve():
                found.append(int(cwd.parent.name))
        except OSError:
            continue
    return found


def test_two_operators_at_once_share_one_set_of_servers(local: LocalPlatform):
    """Two `make up` at the same moment: the second waits for the first and finds its
    servers running; never two Vaults in one state directory."""
    first = _up_in_another_process(local.state_dir, 120)
    second = _up_in_another_process(local.state_dir, 120)

    outcomes = [process.communicate(timeout=180) for process in (first, second)]

    assert (first.returncode, second.returncode) == (0, 0), outcomes
    pids = {json.loads(stdout)["pid"] for stdout, _ in outcomes}
    assert len(pids) == 1
    assert _vault_servers_in(local.state_dir) == list(pids)
    assert local.status()["vault"]["healthy"] is True


def test_a_second_operator_is_refused_by_name(local: LocalPlatform):
    """While another operator holds the platform (a `make run`), `make up` waits its time,
    then is refused with who holds it, having started nothing."""
    with local.held("make run"):
        started = time.monotonic()
        second = _up_in_another_process(local.state_dir, 2)
        _, stderr = second.communicate(timeout=60)
        waited = time.monotonic() - started

    assert second.returncode == 1
    assert f"make up: {local.state_dir} is in use by pid {os.getpid()}" in stderr, stderr
    assert waited >= 2
    assert local.status() == {}
    assert _vault_servers_in(local.state_dir) == []


def test_up_inside_a_run_that_holds_the_platform_does_not_wait_for_itself(
    local: LocalPlatform, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr("pipeline_ops.local_platform.LOCK_WAIT", 1)
    with local.held("make run"):
        local.up(["vault"])
        assert local.down() == ["vault"]
