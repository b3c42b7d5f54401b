"""One way for every stage entrypoint to start, report and fail."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from pipeline_common.logging import configure_logging
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
        # stdout carries only the summary; libraries that print (MLflow does) go to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            summary = job()
    except ConfigError as error:
        print(f"{stage}: configuration error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except VaultError as error:
        print(f"{stage}: Vault error: {error}", file=sys.stderr)
        return EXIT_VAULT
    except StageError as error:
        print(f"{stage}: {error}", file=sys.stderr)
        return error.exit_code
    if summary is not None:
        print(json.dumps(summary, default=str, indent=2))
    return EXIT_OK


class StageError(RuntimeError):
    """A failure the stage understands: the message says what happened and what to do."""

    exit_code = EXIT_FAILED
