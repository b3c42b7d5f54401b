"""`model-serving`: serve the registered model over HTTP."""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import platform
import resource
import signal
import struct
import sys
import tempfile

from pipeline_common.cli import run_stage
from pipeline_common.logging import configure_logging
from pipeline_common.settings import ConfigError, load_settings
from pipeline_common.vault import load_stage_secret

STAGE = "model-serving"
# Set for worker processes (spawned by uvicorn when --workers > 1) to configure logging.
_WORKER_LOG_LEVEL = "MODEL_SERVING_WORKER_LOG_LEVEL"
_WORKER_HOST = "MODEL_SERVING_WORKER_HOST"  # where their probe listener binds


def build_app(host: str | None = None):
    """The app of one server process: settings, Vault secret, model loader (runs per worker)."""
    from model_serving.app import create_app
    from model_serving.model_source import load_model
    from model_serving.settings import ServingSecret, ServingSettings

    if os.environ.get(_WORKER_LOG_LEVEL):
        configure_logging(STAGE, os.environ[_WORKER_LOG_LEVEL])
    settings = load_settings(ServingSettings)
    secret = load_stage_secret(ServingSecret)
    reference = settings.model_reference(secret.model_name)
    # One attempt to load is a few seconds, not MLflow's minutes of retries: the app
    # retries the whole load itself, and /readyz says why meanwhile.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(settings.mlflow_request_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault(
        "MLFLOW_HTTP_REQUEST_TIMEOUT", str(settings.mlflow_request_timeout_seconds)
    )
    return create_app(
        lambda: load_model(secret.mlflow_tracking_uri, reference),
        settings,
        load_before_serving=settings.workers > 1,
        probe_host=host or os.environ.get(_WORKER_HOST),
    )


def set_open_files_limit(wanted: int) -> None:
    """Raise (or lower) this process's soft descriptor limit to ``wanted``: the connection
    limit is sized below it, whatever limit the container runtime gave."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and wanted > hard:
        raise ConfigError(
            f"SERVING_OPEN_FILES_LIMIT is {wanted}, above this process's hard limit {hard}: "
            "lower it (and SERVING_MAX_CONNECTIONS) or raise the container's nofile limit"
        )
    if soft != wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


# sched_getattr/sched_setattr by architecture; struct sched_attr as of Linux 4.13 (56 bytes)
_SCHED_ATTR_CALLS = {"x86_64": (315, 314), "aarch64": (275, 274)}
_SCHED_ATTR = struct.Struct("=IIQiIQQQII")
_SCHED_RUNTIME = 5  # the field a fair task's slice is asked in (ns)


def request_scheduler_slice(slice_us: int) -> None:
    """Ask the kernel for ``slice_us`` slices for this process (EEVDF's latency hint);
    threads and worker processes started afterwards inherit it. Policy and nice value stay
    as they are. A kernel, architecture or seccomp profile that refuses leaves the default
    slice, and the log says so: latency, not correctness, depends on it."""
    calls = _SCHED_ATTR_CALLS.get(platform.machine())
    if not slice_us or sys.platform != "linux" or calls is None:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    buffer = ctypes.create_string_buffer(_SCHED_ATTR.size)
    get, set_ = calls
    if libc.syscall(get, 0, buffer, _SCHED_ATTR.size, 0) == 0:
        attr = list(_SCHED_ATTR.unpack(buffer.raw))
        attr[0], attr[_SCHED_RUNTIME] = _SCHED_ATTR.size, slice_us * 1000
        buffer = ctypes.create_string_buffer(_SCHED_ATTR.pack(*attr))
        if libc.syscall(set_, 0, buffer, 0) == 0:
            return
    logging.getLogger(STAGE).warning(
        "the kernel refused a %d µs scheduler slice (%s): serving with its default slice; "
        "SERVING_SCHED_SLICE_US=0 stops asking",
        slice_us,
        os.strerror(ctypes.get_errno()),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=STAGE,
        description="Serve pull-request anomaly scores. The MLflow connection comes from the "
        "stage's Vault secret (VAULT_* variables); SERVING_MODEL_ALIAS or SERVING_MODEL_URI "
        "picks the model; SERVING_WORKERS, SERVING_MAX_BATCH, SERVING_MAX_BODY_BYTES, "
        "SERVING_GRACEFUL_SHUTDOWN_SECONDS, the admission bounds (SERVING_MAX_*_IN_FLIGHT), "
        "the connection limits and timeouts (README: model-serving) tune the server.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--workers", type=int, default=None, help="server processes (default SERVING_WORKERS)"
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    # One worker is one core: a BLAS thread pool per worker would fight the other workers.
    # Set before numpy loads (here and in every worker process, which inherit it).
    for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")

    def serve() -> None:
        import uvicorn

        from model_serving.connections import PROTOCOL
        from model_serving.settings import ServingSecret, ServingSettings

        overrides = {"workers": args.workers} if args.workers else {}
        settings = load_settings(ServingSettings, **overrides)
        set_open_files_limit(settings.open_files_limit)
        request_scheduler_slice(settings.sched_slice_us)
        common = {
            "host": args.host,
            "port": args.port,
            "log_config": None,
            "access_log": False,  # /metrics counts every request; a log line each costs ~10%
            # nothing reads the client's address, and reading X-Forwarded-For cost ~2 %
            "proxy_headers": False,
            "timeout_graceful_shutdown": settings.graceful_shutdown_seconds,
            "timeout_keep_alive": settings.keep_alive_seconds,
            "http": PROTOCOL,  # header and body deadlines, a connection limit
            "backlog": settings.backlog,
        }
        if settings.workers == 1:
            app = build_app(args.host)
            # uvicorn drains the requests in flight on SIGTERM, then re-raises the signal to
            # the handler it found: a no-op one makes that asked-for stop exit 0, as the
            # multi-worker supervisor does.
            signal.signal(signal.SIGTERM, lambda *_: None)
            uvicorn.run(app, **common)
            return
        # Fail here, with the stage's exit codes, rather than in every worker.
        load_stage_secret(ServingSecret)
        os.environ.setdefault("SERVING_WORKERS", str(settings.workers))
        os.environ.setdefault(
            "PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="model-serving-metrics-")
        )
        os.environ[_WORKER_LOG_LEVEL] = args.log_level
        os.environ[_WORKER_HOST] = args.host
        uvicorn.run("model_serving.cli:build_app", factory=True, workers=settings.workers, **common)

    return run_stage(STAGE, serve, log_level=args.log_level)


if __name__ == "__main__":
    sys.exit(main())
