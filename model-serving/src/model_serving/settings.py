from __future__ import annotations

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline_contracts.registry import CHAMPION, DEFAULT_MODEL_NAME, ModelReference

# descriptors kept for what is not a client connection: the listener, the model's files,
# MLflow and Vault connections, the metrics files of several workers
OPEN_FILES_RESERVE = 64


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
    # 0: a scoring call takes what the event loop has read by its next turn. A wait of 1 ms
    # (the earlier default) made the server sleep while work waited, and held a client
    # with few connections to one batch per connection per millisecond: it cost a third of
    # the benchmark's rate with batches (README: model-serving, the tail)
    batch_wait_ms: float = Field(
        default=0.0,
        ge=0,
        le=50,
        description="how long the first waiting request holds a scoring call open for others",
    )
    workers: int = Field(default=1, ge=1, le=64, description="uvicorn worker processes")
    graceful_shutdown_seconds: float = Field(
        default=20, ge=0, description="time in-flight requests get to finish on SIGTERM"
    )
    # Admission control (per worker process): one worker scores 250,000-370,000 records/s
    # on a core (README, the serving benchmark; 20,000-40,000 when these were sized); 4,000
    # records in flight is 11-16 ms of work, so an admitted request is answered well within
    # a client's patience and nothing waits longer than a few such batches. Past either
    # bound: 429 with Retry-After, counted as shed.
    # The kernel's queue before them is kept short (backlog) so that what they admit is
    # still fresh: under overload uvloop accepts about as fast as it scores.
    max_requests_in_flight: int = Field(
        default=64, ge=1, description="scoring requests one worker holds at once"
    )
    max_records_in_flight: int = Field(
        default=4000, ge=1, description="records of those requests one worker holds at once"
    )
    retry_after_seconds: int = Field(
        default=1, ge=1, le=60, description="Retry-After of a request shed by overload"
    )
    # Connection hygiene: a client gets this long to send its headers, then its body; an
    # idle keep-alive connection is closed after keep_alive_seconds. At max_connections
    # the connection that has waited longest without a request in progress is closed for
    # the new one; the limit stays below the open-file limit the CLI sets.
    header_timeout_seconds: float = Field(
        default=5, gt=0, le=300, description="time to send a request's headers"
    )
    body_timeout_seconds: float = Field(
        default=15, gt=0, le=600, description="time to send a request's body, once headers are in"
    )
    keep_alive_seconds: float = Field(
        default=5, gt=0, le=300, description="an idle keep-alive connection is closed after it"
    )
    backlog: int = Field(
        default=64,
        ge=1,
        description="connections the kernel queues before the server accepts them",
    )
    probe_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="port of the probes' own listener (/healthz, /readyz); unset: none",
    )
    liveness_stall_seconds: float = Field(
        default=30, gt=0, description="the probe port's /healthz fails after such a stall"
    )
    max_connections: int = Field(
        default=1000, ge=1, description="open client connections per worker process"
    )
    open_files_limit: int = Field(
        default=2048,
        ge=64,
        description="open-file (descriptor) limit the server sets for itself at start",
    )
    # The scheduler's latency hint (EEVDF, Linux 6.12+; unprivileged): a task that asks for
    # shorter slices is picked sooner when it wakes on a shared core, and gets no more CPU
    # than before. A request that wakes the server then waits less for a neighbour's turn
    # (README, model-serving: the tail). The kernel takes 100 to 100,000 µs.
    sched_slice_us: int = Field(
        default=100,
        ge=0,
        le=100_000,
        description="scheduler slice the server asks for at start, µs; 0: the kernel's default",
    )
    # Loading: MLflow's own retries (minutes by default) are bounded, and a failed load is
    # retried in the background with a backoff capped at load_retry_max_seconds, so the
    # instance is ready within seconds of MLflow coming back, without a restart.
    load_retry_initial_seconds: float = Field(
        default=0.5, gt=0, description="wait after the first failed load"
    )
    load_retry_max_seconds: float = Field(
        default=5, gt=0, le=300, description="longest wait between two load attempts"
    )
    mlflow_request_retries: int = Field(
        default=2, ge=0, le=10, description="MLflow client retries of one request"
    )
    mlflow_request_timeout_seconds: int = Field(
        default=10, ge=1, description="MLflow client timeout of one request"
    )

    @field_validator("model_uri")
    @classmethod
    def _registry_uri(cls, value: str | None) -> str | None:
        if value:
            ModelReference.parse(value)  # raises ValueError naming the accepted forms
        return value or None

    @model_validator(mode="after")
    def _limits_fit(self) -> ServingSettings:
        if self.max_records_in_flight < self.max_batch:
            raise ValueError(
                f"SERVING_MAX_RECORDS_IN_FLIGHT ({self.max_records_in_flight}) is below "
                f"SERVING_MAX_BATCH ({self.max_batch}): a full batch could never be admitted"
            )
        spare = OPEN_FILES_RESERVE
        if self.max_connections > self.open_files_limit - spare:
            raise ValueError(
                f"SERVING_MAX_CONNECTIONS ({self.max_connections}) must stay {spare} below "
                f"SERVING_OPEN_FILES_LIMIT ({self.open_files_limit}): the server needs "
                "descriptors for its listener, model files and MLflow connections"
            )
        return self

    def model_reference(self, model_name: str) -> ModelReference:
        if self.model_uri:
            return ModelReference.parse(self.model_uri)
        return ModelReference.at_alias(model_name, self.model_alias)
