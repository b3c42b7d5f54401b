"""`model-pin`: a version that training registered becomes a commit that pins it in git.

Git says which model each environment serves: ``argo-apps/base/model-serving-model.env``, one
line ``SERVING_MODEL_URI=models:/NAME/VERSION``. Training registers a version only when it
passed its gate; this job (a CronJob that only the staging Application enables) turns the
newest registered version into one commit on ``staging``, through GitHub's contents API with
a token of its own from Vault (Argo CD Image Updater's git write-back is the pattern): one
commit per new version, nothing when nothing is new. A version is pinned once: the registry
tags it ``pinned_in_git`` with the commit, so the next run does not undo a user's revert of
the pin (a rollback), and a run that stopped between the commit and the tag finds the pin in
git and only tags it.
"""

from __future__ import annotations

import argparse
import base64
import logging
import sys
from dataclasses import dataclass
from typing import Any

import requests
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline_common.cli import StageError, run_stage
from pipeline_common.settings import load_settings
from pipeline_common.vault import load_stage_secret
from pipeline_contracts.registry import DEFAULT_MODEL_NAME, PINNED_IN_GIT, ModelReference

log = logging.getLogger(__name__)

PROG = "model-pin"
PINNED_TAG = PINNED_IN_GIT  # on a model version: BRANCH@COMMIT that pinned it
MODEL_LINE = "SERVING_MODEL_URI="
COMMITTER = {"name": PROG, "email": f"{PROG}@pr-anomaly-mlops.invalid"}


class PinSecret(BaseModel):
    """Keys of the model-pin Vault secret: the registry to read, the token that writes git."""

    mlflow_tracking_uri: str = Field(description="MLflow tracking server URL")
    model_name: str = Field(default=DEFAULT_MODEL_NAME, description="registered model name")
    github_token: str = Field(description="a token with contents: write on the repository")


class PinSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PIN_", extra="ignore")

    github_api_url: str = Field(default="https://api.github.com", description="GitHub's REST API")
    repository: str = Field(
        default="pr-anomaly-mlops/pr-anomaly-mlops", description="OWNER/NAME of the GitOps repo"
    )
    branch: str = Field(default="staging", description="the branch whose pin follows training")
    file: str = Field(
        default="argo-apps/base/model-serving-model.env", description="the model pin's file"
    )
    timeout_seconds: float = Field(default=20, gt=0, description="for each GitHub request")


@dataclass(frozen=True)
class GitHubContents:
    """The two calls of GitHub's contents API a pin needs: read a file, replace it."""

    api_url: str
    repository: str
    token: str
    timeout: float

    def _url(self, path: str) -> str:
        return f"{self.api_url.rstrip('/')}/repos/{self.repository}/contents/{path}"

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
        }
        try:
            response = requests.request(
                method, self._url(path), headers=headers, timeout=self.timeout, **kwargs
            )
        except requests.RequestException as error:
            raise StageError(f"GitHub's API at {self.api_url} did not answer: {error}") from error
        if response.status_code in (401, 403):
            raise StageError(
                f"GitHub refused model-pin's token ({response.status_code}) for "
                f"{self.repository}: its Vault secret's github_token needs contents: write"
            )
        return response

    def read(self, path: str, branch: str) -> tuple[str, str]:
        """The file's text on ``branch`` and its blob sha (what a write must name)."""
        response = self._request("GET", path, params={"ref": branch})
        if response.status_code == 404:
            raise StageError(f"{self.repository} has no {path} on branch {branch}")
        response.raise_for_status()
        body = response.json()
        return base64.b64decode(body["content"]).decode(), str(body["sha"])

    def write(self, path: str, branch: str, text: str, replacing: str, message: str) -> str:
        """One commit on ``branch`` that makes ``path`` hold ``text``; its sha. The file
        must still be the blob ``replacing``, or nothing is written."""
        body = {
            "message": message,
            "content": base64.b64encode(text.encode()).decode(),
            "sha": replacing,
            "branch": branch,
            "committer": COMMITTER,
        }
        response = self._request("PUT", path, json=body)
        if response.status_code == 409:
            raise StageError(
                f"{path} on {branch} changed while model-pin wrote it: nothing written, the "
                "next run pins on top of the change"
            )
        response.raise_for_status()
        return str(response.json()["commit"]["sha"])


def pinned_model(text: str) -> str | None:
    """The model a pin file names, or None."""
    for line in text.splitlines():
        if line.startswith(MODEL_LINE):
            return line.removeprefix(MODEL_LINE)
    return None


def with_model(text: str, model: ModelReference) -> str:
    """The pin file's text serving ``model``: its model line replaced, the rest kept."""
    kept = [line for line in text.splitlines() if not line.startswith(MODEL_LINE)]
    return "\n".join([*kept, f"{MODEL_LINE}{model.versioned_uri}"]) + "\n"


def pin_newest(
    tracking_uri: str, model_name: str, github: GitHubContents, branch: str, path: str
) -> dict[str, Any]:
    """Pin the newest registered version of ``model_name`` on ``branch`` unless it was
    pinned once already; what was done."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    versions = [
        v for v in client.search_model_versions(f"name='{model_name}'") if v.status == "READY"
    ]
    if not versions:
        return {"pinned": False, "reason": f"no version of {model_name} is registered yet"}
    newest = max(versions, key=lambda v: int(v.version))
    model = ModelReference.at_version(model_name, newest.version)
    summary: dict[str, Any] = {"model": model.uri, "branch": branch}
    if PINNED_TAG in (newest.tags or {}):
        where = newest.tags[PINNED_TAG]
        return {**summary, "pinned": False, "reason": f"pinned once already ({where})"}
    text, blob = github.read(path, branch)
    if pinned_model(text) == model.uri:
        commit = None
        reason = f"{branch} pins it already"
    else:
        message = f"serve {model.uri} on {branch} ({PROG}: newest registered version)"
        commit = github.write(path, branch, with_model(text, model), blob, message)
        reason = f"pinned on {branch} in {commit[:12]}"
    client.set_model_version_tag(model_name, str(newest.version), PINNED_TAG,
                                 f"{branch}@{commit or 'already'}")  # fmt: skip
    log.info("%s: %s", model.uri, reason)
    return {**summary, "pinned": commit is not None, "commit": commit, "reason": reason}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Pin the newest registered model version in git (one commit on "
        "PIN_BRANCH through GitHub's contents API), once per version. MLflow and the GitHub "
        "token come from model-pin's Vault secret (VAULT_* variables); PIN_GITHUB_API_URL, "
        "PIN_REPOSITORY, PIN_BRANCH and PIN_FILE say where.",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)

    def job() -> dict[str, Any]:
        settings = load_settings(PinSettings)
        secret = load_stage_secret(PinSecret)
        github = GitHubContents(settings.github_api_url, settings.repository,
                                secret.github_token, settings.timeout_seconds)  # fmt: skip
        return pin_newest(
            secret.mlflow_tracking_uri, secret.model_name, github, settings.branch, settings.file
        )

    return run_stage(PROG, job, log_level=args.log_level)


if __name__ == "__main__":
    sys.exit(main())
