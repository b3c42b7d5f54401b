from __future__ import annotations

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model_serving.model_source import parse_model_uri


class ServingSecret(BaseModel):
    """Keys of the model-serving Vault secret."""

    mlflow_tracking_uri: str = Field(description="MLflow tracking server URL")
    model_name: str = Field(default="pr-anomaly", description="registered model name")


class ServingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SERVING_", extra="ignore")

    model_alias: str = Field(default="champion", description="registry alias to serve")
    model_uri: str | None = Field(
        default=None,
        description="models:/<name>@<alias> or models:/<name>/<version>; overrides the alias",
    )
    max_batch: int = Field(default=1000, ge=1, description="most records in one request")
    max_body_bytes: int = Field(
        default=32 * 1024 * 1024, ge=1024, description="largest request body accepted"
    )
    batch_wait_ms: float = Field(
        default=1.0,
        ge=0,
        le=50,
        description="how long the first waiting request holds a scoring call open for others",
    )
    workers: int = Field(default=1, ge=1, le=64, description="uvicorn worker processes")
    graceful_shutdown_seconds: float = Field(
        default=20, ge=0, description="time in-flight requests get to finish on SIGTERM"
    )

    @field_validator("model_uri")
    @classmethod
    def _registry_uri(cls, value: str | None) -> str | None:
        if value:
            parse_model_uri(value)  # raises ValueError naming the accepted forms
        return value or None

    def registry_uri(self, model_name: str) -> str:
        return self.model_uri or f"models:/{model_name}@{self.model_alias}"
