"""One way to run a command to its end: ``run(argv, what=...)``.

A failure raises ``CommandError`` whose message names what the command was for, the command
itself and the tail of its stderr (``errors.TAIL_CHARS``), with every value given as ``secrets``
replaced by ``***`` in both. A command that outlives its ``timeout`` is killed and named.

With ``own_group=True`` the command runs in a process group of its own (a terminal's Ctrl-C
reaches only ops), and if ops is interrupted or the command overruns, its whole group is
stopped as a server is (``processes.stop``: SIGTERM, then SIGKILL): it may end cleanly (an
MLflow run ended as KILLED) and nothing it started survives it.

The runner is a seam: ``using(fake)`` puts another ``CommandRunner`` in its place, so that
logic built on commands (kubectl calls, ordering, error messages) is tested without the
programs it would run.
"""

from __future__ import annotations

import contextlib
import shlex
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline_ops.base.errors import CommandError, tail

Argv = Sequence[str | Path]


def redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def shown(argv: Argv, secrets: Sequence[str] = ()) -> str:
    """The command as a reader would type it: the program's name, then its arguments."""
    words = [Path(str(argv[0])).name, *map(str, argv[1:])]
    return redact(shlex.join(words), secrets)


class CommandRunner:
    """Runs a command to completion (subprocess.run); tests give a fake of this class."""

    def run(
        self,
        argv: Argv,
        *,
        stdin: str | bytes | None,
        env: Mapping[str, str] | None,
        cwd: Path | None,
        timeout: float | None,
        text: bool,
        capture_stdout: bool,
        capture_stderr: bool,
        own_group: bool = False,
    ) -> subprocess.CompletedProcess[Any]:
        if own_group:
            return _in_own_group(
                argv, stdin=stdin, env=env, cwd=cwd, timeout=timeout, text=text,
                capture_stdout=capture_stdout, capture_stderr=capture_stderr,
            )  # fmt: skip
        return subprocess.run(
            [str(a) for a in argv], input=stdin, env=dict(env) if env is not None else None,
            cwd=cwd, timeout=timeout, text=text,
            stdout=subprocess.PIPE if capture_stdout else None,
            stderr=subprocess.PIPE if capture_stderr else None,
            stdin=None if stdin is not None else subprocess.DEVNULL,
        )  # fmt: skip


def _in_own_group(
    argv: Argv,
    *,
    stdin: str | bytes | None,
    env: Mapping[str, str] | None,
    cwd: Path | None,
    timeout: float | None,
    text: bool,
    capture_stdout: bool,
    capture_stderr: bool,
) -> subprocess.CompletedProcess[Any]:
    from pipeline_ops.base import processes  # it imports this module

    command = [str(a) for a in argv]
    with subprocess.Popen(
        command, env=dict(env) if env is not None else None, cwd=cwd, text=text,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE if capture_stdout else None,
        stderr=subprocess.PIPE if capture_stderr else None, start_new_session=True,
    ) as process:  # fmt: skip
        try:
            stdout, stderr = process.communicate(stdin, timeout=timeout)
        except BaseException:  # interrupted (Ctrl-C, SIGTERM) or overrun: its group goes
            ticks = processes.start_ticks(process.pid)
            processes.stop(processes.ProcessRecord(Path(command[0]).name, process.pid, ticks,
                                                   command, log_file=""))  # fmt: skip
            raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


_runner: CommandRunner = CommandRunner()


@contextlib.contextmanager
def using(runner: CommandRunner) -> Iterator[CommandRunner]:
    """Every ``run`` inside the block goes to ``runner`` (a fake, in unit tests)."""
    global _runner
    previous, _runner = _runner, runner
    try:
        yield runner
    finally:
        _runner = previous


def run(
    argv: Argv,
    *,
    what: str = "",
    stdin: str | bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = 600,
    check: bool = True,
    text: bool = True,
    capture_stdout: bool = True,
    capture_stderr: bool = True,
    secrets: Sequence[str] = (),
    own_group: bool = False,
) -> subprocess.CompletedProcess[Any]:
    """Run ``argv`` to its end; its result. ``what`` says what it is for (the error's first
    words); ``check=False`` returns a failed result instead of raising. ``env`` is the
    whole environment of the command (None: this process's); ``own_group``: see above."""
    label = what or Path(str(argv[0])).name
    group = {"own_group": True} if own_group else {}  # a fake runner need not know it
    try:
        result = _runner.run(
            argv, stdin=stdin, env=env, cwd=cwd, timeout=timeout, text=text,
            capture_stdout=capture_stdout, capture_stderr=capture_stderr, **group,
        )  # fmt: skip
    except subprocess.TimeoutExpired as error:
        raise CommandError(
            f"{label}: `{shown(argv, secrets)}` timed out after {timeout:.0f}s", None,
            redact(tail(error.stderr), secrets),
        ) from error  # fmt: skip
    except FileNotFoundError as error:
        raise CommandError(
            f"{label}: {Path(str(argv[0])).name} is not installed ({error.filename}); "
            "`make setup` (or `make cluster-packages`) installs what the project needs"
        ) from error
    if check and result.returncode != 0:
        stderr = redact(tail(result.stderr), secrets)
        where = f"; end of its stderr:\n{stderr}" if stderr else ""
        raise CommandError(
            f"{label}: `{shown(argv, secrets)}` exited {result.returncode}{where}",
            result.returncode, stderr,
        )  # fmt: skip
    return result


def output(argv: Argv, **kwargs: Any) -> str:
    """``run(...)``'s stdout, as text."""
    return str(run(argv, **kwargs).stdout)
