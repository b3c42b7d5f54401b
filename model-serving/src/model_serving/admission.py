"""Admission control: a bound on the scoring work in flight, past which a request is shed.

Scoring runs on the event loop, so every request admitted past the machine's capacity
only lengthens the queue: answers come late (after the client gave up: goodput collapses)
and the probes wait behind them. Past the bound a request is refused at once, before its
body is read, with 429 and ``Retry-After`` (a client or a balancer sends it elsewhere or
later), and counted as shed, not as a server error. The probes are never admitted or shed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

REQUESTS = "requests"  # the shed reasons: which bound was reached
RECORDS = "records"


class Overloaded(Exception):
    """A request refused by admission control: its 429."""

    def __init__(self, reason: str, limit: int, retry_after: int):
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(
            f"overloaded: {limit} {reason} already in flight; retry in {retry_after} s"
        )


class Admission:
    """Counts the scoring requests and records in flight (one process, one event loop: no
    lock needed) and refuses what would go past either bound."""

    def __init__(
        self,
        max_requests: int,
        max_records: int,
        retry_after_seconds: int = 1,
        on_shed: Callable[[str], None] = lambda reason: None,
    ):
        self.max_requests = max_requests
        self.max_records = max_records
        self.retry_after = retry_after_seconds
        self._on_shed = on_shed
        self.requests = 0
        self.records = 0

    @contextmanager
    def request(self) -> Iterator[None]:
        """A scoring request, before its body is read."""
        if self.requests >= self.max_requests:
            self._shed(REQUESTS, self.max_requests)
        self.requests += 1
        try:
            yield
        finally:
            self.requests -= 1

    @contextmanager
    def holding(self, records: int) -> Iterator[None]:
        """``records`` of an admitted request, until it is answered. A request alone is
        always admitted (its size is bounded by the batch limit)."""
        if self.records and self.records + records > self.max_records:
            self._shed(RECORDS, self.max_records)
        self.records += records
        try:
            yield
        finally:
            self.records -= records

    def full(self) -> bool:
        """Whether a new request would be shed whatever its size (the server's protocol
        then refuses it before reading its body)."""
        return self.requests >= self.max_requests or self.records >= self.max_records

    def _shed(self, reason: str, limit: int) -> None:
        self._on_shed(reason)
        raise Overloaded(reason, limit, self.retry_after)

    def refusal(self) -> Overloaded:
        """The refusal of a request shed before it reaches the app, counted as shed."""
        if self.requests >= self.max_requests:
            reason, limit = REQUESTS, self.max_requests
        else:
            reason, limit = RECORDS, self.max_records
        self._on_shed(reason)
        return Overloaded(reason, limit, self.retry_after)
