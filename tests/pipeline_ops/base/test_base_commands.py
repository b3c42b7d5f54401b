"""The command runner: what a failing command tells its reader, and the fake seam."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline_ops.base import commands
from pipeline_ops.base.errors import TAIL_CHARS, CommandError


def test_a_failing_command_is_named_with_its_stderr_tail_and_no_secret():
    secret = "s3cr3t-value-123"
    script = f"import sys; sys.stderr.write('x' * 5000 + ' token={secret} bad'); sys.exit(3)"
    with pytest.raises(CommandError) as caught:
        commands.run([sys.executable, "-c", script, secret], what="seeding", secrets=[secret])
    message = str(caught.value)
    assert message.startswith("seeding: `python")
    assert "exited 3" in message
    assert message.endswith("token=*** bad")
    assert secret not in message
    assert len(message) < TAIL_CHARS + 400
    assert caught.value.returncode == 3


def test_a_command_that_overruns_is_killed_and_named():
    with pytest.raises(CommandError, match=r"waiting: `python -c .*` timed out after 1s"):
        commands.run([sys.executable, "-c", "import time; time.sleep(30)"], what="waiting",
                     timeout=1)  # fmt: skip


def test_a_missing_program_says_how_to_install_it():
    with pytest.raises(CommandError, match=r"no-such-tool-here is not installed.*make setup"):
        commands.run(["no-such-tool-here", "--version"])


def test_check_false_returns_the_failure_instead_of_raising():
    result = commands.run([sys.executable, "-c", "raise SystemExit(4)"], check=False)
    assert result.returncode == 4


class Recording(commands.CommandRunner):
    def __init__(self):
        self.calls: list[list[str]] = []

    def run(self, argv, **kwargs):
        self.calls.append([str(a) for a in argv])
        return subprocess.CompletedProcess(argv, 0, stdout="fake out", stderr="")


def test_a_fake_runner_takes_every_command_inside_its_block():
    with commands.using(Recording()) as fake:
        assert commands.output(["kubectl", "get", "pods"]) == "fake out"
    assert fake.calls == [["kubectl", "get", "pods"]]
    assert commands.output([sys.executable, "-c", "print('real')"]).strip() == "real"
