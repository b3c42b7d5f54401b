"""`model-serving`: serve the registered model over HTTP."""

from __future__ import annotations

import argparse
import sys

from pipeline_common.cli import run_stage
from pipeline_common.settings import load_settings
from pipeline_common.vault import load_stage_secret


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="model-serving",
        description="Serve pull-request anomaly scores. The MLflow connection comes from the "
        "stage's Vault secret (VAULT_* variables); SERVING_MODEL_ALIAS picks the model.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)

    def serve() -> None:
        import uvicorn

        from model_serving.app import create_app
        from model_serving.model_source import load_registered_model
        from model_serving.settings import ServingSecret, ServingSettings

        settings = load_settings(ServingSettings)
        secret = load_stage_secret(ServingSecret)
        app = create_app(
            lambda: load_registered_model(
                secret.mlflow_tracking_uri, secret.model_name, settings.model_alias
            ),
            max_batch=settings.max_batch,
        )
        uvicorn.run(
            app, host=args.host, port=args.port, log_config=None, timeout_graceful_shutdown=20
        )

    return run_stage("model-serving", serve, log_level=args.log_level)


if __name__ == "__main__":
    sys.exit(main())
