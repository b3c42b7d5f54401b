"""The probes' own listener: /healthz and /readyz answered from a thread on a port of their
own, so they never wait behind scoring.

Under overload the scoring port's queue of connections is full by design (the backlog is
kept short so a queued request is still fresh when it is read): a probe sent there would
wait its turn, and a liveness probe that times out restarts a pod in the middle of the
overload. Here a probe is answered in milliseconds whatever the load.

/healthz fails only when restarting helps: when the event loop has not run for
``stall_seconds`` (a wedged process). A model that cannot load (MLflow away) keeps it 200:
the loader retries by itself, and a restart would only start over.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Heartbeat:
    """When the event loop last ran a callback (it beats every ``interval`` seconds)."""

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self.last = time.monotonic()

    def start(self, loop: Any) -> None:
        def beat() -> None:
            self.last = time.monotonic()
            self._handle = loop.call_later(self.interval, beat)

        beat()

    def stop(self) -> None:
        self._handle.cancel()

    def age(self) -> float:
        return time.monotonic() - self.last


class _ProbeServer(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:
        # several worker processes share the port, as they share the scoring one
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class ProbeListener:
    """Serves ``probes`` (path -> (status, document)) on ``host``:``port`` from a thread."""

    def __init__(self, host: str, port: int, probes: dict[str, Callable[[], tuple[int, dict]]]):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                probe = probes.get(self.path.split("?")[0])
                status, document = probe() if probe else (404, {"detail": "Not Found"})
                body = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # a line per probe would drown the log

        self.server = _ProbeServer((host, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="probes", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
