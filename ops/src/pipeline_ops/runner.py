"""Run the pipeline's stages against the local platform, each as its own process with
only the VAULT_* contract in its environment, exactly as a pod would run it."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline_contracts.features import FEATURE_SPEC_VERSION
from pipeline_ops.local_env import LocalEnvironment
from pipeline_ops.local_platform import DEFAULT_SERVICES, LocalPlatform
from pipeline_ops.paths import LOCAL_DIR, PROJECT_ROOT, TOOLS_DIR
from pipeline_ops.pipeline_state import PipelineState
from pipeline_ops.promotion import blue_green
from pipeline_ops.report import write_run_report

log = logging.getLogger(__name__)


class StageFailedError(RuntimeError):
    pass


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def stage_process_env(env: LocalEnvironment, stage: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    return {
        **base,
        **env.stage_env(stage),
        "SPARK_JARS_DIR": str(TOOLS_DIR / "jars"),
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
    }


def run_stage_process(env: LocalEnvironment, stage: str, argv: list[str]) -> dict[str, Any]:
    """Run one stage entrypoint as its own process, with only the VAULT_* contract for its
    secrets, as a pod runs it; its JSON summary (stdout) is returned, logs pass through."""
    started = time.monotonic()
    print(f"==> {stage}: {Path(argv[0]).name} {' '.join(argv[1:])}", flush=True)
    result = subprocess.run(
        argv, env=stage_process_env(env, stage), cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True
    )
    if result.returncode != 0:
        raise StageFailedError(f"{stage} exited with {result.returncode}")
    summary = json.loads(result.stdout)
    print(f"<== {stage} done in {time.monotonic() - started:.1f}s", flush=True)
    return summary


def _input_snapshot(env: LocalEnvironment) -> dict[str, Any]:
    """What spark-preprocess would read: document count and newest update in the collection.

    The runner (an operator, like a scheduler in the cluster) reads it to decide whether a
    re-run has anything new to preprocess and train on."""
    from pymongo import MongoClient

    secret = env.stage_secrets()["spark-preprocess"]
    client: MongoClient[dict[str, Any]] = MongoClient(
        secret["mongo_uri"], serverSelectionTimeoutMS=5000
    )
    with client:
        collection = client[secret["mongo_database"]][
            secret.get("mongo_collection", "pull_requests")
        ]
        newest = collection.find_one({}, {"updated_at": 1}, sort=[("updated_at", -1)])
        return {
            "documents": collection.count_documents({}),
            "newest_update": str(newest["updated_at"]) if newest else None,
        }


@dataclass
class StepRecord:
    name: str
    seconds: float
    outcome: str


@dataclass
class PipelineRun:
    """`make run`: every stage, then a local blue/green promotion, then a report."""

    platform: LocalPlatform
    keep_serving: bool = False
    gate_run_time: str | None = "15s"
    steps: list[StepRecord] = field(default_factory=list)
    state: PipelineState = field(default_factory=PipelineState)

    @contextmanager
    def step(self, name: str):
        number = len(self.steps) + 1
        print(f"==> [{number}] {name}", flush=True)
        started = time.monotonic()
        record = StepRecord(name, 0.0, "")
        yield record
        record.seconds = time.monotonic() - started
        self.steps.append(record)
        print(f"<== [{number}] {name}: {record.seconds:.1f}s  {record.outcome}", flush=True)

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        summary: dict[str, Any] = {}
        with self.step("platform: Vault, MongoDB, MLflow") as step:
            self.platform.up(DEFAULT_SERVICES)
            env = LocalEnvironment(self.platform)
            env.configure_vault()
            step.outcome = "running and seeded"
        with self.step("data-fetch") as step:
            summary["data-fetch"] = fetch = run_stage_process(
                env, "data-fetch", [_bin("data-fetch")]
            )
            step.outcome = _fetch_outcome(fetch)
        state = self.state.read()
        # new formulas (another feature spec) mean new features, even with no new data
        snapshot = {**_input_snapshot(env), "feature_spec_version": FEATURE_SPEC_VERSION}
        with self.step("spark-preprocess") as step:
            if state.get("preprocessed_snapshot") == snapshot and state.get("features_run_id"):
                summary["spark-preprocess"] = {"skipped": True, "run_id": state["features_run_id"]}
                step.outcome = "skipped: no new data since run " + state["features_run_id"]
            else:
                pre = run_stage_process(env, "spark-preprocess", [_bin("spark-preprocess")])
                summary["spark-preprocess"] = pre
                self.state.update(preprocessed_snapshot=snapshot, features_run_id=pre["run_id"])
                step.outcome = f"{pre['rows']} feature rows, run {pre['run_id']}"
        features_run_id = self.state.read()["features_run_id"]
        with self.step("ml-training") as step:
            if state.get("trained_on") == features_run_id:
                summary["ml-training"] = {"skipped": True, **state.get("training", {})}
                step.outcome = f"skipped: features run {features_run_id} already trained on"
            else:
                argv = [_bin("ml-training"), "--features-run-id", features_run_id]
                training = run_stage_process(env, "ml-training", argv)
                summary["ml-training"] = training
                self.state.update(trained_on=features_run_id, training=training)
                step.outcome = (
                    f"model version {training['model_version']} registered as challenger"
                    if training.get("registered", True)
                    else f"not registered: {training.get('gate')}"
                )
        with self.step("blue/green: analysis and promotion") as step:
            decision = self._promote(env)
            summary["promotion"] = decision.as_dict()
            step.outcome = decision.reason
        summary["steps"] = [vars(s) for s in self.steps]
        summary["total_seconds"] = time.monotonic() - started
        with self.step("report") as step:
            summary["report"] = write_run_report(
                summary,
                env.stage_secrets()["ml-training"]["mlflow_tracking_uri"],
                LOCAL_DIR / "reports",
            )
            step.outcome = summary["report"]["markdown"]
        return summary

    def _promote(self, env: LocalEnvironment):
        from mlflow import MlflowClient

        secret = env.stage_secrets()["model-serving"]
        client = MlflowClient(secret["mlflow_tracking_uri"])
        decision = blue_green(
            client,
            secret["model_name"],
            stage_process_env(env, "model-serving"),
            LOCAL_DIR / "pipeline" / "serving",
            gate_run_time=self.gate_run_time,
            keep_serving=self.keep_serving,
            on_step=lambda text: print(f"    {text}", flush=True),
        )
        self.state.update(active_url=decision.active_url, active_pid=decision.active_pid)
        return decision


def _fetch_outcome(fetch: dict[str, Any]) -> str:
    keys = ("inserted", "updated", "unchanged", "quarantined")
    return ", ".join(f"{fetch[k]} {k}" for k in keys if k in fetch)


def run_pipeline(
    platform: LocalPlatform, *, keep_serving: bool = False, gate_run_time: str | None = "15s"
) -> dict[str, Any]:
    return PipelineRun(platform, keep_serving=keep_serving, gate_run_time=gate_run_time).run()
