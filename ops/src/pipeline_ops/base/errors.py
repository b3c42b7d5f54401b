"""The one base of every error ops raises, so that callers catch one type, never re-wrap."""

from __future__ import annotations

TAIL_CHARS = 2000


def tail(text: str | bytes | None, chars: int = TAIL_CHARS) -> str:
    """The end of a command's output or a log, as much as an error message should carry."""
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    text = text.strip()
    return text if len(text) <= chars else "…" + text[-chars:]


class OpsError(RuntimeError):
    """Something ops could not do; the message says what, and what to do about it."""


class CommandError(OpsError):
    """A command failed or timed out (commands.run)."""

    def __init__(self, message: str, returncode: int | None = None, stderr: str = ""):
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


class WaitTimeout(OpsError):
    """What was waited for did not happen in time (polling.wait_until)."""


class ProcessExited(OpsError):
    """A supervised process exited while it was being waited on (processes.wait_healthy)."""
