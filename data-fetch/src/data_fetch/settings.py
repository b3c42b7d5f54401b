"""data-fetch configuration: flags and environment for the run, Vault for connections."""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr


class FetchSecret(BaseModel):
    """Keys of the data-fetch Vault secret."""

    mongo_uri: SecretStr = Field(description="MongoDB connection string")
    mongo_database: str = Field(description="database holding the pull requests")
    mongo_collection: str = Field(
        default="pull_requests", description="collection of normalised pull requests"
    )
    github_token: SecretStr | None = Field(
        default=None, description="GitHub token; without it the replay source is used"
    )
