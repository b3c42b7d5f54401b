"""Connection hygiene: uvicorn's HTTP protocol with header and body deadlines and a bound on
open connections.

uvicorn closes an idle keep-alive connection, but gives a client that sends its request a
byte at a time all the time it wants: a few hundred such clients hold every descriptor and
nobody else is served. Here a client gets ``header_timeout`` to send its headers (from the
moment it connects or starts its next request) and then ``body_timeout`` for its body.
At ``max_connections`` the connection that has waited longest without a request in
progress (slow headers, or idle) is closed to make room; when every connection has a
request in progress the new one is refused with 503. Each cut is counted by reason.

The limits come from the app (its lifespan state, :data:`LIMITS_KEY`), so a server
without them behaves as plain uvicorn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from model_serving.admission import Admission

LIMITS_KEY = "model_serving.connection_limits"
# set in a request's scope when the server cut its connection (the app then sees the
# client gone, and counts it under this reason rather than as a client disconnect)
CUT_OFF_KEY = "model_serving.cut_off"
PROTOCOL = "model_serving.connections:GuardedHttpProtocol"  # uvicorn's `http` setting

HEADER_TIMEOUT = "header_timeout"
BODY_TIMEOUT = "body_timeout"
EVICTED = "evicted"
REFUSED = "refused"

_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 16\r\nconnection: close\r\n\r\nrequest too slow"
)
_TOO_MANY_CONNECTIONS = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"retry-after: 1\r\ncontent-length: 20\r\nconnection: close\r\n\r\ntoo many connections"
)


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float
    body_timeout: float
    max_connections: int
    on_cut: Callable[[str], None] = field(default=lambda reason: None)
    # the scoring routes' admission: when it is full a request to them is answered by
    # `shed` here, before the app and its middleware run: the cheapest refusal there is,
    # and overload is when the cost of a refusal counts
    admission: Admission | None = None
    scoring_paths: frozenset[str] = frozenset()
    shed: Any = None  # an ASGI app
    # the connections without a request in progress, longest waiting first (a dict keeps
    # insertion order: finding the one to evict costs nothing however many are open)
    waiting: dict[Any, None] = field(default_factory=dict)


class GuardedHttpProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.limits: ConnectionLimits | None = self.app_state.get(LIMITS_KEY)
        self.deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.limits is None:
            return
        self.limits.waiting[self] = None
        self.arm(self.limits.header_timeout, HEADER_TIMEOUT)
        if len(self.connections) > self.limits.max_connections:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.limits is not None:
            self.limits.waiting.pop(self, None)
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.limits is not None and self.deadline is None:  # the next request on the connection
            self.arm(self.limits.header_timeout, HEADER_TIMEOUT)

    def on_headers_complete(self) -> None:
        if self.limits is not None:
            self.limits.waiting.pop(self, None)
        super().on_headers_complete()
        if self.limits is not None:
            self.arm(self.limits.body_timeout, BODY_TIMEOUT)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        limits = self.limits
        if (
            limits is not None
            and limits.admission is not None
            and limits.admission.full()
            and cycle.scope["path"] in limits.scoring_paths
        ):
            app = limits.shed
        super()._start_asgi_task(cycle, app)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.limits is not None and not self.transport.is_closing():
            self.limits.waiting[self] = None

    def arm(self, seconds: float, reason: str) -> None:
        self._disarm()
        self.deadline = self.loop.call_later(seconds, self.cut, reason)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _make_room(self) -> None:
        assert self.limits is not None
        oldest = next(iter(self.limits.waiting))
        self.cut(REFUSED if oldest is self else EVICTED, oldest)

    def cut(self, reason: str, connection: GuardedHttpProtocol | None = None) -> None:
        """Close ``connection`` (this one by default), counted under ``reason``."""
        if connection is not None and connection is not self:
            connection.cut(reason)
            return
        self._disarm()
        assert self.limits is not None
        waiting = self in self.limits.waiting
        self.limits.waiting.pop(self, None)
        if self.transport.is_closing():
            return
        self.limits.on_cut(reason)
        cycle = self.cycle
        if reason == REFUSED:
            self.transport.write(_TOO_MANY_CONNECTIONS)
        elif cycle is not None and not cycle.response_complete and not waiting:
            # the app is reading the body: it sees the client gone, and counts this reason
            cycle.scope[CUT_OFF_KEY] = reason  # type: ignore[literal-required]
        elif reason == HEADER_TIMEOUT:
            self.transport.write(_REQUEST_TIMEOUT)
        self.transport.close()
