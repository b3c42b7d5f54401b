"""`model-champion`: the registry's ``champion`` alias follows what production serves.

Git pins the version each environment serves (``argo-apps/base/model-serving-model.env``),
and the training gate compares every new model with ``champion``. So ``champion`` must name
what production serves now, after a promotion and after a rollback by revert alike, and
nothing else may move it. This job (a CronJob that only the production Application enables)
asks the active Service which version its pods loaded (``/version``: ``served_model``) and
moves the alias there when it names another version; when it already names it, nothing.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import requests
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline_common.cli import StageError, run_stage
from pipeline_common.settings import load_settings
from pipeline_common.vault import load_stage_secret
from pipeline_contracts.registry import CHAMPION, ModelReference

log = logging.getLogger(__name__)

PROG = "model-champion"


class ChampionSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHAMPION_", extra="ignore")

    serving_url: str = Field(
        default="http://model-serving-active:8080",
        description="the active Service of production's model-serving Rollout",
    )
    timeout_seconds: float = Field(default=10, gt=0, description="for the /version request")


def served_model(serving_url: str, timeout: float) -> ModelReference:
    """The version the active Service's pods loaded, or a StageError saying why not."""
    url = f"{serving_url.rstrip('/')}/version"
    try:
        response = requests.get(url, timeout=timeout)
        response.raise_for_status()
        served = response.json().get("served_model")
    except (requests.RequestException, ValueError) as error:
        raise StageError(
            f"cannot read what production serves from {url}: {error}; champion left as it "
            "is (the next run tries again)"
        ) from error
    if not served:
        raise StageError(f"{url} serves no model yet: champion left as it is")
    reference = ModelReference.parse(served)
    if reference.version is None:  # served_model is always a version; an alias is a bug
        raise StageError(f"{url} answered served_model={served!r}, not a version")
    return reference


def follow_production(tracking_uri: str, serving_url: str, timeout: float) -> dict[str, Any]:
    """Move ``champion`` of the served model to the served version; what was done."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    served = served_model(serving_url, timeout)
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        before: str | None = str(client.get_model_version_by_alias(served.name, CHAMPION).version)
    except MlflowException:
        before = None  # no champion yet: production's first model becomes it
    summary = {"served_model": served.uri, "champion_before": before, "champion": served.version}
    if before == served.version:
        log.info("%s@%s is v%s, what production serves", served.name, CHAMPION, before)
        return {**summary, "moved": False}
    client.set_registered_model_alias(served.name, CHAMPION, str(served.version))
    log.info("%s@%s moved from v%s to v%s: production serves it", served.name, CHAMPION,
             before, served.version)  # fmt: skip
    return {**summary, "moved": True}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Move the registry alias 'champion' to the model version production "
        "serves (the active Service's /version), so that the training gate compares with "
        "what production serves. The MLflow connection comes from model-serving's Vault "
        "secret (VAULT_* variables); CHAMPION_SERVING_URL names the active Service.",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)

    def job() -> dict[str, Any]:
        from model_serving.settings import ServingSecret

        settings = load_settings(ChampionSettings)
        secret = load_stage_secret(ServingSecret)
        return follow_production(
            secret.mlflow_tracking_uri, settings.serving_url, settings.timeout_seconds
        )

    return run_stage(PROG, job, log_level=args.log_level)


if __name__ == "__main__":
    sys.exit(main())
