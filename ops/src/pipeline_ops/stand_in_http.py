"""One lifecycle for the HTTP servers of ours that stand in for a service outside our reach
(GitHub's APIs): serve from a thread (tests, ``with``) or in the foreground (a CLI), stop and
close the socket."""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer
from typing import Self


class StandInServer:
    """The lifecycle; a subclass sets ``_http`` (and ``poll_seconds``, how often a serving
    thread looks for ``stop()``) in its ``__init__``."""

    _http: ThreadingHTTPServer
    poll_seconds: float = 0.5  # the standard library's default
    _thread: threading.Thread | None = None

    def start(self) -> Self:
        self._thread = threading.Thread(
            target=self._http.serve_forever, args=(self.poll_seconds,), daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted (the CLI), then close the socket."""
        try:
            self._http.serve_forever()
        finally:
            self._http.server_close()

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
