from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class PreprocessSecret(BaseModel):
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

    master: str = Field(default="local[*]", description="Spark master URL")
    jars_dir: str = Field(
        default=".tools/jars", description="folder of the connector jars (make setup fetches them)"
    )
    driver_memory: str = Field(default="1g", description="spark.driver.memory")
