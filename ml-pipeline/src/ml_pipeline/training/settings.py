from __future__ import annotations

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class TrainingSecret(BaseModel):
    """Keys of the ml-training Vault secret."""

    mlflow_tracking_uri: str = Field(description="MLflow tracking server URL")
    features_uri: str = Field(description="root of the published feature data sets")
    model_name: str = Field(default="pr-anomaly", description="registered model name")


class TrainingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRAINING_", extra="ignore")

    seed: int = Field(default=42, description="random seed")
    max_epochs: int = Field(default=40, ge=1, description="upper bound on epochs")
    batch_size: int = Field(default=256, ge=8, description="mini-batch size")
    learning_rate: float = Field(default=1e-2, gt=0, description="Adam learning rate")
    patience: int = Field(default=5, ge=1, description="epochs without validation gain")
    threshold_quantile: float = Field(
        default=0.99, gt=0.5, lt=1, description="validation error quantile used as threshold"
    )
    experiment: str = Field(default="pr-anomaly", description="MLflow experiment name")
