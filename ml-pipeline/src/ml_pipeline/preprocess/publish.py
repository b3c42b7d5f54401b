"""Writing a run: Parquet from the executors, then the manifest, then LATEST; then the
folders of runs that were killed mid-way are removed.

The executors write their own rows with pyarrow straight to the store (a local directory
or S3), partitioned by repository the way Spark names it (``repository=<url-quoted>/``).
One writer for both stores: S3 needs no hadoop-aws and no 500 MB AWS SDK bundle, and a
file's name is ``part-<spark partition>.parquet``, so a retried task overwrites its own file
instead of adding a copy. Nothing under a run is read before its manifest exists.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs
import pyarrow.parquet as pq
from pyspark.sql import DataFrame

from ml_pipeline.datasets import LATEST, MANIFEST
from pipeline_common.storage import S3Config, StorageLocation

WRITTEN_SCHEMA = "path string, rows long"
# A run that stopped because too much was quarantined: kept, with why, for inspection.
REFUSED = "refused.json"
RUN_ID_FORMAT = "%Y%m%dT%H%M%SZ"
_RUN_ID = re.compile(r"^(\d{8}T\d{6}Z)-[0-9a-f]{6}$")

log = logging.getLogger(__name__)


def new_run_id(now: datetime | None = None) -> str:
    """A run's folder name: when it started, so folders sort by start, and a random tail."""
    return (now or datetime.now(UTC)).strftime(RUN_ID_FORMAT) + "-" + uuid.uuid4().hex[:6]


def run_started_at(run_id: str) -> datetime | None:
    """When the run ``run_id`` started; None for a folder that is not a run's."""
    match = _RUN_ID.match(run_id)
    if not match:
        return None
    return datetime.strptime(match.group(1), RUN_ID_FORMAT).replace(tzinfo=UTC)


def write_parquet(
    frame: DataFrame,
    target: StorageLocation,
    s3: S3Config | None,
    partition_by: str | None = None,
    sort_by: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """Write ``frame`` under ``target`` from the executors; the files written (path, rows)."""

    def write_partition(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        nonempty = [batch for batch in batches if batch.num_rows]
        if not nonempty:
            return
        task = TaskContext.get()
        if task is None:
            raise RuntimeError("write_partition runs in a Spark task (mapInArrow), not the driver")
        table = pa.Table.from_batches(nonempty)
        if sort_by:
            table = table.sort_by([(name, "ascending") for name in sort_by])
        filesystem = target.filesystem(s3)
        name = f"part-{task.partitionId():05d}.parquet"
        groups: list[tuple[str, pa.Table]] = []
        if partition_by:
            for value in pc.unique(table[partition_by]).to_pylist():
                rows = table.filter(pc.equal(table[partition_by], value))
                folder = f"{partition_by}={quote(str(value), safe='')}"
                groups.append((f"{folder}/{name}", rows.drop_columns([partition_by])))
        else:
            groups.append((name, table))
        paths, counts = [], []
        for relative, rows in groups:
            location = target.child(relative)
            filesystem.create_dir(location.path.rsplit("/", 1)[0], recursive=True)
            pq.write_table(rows, location.path, filesystem=filesystem)
            paths.append(relative)
            counts.append(rows.num_rows)
        yield pa.RecordBatch.from_pydict({"path": paths, "rows": counts})

    written = frame.mapInArrow(write_partition, WRITTEN_SCHEMA).collect()
    return sorted(({"path": r.path, "rows": r.rows} for r in written), key=lambda f: f["path"])


def write_manifest(
    run_dir: StorageLocation, s3: S3Config | None, manifest: dict, name: str = MANIFEST
) -> None:
    with run_dir.filesystem(s3).open_output_stream(run_dir.child(name).path) as out:
        out.write(json.dumps(manifest, indent=2, sort_keys=True).encode())


def remove_abandoned_runs(
    root: StorageLocation, s3: S3Config | None, started_before: datetime
) -> list[str]:
    """Delete the folders of runs that started before ``started_before`` and have neither a
    manifest nor a refusal record: runs killed mid-way, never read by anyone. Returns their
    ids."""
    filesystem = root.filesystem(s3)
    try:
        entries = filesystem.get_file_info(pyarrow.fs.FileSelector(root.path))
    except FileNotFoundError:
        return []
    removed = []
    for entry in entries:
        started = run_started_at(entry.base_name)
        if entry.type != pyarrow.fs.FileType.Directory or not started:
            continue
        if started >= started_before:
            continue
        markers = filesystem.get_file_info([f"{entry.path}/{MANIFEST}", f"{entry.path}/{REFUSED}"])
        if any(marker.type != pyarrow.fs.FileType.NotFound for marker in markers):
            continue
        filesystem.delete_dir(entry.path)
        log.info("removed abandoned run", extra={"run_id": entry.base_name})
        removed.append(entry.base_name)
    return sorted(removed)


def publish_latest(root: StorageLocation, run_id: str, s3: S3Config | None = None) -> None:
    """Point LATEST at ``run_id``; a reader sees the old or the new id, never half.

    Locally a rename; on S3 one PUT of a small object, which S3 makes visible whole.
    """
    filesystem = root.filesystem(s3)
    if root.scheme == "s3":
        with filesystem.open_output_stream(root.child(LATEST).path) as out:
            out.write(run_id.encode())
        return
    filesystem.create_dir(root.path, recursive=True)
    tmp = root.child(f".{LATEST}.{uuid.uuid4().hex}")
    with filesystem.open_output_stream(tmp.path) as out:
        out.write(run_id.encode())
    filesystem.move(tmp.path, root.child(LATEST).path)
