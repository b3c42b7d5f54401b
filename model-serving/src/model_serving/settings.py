from __future__ import annotations

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline_contracts.registry import CHAMPION, DEFAULT_MODEL_NAME, ModelReference


class ServingSecret(BaseModel):
    """Keys of the model-serving Vault secret."""

    mlflow_tracking_uri: str = Field(description="MLflow tracking server URL")
    model_name: str = Field(default=DEFAULT_MODEL_NAME, description="registered model name")


class ServingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SERVING_", extra="ignore")

    model_alias: str = Field(default=CHAMPION, description="registry alias to serve")
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
            ModelReference.parse(value)  # raises ValueError naming the accepted forms
        return value or None

    def model_reference(self, model_name: str) -> ModelReference:
        if self.model_uri:
            return ModelReference.parse(self.model_uri)
        return ModelReference.at_alias(model_name, self.model_alias)
