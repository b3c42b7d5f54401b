"""Reading a published feature data set: only a complete one (manifest present) with the
feature spec this code computes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from pipeline_common.storage import S3Config, StorageLocation
from pipeline_contracts.features import FEATURE_SPEC_VERSION

MANIFEST = "manifest.json"
LATEST = "LATEST"


class DatasetError(ValueError):
    pass


@dataclass
class FeatureDataset:
    run_id: str
    manifest: dict[str, Any]
    frame: pd.DataFrame


def resolve_run_id(root: StorageLocation, run_id: str | None, s3: S3Config | None = None) -> str:
    if run_id:
        return run_id
    filesystem = root.filesystem(s3)
    try:
        with filesystem.open_input_stream(root.child(LATEST).path) as stream:
            return stream.read().decode().strip()
    except FileNotFoundError:
        raise DatasetError(
            f"no published feature data set under {root.uri} (no {LATEST}): run spark-preprocess"
        ) from None


def load_feature_dataset(
    features_uri: str, run_id: str | None = None, s3: S3Config | None = None
) -> FeatureDataset:
    """The run ``run_id`` (default: the one LATEST names) under ``features_uri``; ``s3`` is
    the connection when ``features_uri`` is ``s3://``. The ``repository`` column comes back
    from the partition folders (``repository=<url-quoted>``)."""
    root = StorageLocation.parse(features_uri)
    run_id = resolve_run_id(root, run_id, s3)
    run_dir = root.child(run_id)
    filesystem = run_dir.filesystem(s3)
    try:
        with filesystem.open_input_stream(run_dir.child(MANIFEST).path) as stream:
            manifest = json.loads(stream.read())
    except FileNotFoundError:
        raise DatasetError(
            f"feature run {run_id} has no {MANIFEST}: it is incomplete (crashed or still "
            "running); use a complete run or re-run spark-preprocess"
        ) from None
    if manifest.get("feature_spec_version") != FEATURE_SPEC_VERSION:
        raise DatasetError(
            f"feature run {run_id} uses feature spec {manifest.get('feature_spec_version')!r}, "
            f"this code expects {FEATURE_SPEC_VERSION!r}: re-run spark-preprocess"
        )
    table = pq.read_table(run_dir.child(manifest["data_path"]).path, filesystem=filesystem)
    frame = table.to_pandas()
    if "repository" in frame and isinstance(frame["repository"].dtype, pd.CategoricalDtype):
        frame["repository"] = frame["repository"].astype(str)
    return FeatureDataset(run_id=run_id, manifest=manifest, frame=frame)
