"""`ml-training`: train the autoencoder on published features and register it in MLflow."""

from __future__ import annotations

import argparse
import sys

from pipeline_common.cli import run_stage
from pipeline_common.settings import load_settings
from pipeline_common.vault import load_stage_secret


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ml-training",
        description="Train the pull-request autoencoder on a published feature data set, log "
        "the run to MLflow and register the model with alias 'challenger'. Connections come "
        "from the stage's Vault secret (VAULT_* variables); training knobs from TRAINING_*.",
    )
    parser.add_argument("--features-run-id", help="feature data set to train on (default: LATEST)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)

    def job() -> dict:
        from ml_pipeline.training.interrupt import runs_killed_on_signal
        from ml_pipeline.training.job import TrainingJob
        from ml_pipeline.training.settings import TrainingSecret, TrainingSettings

        settings = load_settings(TrainingSettings)
        secret = load_stage_secret(TrainingSecret)
        with runs_killed_on_signal():
            return TrainingJob(secret, settings, args.features_run_id).run()

    return run_stage("ml-training", job, log_level=args.log_level)


if __name__ == "__main__":
    sys.exit(main())
