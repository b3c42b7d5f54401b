"""The servers the launcher starts are the real thing: FerretDB speaks MongoDB, MLflow
tracks runs and stores artifacts."""

from __future__ import annotations

import uuid
from pathlib import Path

import pymongo

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
