"""The cluster run's check before it starts or pushes anything, without a cluster."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline_ops.cluster import ClusterError
from pipeline_ops.cluster.run import _require_disk


def test_too_little_disk_is_refused_naming_what_is_free_and_needed(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free / 2**30
    with pytest.raises(ClusterError, match=r"GB free under .*needs .* GB.*Free space"):
        _require_disk(tmp_path, free + 1000)
    assert _require_disk(tmp_path, 0) == pytest.approx(free, abs=1)
    # a fresh clone has no cluster state directory yet: its disk is measured
    assert _require_disk(tmp_path / "not" / "made", 0) == pytest.approx(free, abs=1)


def test_what_the_cluster_state_already_holds_counts_towards_the_need(tmp_path: Path) -> None:
    """A second run on a live cluster: its registry and containerd hold the images already, so
    it needs only what may still come (a quarter of a first run's need, at least)."""
    state = tmp_path / "cluster"
    state.mkdir()
    (state / "registry-blob").write_bytes(b"\1" * 2**20 * 64)  # 64 MB held
    free = shutil.disk_usage(tmp_path).free / 2**30
    need = free + 0.04  # more than is free, less than free plus what is held
    assert _require_disk(state, need) == pytest.approx(free, abs=1)
    with pytest.raises(ClusterError, match=r"0\.1 GB held already"):
        _require_disk(state, free + 1)
