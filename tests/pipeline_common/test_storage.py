"""Storage locations: local paths and s3:// URIs, and real Parquet I/O against a loopback
S3 server (SeaweedFS) that checks request signatures."""

from __future__ import annotations

import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests

from pipeline_common.storage import S3Config, StorageLocation


@pytest.mark.parametrize(
    ("uri", "path"),
    [
        ("/srv/features/", "/srv/features"),
        ("file:///srv/features", "/srv/features"),
        ("/srv/a/../features", "/srv/features"),
    ],
)
def test_local_paths_are_absolute_file_locations(uri: str, path: str):
    location = StorageLocation.parse(uri)

    assert (location.scheme, location.path) == ("file", path)
    assert location.uri == path
    assert location.spark_uri == f"file://{path}"


def test_relative_and_home_paths_are_resolved(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    assert StorageLocation.parse("data/features").path == str(tmp_path / "data" / "features")
    assert StorageLocation.parse("~/features").path == str(tmp_path / "home" / "features")


@pytest.mark.parametrize(
    ("uri", "path"),
    [
        ("s3://mlops/features", "mlops/features"),
        ("s3://mlops/features/", "mlops/features"),
        ("s3a://mlops/features", "mlops/features"),
        ("s3://mlops", "mlops"),
    ],
)
def test_s3_uris(uri: str, path: str):
    location = StorageLocation.parse(uri)

    assert (location.scheme, location.path) == ("s3", path)
    assert location.uri == f"s3://{path}"
    assert location.spark_uri == f"s3a://{path}"
    assert location.child("v1", "part-0.parquet").uri == f"s3://{path}/v1/part-0.parquet"


def test_file_uri_with_a_host_is_rejected_not_misread():
    """file://data/features is host "data", path /features: refusing beats writing to /."""
    with pytest.raises(ValueError, match="names a host"):
        StorageLocation.parse("file://data/features")
    assert StorageLocation.parse("file://localhost/srv/x").path == "/srv/x"


def test_s3_uri_without_a_bucket_is_rejected():
    with pytest.raises(ValueError, match="names no bucket: use s3://BUCKET/PREFIX"):
        StorageLocation.parse("s3:///features")


@pytest.mark.parametrize("uri", ["gs://mlops/features", "https://example.org/features"])
def test_unsupported_scheme_is_rejected(uri: str):
    with pytest.raises(ValueError, match="scheme must be file:// or s3://") as error:
        StorageLocation.parse(uri)
    assert uri in str(error.value)


def test_s3_location_needs_a_connection():
    with pytest.raises(ValueError, match="no S3 connection is configured"):
        StorageLocation.parse("s3://mlops/features").filesystem()


def _table() -> pa.Table:
    return pa.table(
        {
            "repository": ["fastapi/fastapi", "pallets/flask", "pallets/flask"],
            "number": [16224, 5000, 5001],
            "additions": [12, 0, 3400],
            "score": [0.1, 0.5, 0.99],
        }
    )


def test_local_parquet_round_trip(tmp_path: Path):
    location = StorageLocation.parse(str(tmp_path / "features"))
    fs = location.filesystem()
    fs.create_dir(location.path)
    target = location.child("part-0.parquet")

    pq.write_table(_table(), target.path, filesystem=fs)

    assert pq.read_table(target.path, filesystem=fs).equals(_table())


def test_s3_parquet_round_trip(s3_config: S3Config):
    bucket = f"features-{uuid.uuid4().hex[:8]}"
    location = StorageLocation.parse(f"s3://{bucket}/pr-anomaly/v1")
    fs = location.filesystem(s3_config)
    target = location.child("part-0.parquet")

    pq.write_table(_table(), target.path, filesystem=fs)

    assert pq.read_table(target.path, filesystem=fs).equals(_table())
    listed = fs.get_file_info(pa.fs.FileSelector(location.path))
    assert [info.path for info in listed] == [target.path]
    assert listed[0].size > 0


def test_s3_refuses_a_wrong_secret_key(s3_config: S3Config):
    bucket = f"features-{uuid.uuid4().hex[:8]}"
    location = StorageLocation.parse(f"s3://{bucket}/v1")
    target = location.child("part-0.parquet")
    pq.write_table(_table(), target.path, filesystem=location.filesystem(s3_config))
    wrong = S3Config(
        endpoint_url=s3_config.endpoint_url,
        access_key_id=s3_config.access_key_id.get_secret_value(),
        secret_access_key="not-the-" + s3_config.secret_access_key.get_secret_value(),
    )
    fs = location.filesystem(wrong)

    with pytest.raises(OSError, match="SIGNATURE_DOES_NOT_MATCH"):
        pq.write_table(_table(), location.child("part-1.parquet").path, filesystem=fs)
    with pytest.raises(OSError, match="ACCESS_DENIED"):
        pq.read_table(target.path, filesystem=fs)
    # and nothing was written with the wrong key
    listed = location.filesystem(s3_config).get_file_info(pa.fs.FileSelector(location.path))
    assert [info.path for info in listed] == [target.path]


def test_s3_refuses_anonymous_reads(s3_config: S3Config):
    bucket = f"features-{uuid.uuid4().hex[:8]}"
    location = StorageLocation.parse(f"s3://{bucket}/v1")
    target = location.child("part-0.parquet")
    pq.write_table(_table(), target.path, filesystem=location.filesystem(s3_config))

    response = requests.get(f"{s3_config.endpoint_url}/{target.path}", timeout=5)

    assert response.status_code == 403
