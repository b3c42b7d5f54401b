from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline_common.storage import S3SecretFields


class PreprocessSecret(S3SecretFields):
    """Keys of the spark-preprocess Vault secret."""

    mongo_uri: SecretStr = Field(description="MongoDB connection string")
    mongo_database: str = Field(description="database holding the pull requests")
    mongo_collection: str = Field(default="pull_requests", description="source collection")
    features_uri: str = Field(
        description="where feature data sets go: a path or s3://BUCKET/PREFIX"
    )


class PreprocessSettings(BaseSettings):
    """Where Spark runs; everything secret comes from Vault."""

    model_config = SettingsConfigDict(env_prefix="SPARK_", extra="ignore")

    master: str | None = Field(
        default=None,
        description="Spark master URL; unset: the one spark-submit gives (the cluster's "
        "SparkApplication), else local[*]",
    )
    jars_dir: str = Field(
        default=".tools/jars", description="folder of the connector jars (make setup fetches them)"
    )
    driver_memory: str = Field(default="1g", description="spark.driver.memory")
    shuffle_partitions: int = Field(
        default=4, ge=1, description="spark.sql.shuffle.partitions (about 2-3 x total cores)"
    )


class PreprocessJobSettings(BaseSettings):
    """What the job does: how it reads MongoDB and how much bad input it tolerates."""

    model_config = SettingsConfigDict(env_prefix="PREPROCESS_", extra="ignore")

    reader: Literal["partitioned", "connector"] = Field(
        default="partitioned",
        description="partitioned: the Python Data Source reader (parallel); connector: the "
        "MongoDB Spark connector (one partition against FerretDB)",
    )
    read_partitions: int = Field(
        default=4, ge=1, description="partitions the partitioned reader plans"
    )
    max_quarantined_share: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="fail the run when more than this share of the records is quarantined",
    )
    abandoned_after_minutes: float = Field(
        default=60,
        ge=0,
        description="a published run removes the folders of earlier runs that have neither a "
        "manifest nor a refusal record and started at least this long before it (runs killed "
        "mid-way; a run takes minutes, and the grace keeps a run started by hand meanwhile)",
    )
