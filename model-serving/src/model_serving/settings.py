from __future__ import annotations

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServingSecret(BaseModel):
    """Keys of the model-serving Vault secret."""

    mlflow_tracking_uri: str = Field(description="MLflow tracking server URL")
    model_name: str = Field(default="pr-anomaly", description="registered model name")


class ServingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SERVING_", extra="ignore")

    model_alias: str = Field(default="champion", description="registry alias to serve")
    max_batch: int = Field(default=1000, ge=1, description="most records in one request")
