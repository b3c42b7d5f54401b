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
