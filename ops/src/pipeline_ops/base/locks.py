"""One operator per state directory: ``held(directory, what)`` takes an exclusive lock on
``directory/.lock`` for the block. A second operator waits up to ``wait`` seconds, then is
refused with the holder's pid and command, so two ``make run`` (or ``make up``) never share
one platform or one pipeline state. The kernel drops the lock when its holder dies."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from pipeline_ops.base.errors import OpsError


class StateLocked(OpsError):
    pass


@contextlib.contextmanager
def held(directory: Path, what: str, wait: float = 0) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / ".lock"
    with path.open("a+") as handle:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "another process"
                    raise StateLocked(
                        f"{what}: {directory} is in use by {holder}; wait for it to finish, "
                        "or stop it, then try again"
                    ) from None
                time.sleep(0.2)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} ({_command(os.getpid())})\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


def _command(pid: int) -> str:
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    return " ".join(w.decode(errors="replace") for w in words if w)[:200]
