"""One way for every stage entrypoint to start, report and fail."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
from collections.abc import Callable
from typing import IO, Any

from pipeline_common.logging import configure_logging
from pipeline_common.redaction import redact_credentials
from pipeline_common.settings import ConfigError
from pipeline_common.vault import VaultError

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2  # a setting or secret is missing or wrong: fix the configuration
EXIT_VAULT = 3  # Vault unreachable, login refused, or access denied


def run_stage(
    stage: str, job: Callable[[], dict[str, Any] | None], *, log_level: str = "INFO"
) -> int:
    """Run ``job`` and print its summary (if it returns one) as JSON on stdout. Known
    failures end with one clear line and a distinct exit code rather than a traceback."""
    configure_logging(stage, log_level)
    try:
        # stdout carries only the summary; libraries that print (MLflow does, a "View run
        # at" line with the tracking URI) go to stderr, credentials redacted.
        with contextlib.redirect_stdout(RedactingStream(sys.stderr)):
            summary = job()
    except ConfigError as error:
        print(redact_credentials(f"{stage}: configuration error: {error}"), file=sys.stderr)
        return EXIT_CONFIG
    except VaultError as error:
        print(redact_credentials(f"{stage}: Vault error: {error}"), file=sys.stderr)
        return EXIT_VAULT
    except StageError as error:
        print(redact_credentials(f"{stage}: {error}"), file=sys.stderr)
        return error.exit_code
    if summary is not None:
        print(redact_credentials(json.dumps(summary, default=str, indent=2)))
    return EXIT_OK


class RedactingStream(io.TextIOBase):
    """Writes to ``stream`` with the credentials of any URI redacted (a library writes a
    line at a time, so a URI is not split across writes)."""

    def __init__(self, stream: IO[str]):
        super().__init__()
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(redact_credentials(text))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()


class StageError(RuntimeError):
    """A failure the stage understands: the message says what happened and what to do."""

    exit_code = EXIT_FAILED
