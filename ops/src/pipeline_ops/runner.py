"""Run the pipeline's stages against the local platform, each as its own process with only the
VAULT_* contract (and the non-secret knobs README lists) in its environment, exactly as a pod
would run it, in the order of ``stages.STAGES``."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline_contracts.features import FEATURE_SPEC_VERSION
from pipeline_ops import stages
from pipeline_ops.base import commands
from pipeline_ops.base.processes import minimal_environment
from pipeline_ops.base.steps import StepLog
from pipeline_ops.local_env import LocalEnvironment
from pipeline_ops.local_platform import DEFAULT_SERVICES, LocalPlatform
from pipeline_ops.paths import LOCAL_DIR, PROJECT_ROOT, TOOLS_DIR
from pipeline_ops.pipeline_state import PipelineState
from pipeline_ops.promotion import PromotionDecision, blue_green
from pipeline_ops.report import write_run_report

log = logging.getLogger(__name__)

FETCH = stages.stage("data-fetch")
PREPROCESS = stages.stage("spark-preprocess")
TRAINING = stages.stage("ml-training")
SERVING = stages.stage("model-serving")

# The stages' non-secret settings (README, "Non-secret knobs"), passed on when the operator
# sets them; no other variable of the operator's reaches a stage.
STAGE_KNOBS = ("SPARK_", "PREPROCESS_", "TRAINING_", "SERVING_", "GITHUB_API_URL")


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def stage_process_env(env: LocalEnvironment, stage: str) -> dict[str, str]:
    """The whole environment of ``stage``'s process: its VAULT_* contract, what Spark needs,
    the knobs, and nothing else of ours (no token, no cloud key)."""
    passed = {k: v for k, v in os.environ.items() if k.startswith(STAGE_KNOBS)}
    return minimal_environment(
        {
            **passed,
            "SPARK_JARS_DIR": str(TOOLS_DIR / "jars"),
            "PYSPARK_PYTHON": sys.executable,
            "SPARK_LOCAL_IP": "127.0.0.1",
            **env.stage_env(stage),
        }
    )


def run_stage_process(env: LocalEnvironment, stage: str, argv: list[str]) -> dict[str, Any]:
    """Run one stage entrypoint to its end as its own process (group), as a pod runs it; its
    JSON summary (stdout) is returned, its logs pass through. Interrupted, the stage's whole
    group is stopped (SIGTERM first: ml-training ends its MLflow run as KILLED)."""
    started = time.monotonic()
    print(f"==> {stage}: {Path(argv[0]).name} {' '.join(argv[1:])}", flush=True)
    result = commands.run(
        argv, what=stage, env=stage_process_env(env, stage), cwd=PROJECT_ROOT, timeout=None,
        capture_stderr=False, own_group=True,
    )  # fmt: skip
    summary: dict[str, Any] = json.loads(result.stdout)
    print(f"<== {stage} done in {time.monotonic() - started:.1f}s", flush=True)
    return summary


def _input_snapshot(env: LocalEnvironment) -> dict[str, Any]:
    """What spark-preprocess would read: document count and newest update in the collection.

    The runner (an operator, like a scheduler in the cluster) reads it to decide whether a
    re-run has anything new to preprocess and train on."""
    from pymongo import MongoClient

    secret = env.stage_secrets()[PREPROCESS.name]
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


# What `make run` does for a stage: its step's title, and the step (summary -> outcome).
StageStep = tuple[str, Callable[[dict[str, Any]], str]]


@dataclass
class PipelineRun:
    """`make run`: every stage in the list's order (model-serving: a local blue/green
    promotion), then a report."""

    platform: LocalPlatform
    keep_serving: bool = False
    gate_run_time: str | None = "15s"
    steps: StepLog = field(default_factory=StepLog)
    state: PipelineState = field(default_factory=PipelineState)

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        summary: dict[str, Any] = {}
        with self.steps.step("platform: Vault, MongoDB, MLflow") as step:
            self.platform.up(DEFAULT_SERVICES)
            env = LocalEnvironment(self.platform)
            env.configure_vault()
            step.outcome = "running and seeded"
        stage_steps = self.stage_steps(env)
        for stage in stages.STAGES:
            title, body = stage_steps[stage.name]
            with self.steps.step(title) as step:
                step.outcome = body(summary)
        summary["steps"] = self.steps.as_dicts()
        summary["total_seconds"] = time.monotonic() - started
        with self.steps.step("report") as step:
            summary["report"] = write_run_report(
                summary,
                env.stage_secrets()[TRAINING.name]["mlflow_tracking_uri"],
                LOCAL_DIR / "reports",
            )
            step.outcome = summary["report"]["markdown"]
        return summary

    def stage_steps(self, env: LocalEnvironment) -> dict[str, StageStep]:
        """Each stage's step, by the stage's name (a test checks every stage has one)."""
        return {
            FETCH.name: (FETCH.name, lambda summary: self._fetch(env, summary)),
            PREPROCESS.name: (PREPROCESS.name, lambda summary: self._preprocess(env, summary)),
            TRAINING.name: (TRAINING.name, lambda summary: self._train(env, summary)),
            SERVING.name: (
                "blue/green: analysis and promotion",
                lambda summary: self._promote(env, summary),
            ),
        }

    def _fetch(self, env: LocalEnvironment, summary: dict[str, Any]) -> str:
        summary[FETCH.name] = fetch = run_stage_process(env, FETCH.name, [_bin(FETCH.cli)])
        keys = ("inserted", "updated", "unchanged", "quarantined")
        return ", ".join(f"{fetch[k]} {k}" for k in keys if k in fetch)

    def _preprocess(self, env: LocalEnvironment, summary: dict[str, Any]) -> str:
        state = self.state.read()
        # new formulas (another feature spec) mean new features, even with no new data
        snapshot = {**_input_snapshot(env), "feature_spec_version": FEATURE_SPEC_VERSION}
        if state.get("preprocessed_snapshot") == snapshot and state.get("features_run_id"):
            summary[PREPROCESS.name] = {"skipped": True, "run_id": state["features_run_id"]}
            return "skipped: no new data since run " + state["features_run_id"]
        pre = run_stage_process(env, PREPROCESS.name, [_bin(PREPROCESS.cli)])
        summary[PREPROCESS.name] = pre
        self.state.update(preprocessed_snapshot=snapshot, features_run_id=pre["run_id"])
        return f"{pre['rows']} feature rows, run {pre['run_id']}"

    def _train(self, env: LocalEnvironment, summary: dict[str, Any]) -> str:
        state = self.state.read()
        features_run_id = state["features_run_id"]
        if state.get("trained_on") == features_run_id:
            summary[TRAINING.name] = {"skipped": True, **state.get("training", {})}
            return f"skipped: features run {features_run_id} already trained on"
        argv = [_bin(TRAINING.cli), "--features-run-id", features_run_id]
        training = run_stage_process(env, TRAINING.name, argv)
        summary[TRAINING.name] = training
        self.state.update(trained_on=features_run_id, training=training)
        return (
            f"model version {training['model_version']} registered as challenger"
            if training.get("registered", True)
            else f"not registered: {training.get('gate')}"
        )

    def _promote(self, env: LocalEnvironment, summary: dict[str, Any]) -> str:
        from mlflow import MlflowClient

        secret = env.stage_secrets()[SERVING.name]
        decision: PromotionDecision = blue_green(
            MlflowClient(secret["mlflow_tracking_uri"]),
            secret["model_name"],
            stage_process_env(env, SERVING.name),
            LOCAL_DIR / "pipeline" / "serving",
            self.platform.state,
            gate_run_time=self.gate_run_time,
            keep_serving=self.keep_serving,
            on_step=lambda text: print(f"    {text}", flush=True),
        )
        summary["promotion"] = decision.as_dict()
        return decision.reason


def run_pipeline(
    platform: LocalPlatform, *, keep_serving: bool = False, gate_run_time: str | None = "15s"
) -> dict[str, Any]:
    return PipelineRun(platform, keep_serving=keep_serving, gate_run_time=gate_run_time).run()
