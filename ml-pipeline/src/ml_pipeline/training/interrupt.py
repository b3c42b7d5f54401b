"""An interrupted training ends its MLflow run as KILLED.

SIGTERM (a pod's deletion, `make run` stopping its stage on Ctrl-C) would end the process
with the run left RUNNING for ever; SIGINT would end it as FAILED, as if training had broken.
Either signal ends the active run as KILLED, then the process, with 128 + the signal's
number."""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator
from types import FrameType

import mlflow

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _end_run_as_killed(signum: int, _frame: FrameType | None) -> None:
    run = mlflow.active_run()
    if run is not None:
        log.warning(
            "%s: ending MLflow run %s as KILLED", signal.Signals(signum).name, run.info.run_id
        )
        mlflow.end_run(status="KILLED")
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def runs_killed_on_signal() -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM end the active MLflow run as KILLED."""
    previous = {sig: signal.signal(sig, _end_run_as_killed) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
