"""`model-serving`: serve the registered model over HTTP."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile

from pipeline_common.cli import run_stage
from pipeline_common.logging import configure_logging
from pipeline_common.settings import load_settings
from pipeline_common.vault import load_stage_secret

STAGE = "model-serving"
# Set for worker processes (spawned by uvicorn when --workers > 1) to configure logging.
_WORKER_LOG_LEVEL = "MODEL_SERVING_WORKER_LOG_LEVEL"


def build_app():
    """The app of one server process: settings, Vault secret, model loader (runs per worker)."""
    from model_serving.app import create_app
    from model_serving.model_source import load_model
    from model_serving.settings import ServingSecret, ServingSettings

    if os.environ.get(_WORKER_LOG_LEVEL):
        configure_logging(STAGE, os.environ[_WORKER_LOG_LEVEL])
    settings = load_settings(ServingSettings)
    secret = load_stage_secret(ServingSecret)
    reference = settings.model_reference(secret.model_name)
    return create_app(
        lambda: load_model(secret.mlflow_tracking_uri, reference),
        max_batch=settings.max_batch,
        max_body_bytes=settings.max_body_bytes,
        batch_wait_seconds=settings.batch_wait_ms / 1000,
        load_before_serving=settings.workers > 1,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=STAGE,
        description="Serve pull-request anomaly scores. The MLflow connection comes from the "
        "stage's Vault secret (VAULT_* variables); SERVING_MODEL_ALIAS or SERVING_MODEL_URI "
        "picks the model; SERVING_WORKERS, SERVING_MAX_BATCH, SERVING_MAX_BODY_BYTES, "
        "SERVING_GRACEFUL_SHUTDOWN_SECONDS tune the server.",
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

        from model_serving.settings import ServingSecret, ServingSettings

        overrides = {"workers": args.workers} if args.workers else {}
        settings = load_settings(ServingSettings, **overrides)
        common = {
            "host": args.host,
            "port": args.port,
            "log_config": None,
            "access_log": False,  # /metrics counts every request; a log line each costs ~10%
            "timeout_graceful_shutdown": settings.graceful_shutdown_seconds,
        }
        if settings.workers == 1:
            app = build_app()
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
        uvicorn.run("model_serving.cli:build_app", factory=True, workers=settings.workers, **common)

    return run_stage(STAGE, serve, log_level=args.log_level)


if __name__ == "__main__":
    sys.exit(main())
