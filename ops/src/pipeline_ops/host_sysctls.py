"""The host's own sysctl values, one record for the project's Docker engine and its local
cluster together (``$PR_ANOMALY_CACHE/host-sysctls.json``).

Both turn on forwarding. If each recorded its own "before", the second to start would
record the first one's change (``ip_forward=1``) and put that back when it stops, leaving
the host changed. So the first to start records what the machine had, the second reads that
record, and only the last to stop puts the values back and drops the record.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from pipeline_ops.base import commands
from pipeline_ops.paths import CACHE_DIR

# Every bridge of the project's engine and cluster has an address in 198.18.0.0/15.
PROJECT_PREFIXES = ("198.18.", "198.19.")


def record_file() -> Path:
    return CACHE_DIR / "host-sysctls.json"


def read_sysctl(name: str) -> str | None:
    try:
        return Path("/proc/sys", *name.split(".")).read_text().strip()
    except OSError:
        return None


def write_sysctl(name: str, value: str) -> None:
    Path("/proc/sys", *name.split(".")).write_text(value)


def _load() -> dict[str, str | None]:
    path = record_file()
    return json.loads(path.read_text()) if path.exists() else {}


def _save(record: dict[str, str | None]) -> None:
    path = record_file()
    if not record:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
    tmp.replace(path)


def originals(names: Iterable[str]) -> dict[str, str | None]:
    """The machine's own values of ``names``: those recorded when the engine or the cluster,
    whichever started first, had not changed them yet; for a name not recorded, its current
    value, now recorded. Call it before changing any of them."""
    record = _load()
    missing = [name for name in names if name not in record]
    for name in missing:
        record[name] = read_sysctl(name)
    if missing:
        _save(record)
    return {name: record[name] for name in names}


def other_project_bridges(own: str) -> list[str]:
    """Interfaces besides ``own`` with an address in the project's range: the other part
    (engine or cluster) still runs and needs the host as it set it."""
    out = commands.output(["ip", "-o", "-4", "addr"], what="list the host's addresses")
    found = []
    for line in out.splitlines():
        words = line.split()
        if len(words) > 3 and words[1] != own and words[3].startswith(PROJECT_PREFIXES):
            found.append(words[1])
    return sorted(set(found))


def restore(names: Iterable[str], own_bridge: str) -> list[str]:
    """Put ``names`` back to the machine's own values unless another part of the project
    still runs (then it does, when it stops). What was restored, for the log."""
    if other_project_bridges(own_bridge):
        return []
    record = _load()
    done = []
    for name in names:
        if name not in record:
            continue
        value = record.pop(name)
        if value is not None and read_sysctl(name) != value:
            write_sysctl(name, value)
            done.append(f"sysctl {name}={value}")
    _save(record)
    return done
