"""Storage locations: a local directory by default, S3-compatible object storage when the
location is ``s3://BUCKET/PREFIX`` (DigitalOcean Spaces in production, a loopback S3 server
in tests). One URI scheme everywhere, so a stage never branches on where it writes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from pydantic import BaseModel, Field, SecretStr

if TYPE_CHECKING:
    import pyarrow.fs


class S3Config(BaseModel):
    """Connection to an S3-compatible store; read from the stage's Vault secret."""

    endpoint_url: str = Field(description="S3 endpoint, e.g. https://fra1.digitaloceanspaces.com")
    access_key_id: SecretStr = Field(description="S3 access key id")
    secret_access_key: SecretStr = Field(description="S3 secret access key")
    region: str = Field(default="us-east-1", description="S3 region")


class S3SecretFields(BaseModel):
    """The S3 keys of a stage's Vault secret that reads or writes ``s3://`` locations; all
    three set, or none (a local path needs none)."""

    s3_endpoint_url: str | None = Field(
        default=None, description="S3 endpoint (needed when features_uri is s3://)"
    )
    s3_access_key_id: SecretStr | None = Field(default=None, description="S3 access key id")
    s3_secret_access_key: SecretStr | None = Field(default=None, description="S3 secret key")
    s3_region: str = Field(default="us-east-1", description="S3 region")

    def s3(self) -> S3Config | None:
        if not (self.s3_endpoint_url and self.s3_access_key_id and self.s3_secret_access_key):
            return None
        return S3Config(
            endpoint_url=self.s3_endpoint_url,
            access_key_id=self.s3_access_key_id,
            secret_access_key=self.s3_secret_access_key,
            region=self.s3_region,
        )


@dataclass(frozen=True)
class StorageLocation:
    """Where a data set lives: ``scheme`` is ``file`` or ``s3``; ``path`` has no scheme."""

    scheme: str
    path: str

    @classmethod
    def parse(cls, uri: str) -> StorageLocation:
        parsed = urlparse(uri)
        if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
            # file://data/features would silently mean /features on host "data"
            raise ValueError(
                f"storage URI {uri!r} names a host; use file:///ABSOLUTE/PATH or a plain path"
            )
        if parsed.scheme in ("", "file"):
            local = parsed.path if parsed.scheme == "file" else uri
            return cls("file", str(Path(local).expanduser().resolve()))
        if parsed.scheme in ("s3", "s3a"):
            if not parsed.netloc:
                raise ValueError(f"storage URI {uri!r} names no bucket: use s3://BUCKET/PREFIX")
            return cls("s3", f"{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/"))
        raise ValueError(f"storage URI {uri!r}: scheme must be file:// or s3://")

    def child(self, *parts: str) -> StorageLocation:
        return StorageLocation(self.scheme, "/".join([self.path.rstrip("/"), *parts]))

    @property
    def uri(self) -> str:
        return f"{self.scheme}://{self.path}" if self.scheme == "s3" else self.path

    @property
    def spark_uri(self) -> str:
        """The same location as Spark's Hadoop filesystems name it."""
        return f"s3a://{self.path}" if self.scheme == "s3" else f"file://{self.path}"

    def filesystem(self, s3: S3Config | None = None) -> pyarrow.fs.FileSystem:
        import pyarrow.fs

        if self.scheme == "file":
            return pyarrow.fs.LocalFileSystem()
        if s3 is None:
            raise ValueError(f"{self.uri} is in S3 but no S3 connection is configured")
        endpoint = urlparse(s3.endpoint_url)
        return pyarrow.fs.S3FileSystem(
            access_key=s3.access_key_id.get_secret_value(),
            secret_key=s3.secret_access_key.get_secret_value(),
            endpoint_override=endpoint.netloc or s3.endpoint_url,
            scheme=endpoint.scheme or "https",
            region=s3.region,
            allow_bucket_creation=True,
        )
