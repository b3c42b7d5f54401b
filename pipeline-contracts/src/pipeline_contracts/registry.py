"""Model references: the one place a registry model URI is parsed and rendered, the
aliases promotion moves, and the one scorer download.

A reference names a registered model and either an alias (``models:/pr-anomaly@champion``)
or a version (``models:/pr-anomaly/3``). Training registers versions and sets
``challenger``; promotion moves ``champion``; serving loads a reference, resolved to its
version before the download so an alias that moves meanwhile cannot mix two versions.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline_contracts.scorer import AnomalyScorer, find_scorer

DEFAULT_MODEL_NAME = "pr-anomaly"
CHAMPION = "champion"  # what production serves
CHALLENGER = "challenger"  # what training registered and the blue/green judges
# A model version's tag once model-pin has pinned it in git (BRANCH@COMMIT): it is pinned once
PINNED_IN_GIT = "pinned_in_git"

_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


@dataclass(frozen=True)
class ModelReference:
    name: str
    alias: str | None = None
    version: str | None = None

    def __post_init__(self) -> None:
        if (self.alias is None) == (self.version is None):
            raise ValueError(f"model {self.name!r}: give an alias or a version, not both")
        if self.version is not None and not self.version.isdigit():
            raise ValueError(f"model version {self.version!r} is not a number")

    @classmethod
    def parse(cls, uri: str) -> ModelReference:
        """``models:/name@alias`` or ``models:/name/version``; anything else is a
        ValueError naming the accepted forms."""
        match = _MODEL_URI.match(uri)
        if not match:
            raise ValueError(
                f"{uri!r} is not a registry model URI: use models:/<name>@<alias> "
                "or models:/<name>/<version>"
            )
        return cls(match["name"], match["alias"], match["version"])

    @classmethod
    def at_alias(cls, name: str, alias: str) -> ModelReference:
        return cls(name, alias=alias)

    @classmethod
    def at_version(cls, name: str, version: str | int) -> ModelReference:
        return cls(name, version=str(version))

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.alias else self.versioned_uri

    @property
    def versioned_uri(self) -> str:
        if self.version is None:
            raise ValueError(f"{self.uri} names an alias: resolve it to a version first")
        return f"models:/{self.name}/{self.version}"

    def __str__(self) -> str:
        return self.uri


def download_scorer(
    tracking_uri: str | None, reference: ModelReference
) -> tuple[str, AnomalyScorer]:
    """The version ``reference`` resolves to, and its scorer: the alias is resolved first and
    that version downloaded (the alias may move during the download). Needs mlflow (the
    ``registry`` extra), imported here so that the contracts themselves need numpy only."""
    import mlflow
    from mlflow import MlflowClient

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient()
    if reference.version is not None:
        resolved = client.get_model_version(reference.name, reference.version)
    else:
        resolved = client.get_model_version_by_alias(reference.name, str(reference.alias))
    version = str(resolved.version)
    with tempfile.TemporaryDirectory(prefix="model-") as target:
        local = mlflow.artifacts.download_artifacts(
            ModelReference.at_version(reference.name, version).uri, dst_path=target
        )
        # the pyfunc keeps the scorer as an artifact: serving reads it directly (numpy
        # arrays, no pyfunc/pandas round trip per request)
        return version, AnomalyScorer.load(find_scorer(Path(local)))
