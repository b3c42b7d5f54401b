from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline_common.storage import S3SecretFields
from pipeline_contracts.registry import DEFAULT_MODEL_NAME


class TrainingSecret(S3SecretFields):
    """Keys of the ml-training Vault secret."""

    mlflow_tracking_uri: str = Field(description="MLflow tracking server URL")
    features_uri: str = Field(
        description="root of the published feature data sets: a path or s3://BUCKET/PREFIX"
    )
    model_name: str = Field(default=DEFAULT_MODEL_NAME, description="registered model name")


class TrainingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRAINING_", extra="ignore")

    seed: int = Field(default=42, description="random seed (model, batches, injection, baseline)")
    max_epochs: int = Field(default=40, ge=1, description="upper bound on epochs")
    batch_size: int = Field(default=256, ge=8, description="mini-batch size")
    learning_rate: float = Field(default=1e-2, gt=0, description="Adam learning rate")
    patience: int = Field(default=5, ge=1, description="epochs without validation gain")
    hidden: int = Field(default=8, ge=1, description="autoencoder hidden layer width")
    # 2, not 3: in the rolling-origin backtest a tighter bottleneck reconstructs ordinary
    # pull requests as well and anomalies worse (ROC AUC 0.9938 against 0.9608 in the newest
    # fold, ahead of the IsolationForest in every fold; see README, ml-training).
    bottleneck: int = Field(default=2, ge=1, description="autoencoder bottleneck width")
    threads: int = Field(
        default=1, ge=1, description="torch intra-op threads (the network is too small to share)"
    )
    baseline_trees: int = Field(default=200, ge=1, description="IsolationForest baseline: trees")
    backtest_folds: int = Field(
        default=3,
        ge=1,
        le=4,
        description="rolling-origin folds: each trains on the past and tests the next 15 % of "
        "the rows by time; the newest is the registered model's test split",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="'auto': a CUDA GPU when present, else the CPU"
    )
    threshold_quantile: float = Field(
        default=0.99, gt=0.5, lt=1, description="validation error quantile used as threshold"
    )
    injected_fraction: float = Field(
        default=0.10, gt=0, le=1, description="injected anomalies per real test row"
    )
    weak_labels_dir: str = Field(
        default="data/samples", description="directory of *.reverts.json weak labels (optional)"
    )
    min_roc_auc: float = Field(
        default=0.80, ge=0, le=1, description="gate: minimum ROC AUC on injected anomalies"
    )
    champion_tolerance: float = Field(
        default=0.02, ge=0, description="gate: largest allowed ROC AUC drop below the champion"
    )
    min_split_rows: int = Field(
        default=50,
        ge=1,
        description="gate: fewest rows, and distinct feature rows, in each of train, "
        "validation and test",
    )
    max_threshold: float = Field(
        default=25.0,
        gt=0,
        description="gate: largest sane threshold (mean squared error over standardised "
        "features; about 1 is the error of predicting the training mean)",
    )
    experiment: str = Field(default=DEFAULT_MODEL_NAME, description="MLflow experiment name")
    repositories: str = Field(
        default="",
        description="train on these repositories' pull requests only (owner/name, "
        "comma-separated; empty: all of them): an experiment's setting. The model is still "
        "registered under the stage secret's model name when its own gate passes",
    )

    @property
    def repository_list(self) -> tuple[str, ...]:
        return tuple(r.strip() for r in self.repositories.split(",") if r.strip())
