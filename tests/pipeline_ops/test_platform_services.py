"""The servers the launcher starts are the real thing: FerretDB speaks MongoDB, MLflow
tracks runs and stores artifacts, SeaweedFS serves its buckets through S3 only."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import time
import uuid
from pathlib import Path

import pymongo
import pytest
import requests

from pipeline_common.storage import S3Config, StorageLocation
from pipeline_ops.local_platform import LocalPlatform


def test_ferretdb_accepts_pymongo_writes_and_reads(platform: LocalPlatform) -> None:
    mongo = platform.service("mongo")
    database = f"t_smoke_{uuid.uuid4().hex[:8]}"
    with pymongo.MongoClient(
        f"mongodb://127.0.0.1:{mongo.port}/", serverSelectionTimeoutMS=5000
    ) as client:
        collection = client[database]["items"]
        collection.insert_many([{"_id": f"k{i}", "value": i} for i in range(5)])
        collection.update_one({"_id": "k2"}, {"$set": {"value": 20}})
        assert collection.count_documents({}) == 5
        assert collection.find_one({"_id": "k2"})["value"] == 20
        assert sorted(d["_id"] for d in collection.find({"value": {"$gte": 3}})) == [
            "k2",
            "k3",
            "k4",
        ]
        client.drop_database(database)
        assert database not in client.list_database_names()


def test_mlflow_logs_a_run_with_param_metric_and_artifact(
    platform: LocalPlatform, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=platform.service("mlflow").url)
    experiment_id = client.create_experiment(f"smoke-{uuid.uuid4().hex[:8]}")
    run = client.create_run(experiment_id)
    run_id = run.info.run_id
    client.log_param(run_id, "learning_rate", "0.01")
    for step, value in enumerate([0.9, 0.5, 0.25]):
        client.log_metric(run_id, "loss", value, step=step)
    report = tmp_path / "report.txt"
    report.write_text("reconstruction error by repository\n")
    client.log_artifact(run_id, str(report), artifact_path="reports")
    client.set_terminated(run_id)

    stored = client.get_run(run_id)
    assert stored.info.status == "FINISHED"
    assert stored.data.params == {"learning_rate": "0.01"}
    assert stored.data.metrics["loss"] == 0.25
    history = client.get_metric_history(run_id, "loss")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == [0.9, 0.5, 0.25]
    assert [a.path for a in client.list_artifacts(run_id, "reports")] == ["reports/report.txt"]
    downloaded = client.download_artifacts(run_id, "reports/report.txt", str(tmp_path / "dl"))
    assert Path(downloaded).read_text() == report.read_text()


def _reachable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((host, port)) == 0


def _talk_tls_without_a_client_certificate(host: str, port: int) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")  # HTTP/2's preface, as gRPC
        return tls.recv(64)


def test_the_buckets_are_reached_through_s3_with_its_keys_only(tmp_path: Path) -> None:
    """SeaweedFS's filer serves every bucket over plain HTTP (read, write, list) without the
    S3 keys. On a host address (the cluster's bridge; here 127.0.0.2) only the S3 gateway
    listens; on loopback the filer and the volume server answer only with a JWT of this
    start."""
    local = LocalPlatform(tmp_path / "platform", host="127.0.0.2")
    try:
        s3 = local.up(["s3"])["s3"]
        keys = local.s3_credentials()
        config = S3Config(
            endpoint_url=f"http://127.0.0.2:{s3.port}",
            access_key_id=keys["access_key_id"],
            secret_access_key=keys["secret_access_key"],
        )
        bucket = f"private-{uuid.uuid4().hex[:8]}"
        fs = StorageLocation.parse(f"s3://{bucket}/x").filesystem(config)
        fs.create_dir(bucket)
        with fs.open_output_stream(f"{bucket}/x/secret.txt") as out:
            out.write(b"not for anonymous readers")
        with fs.open_input_stream(f"{bucket}/x/secret.txt") as stream:
            assert stream.read() == b"not for anonymous readers"  # S3 with its keys works

        internal = {
            f: p for f, p in s3.ports.items() if f.startswith(("master", "volume", "filer"))
        }
        assert {f for f, p in internal.items() if _reachable("127.0.0.2", p)} == set()
        filer = f"http://127.0.0.1:{s3.ports['filer.port']}"
        anonymous = {
            "read": requests.get(f"{filer}/buckets/{bucket}/x/secret.txt", timeout=5),
            "list": requests.get(f"{filer}/buckets/{bucket}/", timeout=5,
                                 headers={"Accept": "application/json"}),
            "write": requests.post(f"{filer}/buckets/{bucket}/x/planted.txt", timeout=5,
                                   files={"file": b"planted"}),
        }  # fmt: skip
        assert {what: r.status_code for what, r in anonymous.items()} == dict.fromkeys(
            anonymous, 401
        )
        assert all(b"not for anonymous" not in r.content for r in anonymous.values())
        with pytest.raises(FileNotFoundError):
            fs.open_input_stream(f"{bucket}/x/planted.txt")
        # the S3 gateway's gRPC port (its Configure call replaces the keys) takes no one
        with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED"):
            _talk_tls_without_a_client_certificate("127.0.0.2", s3.ports["s3.port.grpc"])
    finally:
        local.down()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs as the artifact store")
def test_a_full_artifact_store_is_named_at_once(tmp_path: Path) -> None:
    """MLflow's answer to a full artifact store was a bare 500, which the client retried for
    four minutes before failing with "too many 500 error responses". Now: at once, the
    cause (ENOSPC) and the path; and the server goes on working."""
    from mlflow.tracking import MlflowClient

    local = LocalPlatform(tmp_path / "platform")
    artifacts = local.state_dir / "mlflow" / "artifacts"
    artifacts.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(artifacts)], check=True)
    try:
        client = MlflowClient(tracking_uri=local.up(["mlflow"])["mlflow"].url)
        run_id = client.create_run(client.create_experiment("full-store")).info.run_id
        model = tmp_path / "model.bin"
        model.write_bytes(os.urandom(1_000_000))

        started = time.monotonic()
        with pytest.raises(requests.HTTPError) as failure:
            client.log_artifact(run_id, str(model), artifact_path="model")
        seconds = time.monotonic() - started

        assert seconds < 10
        message = str(failure.value)
        assert "507" in message
        assert "ENOSPC (No space left on device)" in message
        assert f"{artifacts}/" in message
        assert "/artifacts/model/model.bin" in message
        small = tmp_path / "note.txt"
        small.write_text("fits")
        client.log_artifact(run_id, str(small))
        assert "note.txt" in [a.path for a in client.list_artifacts(run_id)]
        assert client.list_artifacts(run_id, "model") == []  # no half-written model
    finally:
        local.down()
        subprocess.run(["umount", str(artifacts)], check=False)
