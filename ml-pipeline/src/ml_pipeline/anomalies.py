"""Labelled anomalies for evaluation: realistic anomalous pull requests, and real weak labels.

Real data has almost no labels, so the test split is evaluated against *injected* anomalies:
modified copies of real test rows. Each copy changes the raw columns the way a kind of
suspicious pull request would, then its features are recomputed with
:func:`pipeline_contracts.features.compute_features`, so every injected row obeys the feature spec.
Kinds (:data:`KINDS`), each drawn with equal probability from a seeded generator:

- ``huge_dump``: one commit adding 20-200 times the repository's median change (at least
  3,000 lines) across 60-600 files, with an empty description.
- ``mass_deletion``: 3,000-30,000 deleted lines across 80-800 files, almost nothing added.
- ``instant_offhours_merge``: a large change (1,500-8,000 lines, 30-300 files, one commit)
  opened and merged within 1-3 minutes between 01:00 and 04:59 UTC on a weekend.
- ``newcomer_bulk``: an author with no earlier pull request in the repository lands
  2,000-20,000 lines across 100-900 files in 1-3 commits with a one-word title.

Published rows carry no title or body (only their lengths, as features), so the copy starts
from placeholder strings of the published lengths, which keeps untouched features equal to
the original row's (a test checks that round trip).

Weak labels: ``<owner>__<repo>.reverts.json`` files (see ``data/samples/README.md``) mark pull
requests that were later reverted; :func:`revert_labels` turns them into a 0/1 column.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ml_pipeline.feature_frames import compute_features
from pipeline_contracts.features import CONTEXT_COLUMNS, FEATURE_NAMES

KINDS = ("huge_dump", "mass_deletion", "instant_offhours_merge", "newcomer_bulk")


def raw_inputs(rows: pd.DataFrame) -> pd.DataFrame:
    """The raw input columns ``compute_features`` reads, rebuilt from published rows."""
    frame = pd.DataFrame(index=rows.index)
    for column in ("additions", "deletions", "changed_files", "commits", *CONTEXT_COLUMNS):
        frame[column] = rows[column].astype("float64")
    frame["created_at"] = pd.to_datetime(rows["created_at"], utc=True)
    if "merged_at" in rows:
        frame["merged_at"] = pd.to_datetime(rows["merged_at"], utc=True)
    else:  # rebuild it from the time to merge (an unmerged row has all merge features 0)
        hours = np.expm1(rows["log_hours_to_merge"].astype("float64"))
        merged = frame["created_at"] + pd.to_timedelta(hours, unit="h")
        unmerged = (rows["merge_hour_sin"] == 0) & (rows["merge_hour_cos"] == 0)
        frame["merged_at"] = merged.where(~unmerged, pd.NaT)
    for column in ("title", "body"):
        lengths = np.rint(np.expm1(rows[f"log_{column}_length"].astype("float64"))).astype(int)
        frame[column] = ["x" * int(n) for n in lengths]
    return frame


def inject_anomalies(rows: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """``n`` anomalous copies of randomly chosen ``rows`` (features recomputed), with a
    ``kind`` column. ``rows`` must be the test split only: nothing here may reach training."""
    if len(rows) == 0 or n <= 0:
        raise ValueError("inject_anomalies needs at least one real row and n > 0")
    rng = np.random.default_rng(seed)
    picked = rows.iloc[rng.integers(0, len(rows), size=n)].reset_index(drop=True)
    raw = raw_inputs(picked)
    kinds = rng.choice(KINDS, size=n)
    median = raw["repository_median_changes"].clip(lower=1.0).to_numpy()
    created = raw["created_at"].copy()
    merged = raw["merged_at"].copy()
    for i, kind in enumerate(kinds):
        if kind == "huge_dump":
            raw.loc[i, "additions"] = float(round(max(3000.0, median[i] * rng.uniform(20, 200))))
            raw.loc[i, "deletions"] = float(rng.integers(0, 50))
            raw.loc[i, "changed_files"] = float(rng.integers(60, 600))
            raw.loc[i, "commits"] = 1.0
            raw.loc[i, "body"] = ""
        elif kind == "mass_deletion":
            raw.loc[i, "deletions"] = float(rng.integers(3000, 30000))
            raw.loc[i, "additions"] = float(rng.integers(0, 20))
            raw.loc[i, "changed_files"] = float(rng.integers(80, 800))
        elif kind == "instant_offhours_merge":
            raw.loc[i, "additions"] = float(rng.integers(1000, 6000))
            raw.loc[i, "deletions"] = float(rng.integers(500, 2000))
            raw.loc[i, "changed_files"] = float(rng.integers(30, 300))
            raw.loc[i, "commits"] = 1.0
            day = created[i].normalize()
            day += pd.Timedelta(days=(5 - day.dayofweek) % 7)  # the next Saturday (or today)
            start = day + pd.Timedelta(hours=float(rng.uniform(1, 4.9)))
            created[i] = start
            merged[i] = start + pd.Timedelta(minutes=float(rng.uniform(1, 3)))
        else:  # newcomer_bulk
            raw.loc[i, "author_prior_pull_requests"] = 0.0
            raw.loc[i, "additions"] = float(rng.integers(2000, 20000))
            raw.loc[i, "changed_files"] = float(rng.integers(100, 900))
            raw.loc[i, "commits"] = float(rng.integers(1, 4))
            raw.loc[i, "title"] = "update"
    raw["created_at"], raw["merged_at"] = created, merged
    injected = picked.copy()
    for column in ("additions", "deletions", "changed_files", "commits"):
        injected[column] = raw[column].astype("int64")
    for column in CONTEXT_COLUMNS:
        injected[column] = raw[column]
    injected["created_at"] = raw["created_at"]
    if "merged_at" in injected:
        injected["merged_at"] = raw["merged_at"]
    injected[list(FEATURE_NAMES)] = compute_features(raw).to_numpy()
    injected["kind"] = kinds
    return injected


def load_revert_labels(labels_dir: Path | None) -> dict[str, set[int]]:
    """``{repository: {reverted pull request numbers}}`` from ``*.reverts.json`` files."""
    labels: dict[str, set[int]] = {}
    if labels_dir is None or not Path(labels_dir).is_dir():
        return labels
    for path in sorted(Path(labels_dir).glob("*.reverts.json")):
        document = json.loads(path.read_text(encoding="utf-8"))
        reverted = {int(n) for n, entry in document.get("reverted", {}).items() if entry}
        labels.setdefault(str(document["repo"]), set()).update(reverted)
    return labels


def revert_labels(rows: pd.DataFrame, labels: dict[str, set[int]]) -> np.ndarray:
    """1 where the row's pull request was later reverted, else 0 (not known to be)."""
    return np.array(
        [
            int(int(number) in labels.get(str(repo), ()))
            for repo, number in zip(rows["repository"], rows["number"], strict=True)
        ],
        dtype=int,
    )
