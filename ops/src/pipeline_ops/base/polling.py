"""One way to wait: ``wait_until(what, probe, timeout)`` returns the probe's first truthy
value, or raises ``WaitTimeout`` naming what was waited for (and, if given, what was seen)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from pipeline_ops.base.errors import WaitTimeout

T = TypeVar("T")


def wait_until(
    what: str,
    probe: Callable[[], T | None],
    timeout: float,
    every: float = 2,
    *,
    seen: Callable[[], str] | None = None,
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = f"; last seen: {seen()}" if seen else ""
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(every)
