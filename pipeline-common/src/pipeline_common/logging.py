"""Logging: readable on a terminal, one JSON object a line everywhere else (pods, CI)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO

from pipeline_common.redaction import redact_credentials

# Attributes every LogRecord has; anything else was passed through ``extra=``.
_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def __init__(self, stage: str):
        super().__init__()
        self.stage = stage

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "stage": self.stage,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(
            {
                k: v
                for k, v in vars(record).items()
                if k not in _STANDARD_ATTRS and not k.startswith("_")
            }
        )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class RedactingFormatter(logging.Formatter):
    """Another formatter's lines with the credentials of any URI in them redacted: a
    library's message or an exception may quote a tracking URI read from Vault."""

    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return redact_credentials(self.inner.format(record))


def configure_logging(
    stage: str,
    level: str | int = "INFO",
    *,
    stream: IO[str] | None = None,
    json_logs: bool | None = None,
) -> None:
    """Route the root logger to ``stream`` (stderr): JSON unless it is a terminal."""
    stream = stream or sys.stderr
    if json_logs is None:
        json_logs = not stream.isatty()
    if json_logs:
        handler: logging.Handler = logging.StreamHandler(stream)
        handler.setFormatter(RedactingFormatter(JsonFormatter(stage)))
    else:
        from rich.console import Console
        from rich.logging import RichHandler

        handler = RichHandler(console=Console(file=stream), show_path=False, rich_tracebacks=False)
        handler.setFormatter(RedactingFormatter(logging.Formatter(f"[{stage}] %(message)s")))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Third-party chatter that would drown a stage's own messages.
    for noisy in ("urllib3", "httpx", "httpcore", "py4j", "pymongo", "botocore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
