"""ml-training against a real MLflow server: the run is tracked, evaluated on the held-out
test split (injected anomalies, IsolationForest beside it), gated, registered as
'challenger'; training is reproducible, and the registered pyfunc and the serving fast path
give the same scores."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from ml_pipeline.anomalies import inject_anomalies
from ml_pipeline.feature_frames import score_frame
from ml_pipeline.training.gate import gate_decision, untrustworthy_reason
from ml_pipeline.training.job import TrainingJob
from ml_pipeline.training.settings import TrainingSecret, TrainingSettings
from ml_pipeline.training.steps import evaluation_rows, fit_scaler, time_split, train_and_evaluate
from pipeline_common.cli import StageError
from pipeline_contracts.drift import DRIFT_ALERT_PSI
from pipeline_contracts.features import FEATURE_NAMES
from pipeline_contracts.registry import CHALLENGER, CHAMPION, ModelReference, download_scorer


@pytest.fixture(scope="module")
def records(training_run) -> list[dict[str, Any]]:
    return training_run["records"]


@pytest.fixture(scope="module")
def trained(training_run, write_feature_run):
    """The session's training run (version 1), then a second run on the same data."""
    root, frame = training_run["root"], training_run["frame"]
    # A deliberately bad training set: the training period is full of the very anomalies the
    # evaluation injects, so the model learns them as normal.
    train, _, _ = time_split(frame)
    dirty = inject_anomalies(train, len(train) // 2, seed=7).drop(columns="kind")
    dirty["number"] += 100_000
    write_feature_run(
        root, "run-dirty", pd.concat([frame, dirty], ignore_index=True), publish=False
    )
    secret, settings = training_run["secret"], training_run["settings"]
    second = TrainingJob(secret, settings).run()
    return {
        "secret": secret,
        "settings": settings,
        "first": training_run["result"],
        "second": second,
        "root": root,
    }


@pytest.fixture(scope="module")
def client(trained) -> MlflowClient:
    return MlflowClient(tracking_uri=trained["secret"].mlflow_tracking_uri)


def test_run_is_tracked_with_params_and_per_epoch_metrics(trained, client, records) -> None:
    result = trained["first"]
    run = client.get_run(result["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["max_epochs"] == "5"
    assert params["seed"] == str(trained["settings"].seed)
    assert params["feature_run_id"] == "run-600"
    assert sum(int(params[f"rows_{s}"]) for s in ("train", "valid", "test")) == len(records) == 600
    assert 1 <= result["epochs"] <= 5
    for metric in ("train_loss", "valid_loss"):
        history = client.get_metric_history(run.info.run_id, metric)
        assert sorted(m.step for m in history) == list(range(result["epochs"])), metric
        assert all(np.isfinite(m.value) and m.value >= 0 for m in history)
    assert run.data.metrics["threshold"] == pytest.approx(result["threshold"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {
        "feature_spec.json",
        "input_manifest.json",
        "scaler.json",
        "threshold.json",
        "feature_error_contributions.json",
        "evaluation.json",
        "gate.txt",
        "backtest.json",
        "plots",
    } <= artifacts
    plots = {
        item.path
        for folder in client.list_artifacts(run.info.run_id, "plots")
        for item in client.list_artifacts(run.info.run_id, folder.path)
    }
    assert plots == {  # one folder per section of the run report
        "plots/test_split/roc_curve.png",
        "plots/test_split/pr_curve.png",
        "plots/test_split/score_distribution.png",
        "plots/backtest/auc_per_fold.png",
        "plots/backtest/auc_per_kind.png",
        "plots/drift/psi_per_feature.png",
        "plots/drift/reference_bins.png",
    }
    assert len(run.data.tags["feature_manifest_sha256"]) == 64
    for model in ("", "isolation_forest_"):
        for metric in ("roc_auc", "pr_auc", "f1", "precision_at_k"):
            assert 0 <= run.data.metrics[f"{model}test_{metric}"] <= 1
    # the injected anomalies are found far better than by chance, by both models
    assert run.data.metrics["test_roc_auc"] > 0.9
    assert run.data.metrics["isolation_forest_test_roc_auc"] > 0.9
    assert result["registered"] is True
    assert result["gate"].startswith("passed")


def test_each_run_registers_a_version_and_moves_challenger(trained, client) -> None:
    name = trained["secret"].model_name
    first, second = trained["first"], trained["second"]
    assert first["alias"] == second["alias"] == CHALLENGER
    assert (first["model_version"], second["model_version"]) == ("1", "2")
    assert client.get_model_version_by_alias(name, CHALLENGER).version == "2"
    assert client.get_model_version(name, "1").run_id == first["mlflow_run_id"]


def test_same_data_and_seed_give_the_same_model(trained) -> None:
    first, second = trained["first"], trained["second"]
    assert first["mlflow_run_id"] != second["mlflow_run_id"]
    assert first["threshold"] > 0
    assert first["threshold"] == second["threshold"]
    assert first["epochs"] == second["epochs"]
    assert first["test_roc_auc"] == second["test_roc_auc"]
    assert first["isolation_forest_test_roc_auc"] == second["isolation_forest_test_roc_auc"]


def test_pyfunc_and_serving_fast_path_score_alike(trained, records) -> None:
    secret, result = trained["secret"], trained["second"]
    raw = pd.DataFrame(records[::10])  # GitHub-shaped: nested user/base, labels, ...
    mlflow.set_tracking_uri(secret.mlflow_tracking_uri)
    challenger = ModelReference.at_alias(secret.model_name, CHALLENGER)
    pyfunc = mlflow.pyfunc.load_model(challenger.uri)
    predicted = pyfunc.predict(raw)

    version, scorer = download_scorer(secret.mlflow_tracking_uri, challenger)
    assert version == result["model_version"]
    assert scorer.threshold == pytest.approx(result["threshold"])
    fast = pd.DataFrame(score_frame(scorer, raw))

    assert len(predicted) == len(fast) == len(raw)
    np.testing.assert_allclose(predicted["score"], fast["score"], rtol=1e-6)
    assert list(predicted["is_anomaly"]) == list(fast["is_anomaly"])
    assert list(predicted["top_features"].map(list)) == list(fast["top_features"])
    assert all(set(top) <= set(FEATURE_NAMES) for top in fast["top_features"])


# -- the quality gate ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gated(trained, client) -> dict[str, Any]:
    """Promotion (not training) made version 1 the champion; then a bad and a good run."""
    secret, settings = trained["secret"], trained["settings"]
    client.set_registered_model_alias(secret.model_name, CHAMPION, "1")
    bad = TrainingJob(secret, settings, "run-dirty").run()
    lenient = settings.model_copy(update={"min_roc_auc": 0.5})
    bad_vs_champion = TrainingJob(secret, lenient, "run-dirty").run()
    good = TrainingJob(secret, settings, "run-600").run()
    return {"bad": bad, "bad_vs_champion": bad_vs_champion, "good": good}


def test_gate_refuses_a_bad_model_without_touching_the_aliases(trained, gated, client) -> None:
    name = trained["secret"].model_name
    bad = gated["bad"]
    assert bad["registered"] is False
    assert bad["model_version"] is None
    assert bad["gate"].startswith("refused: ROC AUC")
    assert "below the minimum" in bad["gate"]
    assert bad["test_roc_auc"] < trained["settings"].min_roc_auc
    # the run is still tracked, with the reason
    run = client.get_run(bad["mlflow_run_id"])
    assert run.data.tags["gate_registered"] == "false"
    refused = gated["bad_vs_champion"]
    assert refused["registered"] is False
    assert "worse than champion version 1" in refused["gate"]
    assert client.get_model_version_by_alias(name, CHAMPION).version == "1"


def test_gate_accepts_a_good_model_as_challenger_only(trained, gated, client) -> None:
    name = trained["secret"].model_name
    good = gated["good"]
    assert good["registered"] is True
    assert good["model_version"] == "3"
    assert "champion version 1" in good["gate"]
    assert client.get_model_version_by_alias(name, CHALLENGER).version == "3"
    assert client.get_model_version_by_alias(name, CHAMPION).version == "1"


def test_gate_rule() -> None:
    settings = TrainingSettings(min_roc_auc=0.8, champion_tolerance=0.02)
    assert not gate_decision(0.79, settings).registered
    assert gate_decision(0.81, settings).registered
    assert gate_decision(0.90, settings, "4", 0.915).registered
    refused = gate_decision(0.90, settings, "4", 0.93)
    assert not refused.registered
    assert "champion version 4" in refused.reason


def test_pyfunc_loads_by_alias_in_a_fresh_process(trained, records, tmp_path) -> None:
    secret = trained["secret"]
    path = tmp_path / "records.json"
    path.write_text(json.dumps(records[:5]))
    script = (
        "import json, sys, mlflow, pandas as pd\n"
        "mlflow.set_tracking_uri(sys.argv[1])\n"
        "model = mlflow.pyfunc.load_model(sys.argv[2])\n"
        "out = model.predict(pd.DataFrame(json.load(open(sys.argv[3]))))\n"
        "print(out.to_json(orient='records'))\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            secret.mlflow_tracking_uri,
            f"models:/{secret.model_name}@{CHALLENGER}",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(results) == 5
    for result in results:
        assert set(result) >= {"score", "threshold", "is_anomaly", "top_features"}
        assert result["score"] >= 0
        assert result["threshold"] == pytest.approx(trained["second"]["threshold"])


# -- data set errors (fail before anything reaches MLflow) -----------------------------------
def _job(root: Path, run_id: str | None = None) -> TrainingJob:
    secret = TrainingSecret(mlflow_tracking_uri="http://127.0.0.1:9", features_uri=str(root))
    return TrainingJob(secret, TrainingSettings(max_epochs=1), run_id)


def test_missing_data_set_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(StageError, match=r"no published feature data set.*run spark-preprocess"):
        _job(tmp_path).run()


def test_incomplete_data_set_is_a_clear_error(
    tmp_path, records, feature_rows, write_feature_run
) -> None:
    frame = feature_rows(records[:100])
    write_feature_run(tmp_path, "crashed", frame, with_manifest=False, publish=False)
    with pytest.raises(StageError, match=r"crashed has no manifest\.json: it is incomplete"):
        _job(tmp_path, "crashed").run()
    write_feature_run(tmp_path, "partial", frame.drop(columns=["log_commits"]), publish=False)
    with pytest.raises(StageError, match=r"lacks columns \['log_commits'\]"):
        _job(tmp_path, "partial").run()
    write_feature_run(tmp_path, "tiny", frame.head(5), publish=False)
    with pytest.raises(StageError, match="5 rows, training needs at least"):
        _job(tmp_path, "tiny").run()


def test_an_experiment_trains_on_the_repositories_it_names(training_run) -> None:
    """TRAINING_REPOSITORIES: one repository's pull requests only, said in the summary and
    the run's parameters; a name the data set lacks is refused, naming those it has."""
    secret, settings = training_run["secret"], training_run["settings"]
    present = sorted({r["base"]["repo"]["full_name"] for r in training_run["records"]})
    assert len(present) == 2
    one = settings.model_copy(update={"repositories": present[1]})
    summary = TrainingJob(secret, one).run()
    assert summary["repositories"] == [present[1]]
    run = MlflowClient(secret.mlflow_tracking_uri).get_run(summary["mlflow_run_id"])
    assert run.data.params["repositories"] == present[1]

    other = settings.model_copy(update={"repositories": "someone/else"})
    with pytest.raises(StageError, match=r"TRAINING_REPOSITORIES names \['someone/else'\]") as e:
        TrainingJob(secret, other).run()
    assert all(name in str(e.value) for name in present)


# -- pure: split, scaling, evaluation rows, determinism --------------------------------------
def test_time_split_has_no_leakage(records, feature_rows) -> None:
    frame = feature_rows(records)
    train, valid, test = time_split(frame)
    assert len(train) + len(valid) + len(test) == len(frame)
    assert train["created_at"].max() <= valid["created_at"].min()
    assert valid["created_at"].max() <= test["created_at"].min()
    mean, _ = fit_scaler(train)
    np.testing.assert_allclose(mean, train[list(FEATURE_NAMES)].mean().to_numpy())
    assert not np.allclose(mean, frame[list(FEATURE_NAMES)].mean().to_numpy())
    # injected anomalies are copies of test rows only: nothing of train/valid is evaluated
    rows = evaluation_rows(test, TrainingSettings())
    keys = set(zip(rows["repository"], rows["number"], strict=True))
    assert keys <= set(zip(test["repository"], test["number"], strict=True))


def test_fixed_seed_gives_the_same_metrics(records, feature_rows) -> None:
    frame = feature_rows(records[::2])
    settings = TrainingSettings(max_epochs=3)
    first = train_and_evaluate(frame, settings, None)
    second = train_and_evaluate(frame, settings, None)
    assert first.evaluation.metrics == second.evaluation.metrics
    assert first.scorer.threshold == second.scorer.threshold
    assert first.history == second.history
    other = train_and_evaluate(frame, settings.model_copy(update={"seed": 7}), None)
    assert other.history != first.history


# -- the gate refuses degenerate models --------------------------------------------------------
@pytest.mark.parametrize(
    ("rows", "reason"),
    [
        (lambda frame: frame.head(40), r"the train split has 28 rows, fewer than "),
        (
            lambda frame: pd.concat([frame.head(1)] * 300, ignore_index=True).assign(
                number=range(1, 301)
            ),
            r"the train split has 1 distinct feature rows among its 210",
        ),
    ],
    ids=["40 rows", "one row 300 times"],
)
def test_the_gate_refuses_a_model_of_too_little_or_degenerate_data(
    trained, client, feature_rows, records, write_feature_run, rows, reason
) -> None:
    run_id = f"run-degenerate-{uuid.uuid4().hex[:6]}"
    write_feature_run(trained["root"], run_id, rows(feature_rows(records)), publish=False)

    result = TrainingJob(trained["secret"], trained["settings"], run_id).run()

    assert result["registered"] is False
    assert result["model_version"] is None
    assert re.search(reason, result["gate"]), result["gate"]
    assert "TRAINING_MIN_SPLIT_ROWS=50" in result["gate"]
    run = client.get_run(result["mlflow_run_id"])  # the reason is in the run
    assert run.data.tags["gate"] == result["gate"]
    assert run.data.tags["gate_registered"] == "false"


def test_the_gate_refuses_an_insane_threshold(records, feature_rows) -> None:
    settings = TrainingSettings(max_epochs=2)
    outcome = train_and_evaluate(feature_rows(records), settings, None)
    assert untrustworthy_reason(outcome, settings) is None
    for threshold in (1058.0, 2.6e15, float("nan"), 0.0):
        outcome.scorer.threshold = threshold
        reason = untrustworthy_reason(outcome, settings)
        assert reason is not None
        assert "outside (0, TRAINING_MAX_THRESHOLD=25]" in reason
        assert not gate_decision(0.99, settings, untrustworthy=reason).registered


def test_the_backtest_is_logged_fold_by_fold_and_its_newest_fold_is_the_gates(
    trained, client
) -> None:
    result = trained["first"]
    run_id = result["mlflow_run_id"]
    backtest = client.download_artifacts(run_id, "backtest.json")
    document = json.loads(Path(backtest).read_text())
    folds = document["folds"]
    assert [f["fold"] for f in folds] == list(range(1, trained["settings"].backtest_folds + 1))
    assert folds[-1]["autoencoder_roc_auc"] == pytest.approx(result["test_roc_auc"])
    assert result["backtest"]["folds"] == len(folds)
    for model in ("autoencoder", "isolation_forest"):
        history = client.get_metric_history(run_id, f"backtest_{model}_roc_auc")
        assert sorted(m.step for m in history) == [f["fold"] for f in folds]
    assert set(result["seconds"]) >= {"load", "backtest", "mlflow_logging"}
    # each fold's test period against its training reference, every feature, as serving
    # would measure it
    drift = document["drift_psi"]
    assert sorted(drift, key=int) == [str(f["fold"]) for f in folds]
    for psi in drift.values():
        assert set(psi) == set(FEATURE_NAMES)
        assert all(np.isfinite(v) and v >= 0 for v in psi.values())
    assert document["drift_alert_psi"] == DRIFT_ALERT_PSI


def test_training_reads_its_features_from_s3(trained, s3_config) -> None:
    """In the cluster features_uri is s3://: the training job reads the published run from a
    real S3 server (SeaweedFS) with the S3 keys of its own secret."""
    import pyarrow.fs

    from pipeline_common.storage import StorageLocation

    uri = f"s3://features-{uuid.uuid4().hex[:8]}/pr-anomaly"
    remote = StorageLocation.parse(uri)
    remote.filesystem(s3_config).create_dir(remote.path.split("/")[0])
    pyarrow.fs.copy_files(
        str(trained["root"]), remote.path,
        source_filesystem=pyarrow.fs.LocalFileSystem(),
        destination_filesystem=remote.filesystem(s3_config),
    )  # fmt: skip
    secret = trained["secret"].model_copy(
        update={
            "features_uri": uri,
            "s3_endpoint_url": s3_config.endpoint_url,
            "s3_access_key_id": s3_config.access_key_id,
            "s3_secret_access_key": s3_config.secret_access_key,
        }
    )
    summary = TrainingJob(secret, trained["settings"]).run()
    assert summary["feature_run_id"] == trained["second"]["feature_run_id"]
    assert summary["threshold"] == pytest.approx(trained["second"]["threshold"])
    without_keys = trained["secret"].model_copy(update={"features_uri": uri})
    with pytest.raises(ValueError, match="no S3 connection"):
        TrainingJob(without_keys, trained["settings"]).run()


def test_a_password_in_the_tracking_uri_reaches_neither_the_summary_nor_the_output(
    training_run, platform, capfd
) -> None:
    """Through the stage's entry (run_stage), as `make run` stores its summary: the
    credentials of a tracking URI are in neither the summary nor MLflow's "View run" line."""
    from pipeline_common.cli import run_stage

    password = "pw-train-5d1"
    url = platform.service("mlflow").url
    secret = training_run["secret"].model_copy(
        update={"mlflow_tracking_uri": url.replace("http://", f"http://trainer:{password}@")}
    )
    job = TrainingJob(secret, training_run["settings"], "run-600")

    assert run_stage("ml-training", job.run) == 0
    out, err = capfd.readouterr()
    assert password not in out + err
    assert json.loads(out)["tracking_uri"] == url.replace("http://", "http://***@")
    assert re.search(r"View run \S+ at: http://\*\*\*@127\.0\.0\.1", err), err[-2000:]
