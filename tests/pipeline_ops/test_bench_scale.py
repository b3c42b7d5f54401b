"""How `make bench-scale` measures a point: the peak memory of a whole process tree, a tree
killed at its memory cap, and its settings' errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pipeline_common.settings import ConfigError, load_settings
from pipeline_ops.base.processes import minimal_environment, start_ticks
from pipeline_ops.bench_scale import ScaleBenchSettings, run_measured

MB = 1024**2


def _allocating_tree(megabytes: int, seconds: float, pid_file: Path) -> list[str]:
    """A Python process whose child holds ``megabytes`` (every page written) for ``seconds``."""
    child = (
        f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
        f"data = b'x' * ({megabytes} * 1024 * 1024); time.sleep({seconds})"
    )
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}])"
    return [sys.executable, "-c", parent]


def test_the_peak_counts_every_process_of_the_tree(tmp_path) -> None:
    run = run_measured(
        "tree",
        _allocating_tree(200, 1.0, tmp_path / "child.pid"),
        log=tmp_path / "tree.log",
        memory_cap=2048 * MB,
        timeout=60,
        env=minimal_environment(),
    )

    assert run.exit_code == 0
    assert run.stopped is None
    assert 200 * MB < run.peak_bytes < 400 * MB  # the child's 200 MB plus two interpreters


def test_a_tree_past_its_memory_cap_is_killed_whole(tmp_path) -> None:
    pid_file = tmp_path / "child.pid"
    run = run_measured(
        "tree",
        _allocating_tree(300, 60.0, pid_file),
        log=tmp_path / "tree.log",
        memory_cap=150 * MB,
        timeout=60,
        env=minimal_environment(),
    )

    assert run.stopped == "memory"
    assert run.wall_seconds < 30
    assert run.peak_bytes > 150 * MB
    assert start_ticks(int(pid_file.read_text())) is None  # gone (or a zombie, never running)


def test_sizes_are_read_as_comma_separated_numbers(monkeypatch) -> None:
    monkeypatch.setenv("SCALE_SIZES", "1_000_000,100000")

    assert load_settings(ScaleBenchSettings).sizes == [100_000, 1_000_000]


def test_a_size_that_is_not_a_number_is_named(monkeypatch) -> None:
    monkeypatch.setenv("SCALE_FETCH_SIZES", "10k")

    with pytest.raises(ConfigError, match=r"SCALE_FETCH_SIZES: .*whole numbers separated"):
        load_settings(ScaleBenchSettings)


def test_series_are_chosen_by_name_and_an_unknown_one_is_named(monkeypatch) -> None:
    monkeypatch.setenv("SCALE_SERIES", "spark, spark-cluster")
    assert load_settings(ScaleBenchSettings).series == ["spark", "spark-cluster"]

    monkeypatch.setenv("SCALE_SERIES", "spark,cluster")
    with pytest.raises(ConfigError, match=r"SCALE_SERIES: .*spark-cluster.*\(not cluster\)"):
        load_settings(ScaleBenchSettings)
