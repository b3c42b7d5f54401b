"""What the kernel says of processes, for the tests that check what ops started and stopped:
a process group's live members, a process's children, its environment and command line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path


def _stats() -> Iterator[tuple[int, list[str]]]:
    """(pid, the fields of /proc/PID/stat after the command name) of every process."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        yield int(stat.parent.name), fields


def group_members(group: int) -> list[int]:
    """The live processes of process group ``group`` (zombies left out)."""
    return [pid for pid, fields in _stats() if fields[0] != "Z" and int(fields[2]) == group]


def children(pid: int) -> list[int]:
    return [child for child, fields in _stats() if int(fields[1]) == pid]


def environ(pid: int) -> dict[str, str]:
    """The environment process ``pid`` was started with."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(e.decode(errors="replace").split("=", 1) for e in raw.split(b"\0") if b"=" in e)


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
