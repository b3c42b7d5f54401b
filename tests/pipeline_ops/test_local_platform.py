"""The launcher: start, report, stop by pid, and never trust a stale state file. Uses its
own state directory and only the Vault dev server (quick to start)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import hvac
import pytest
import requests

from pipeline_ops.local_platform import LocalPlatform, PlatformError, free_port, proc_start_ticks


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalPlatform]:
    platform = LocalPlatform(tmp_path / "platform")
    try:
        yield platform
    finally:
        platform.down()


def _gone(pid: int) -> bool:
    """True when no process has this pid (a zombie counts as gone: it runs nothing)."""
    return proc_start_ticks(pid) is None


def _record(local: LocalPlatform, name: str, pid: int, start_ticks: int | None) -> None:
    local.state_dir.mkdir(parents=True, exist_ok=True)
    local.state_file.write_text(
        json.dumps(
            {
                "services": {
                    name: {
                        "name": name,
                        "pid": pid,
                        "ports": {"main": 1},
                        "command": ["bao", "server", "-dev"],
                        "log_file": str(local.state_dir / "x.log"),
                        "start_ticks": start_ticks,
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
    saved = json.loads(local.state_file.read_text())["services"]["vault"]
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
    ticks = proc_start_ticks(finished.pid)
    finished.wait()
    _record(local, "vault", finished.pid, ticks)

    assert local.running() == {}
    assert json.loads(local.state_file.read_text())["services"] == {}  # cleaned up
    assert local.down() == []


def test_recycled_pid_is_not_trusted_nor_stopped(local: LocalPlatform, bystander: subprocess.Popen):
    """The recorded pid now belongs to another program (other start time)."""
    real_ticks = proc_start_ticks(bystander.pid)
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
    _record(local, "vault", bystander.pid, (proc_start_ticks(bystander.pid) or 0) + 1)

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

        with pytest.raises(PlatformError, match="vault exited during start; log tail") as err:
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
