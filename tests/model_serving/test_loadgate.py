"""`load-gate`: short real Locust runs against a real model-serving process on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_ops.base.processes import free_port

LOAD_GATE = str(Path(sys.executable).parent / "load-gate")
GENEROUS = ["--max-error-ratio", "0.01", "--max-p95-ms", "2000", "--max-p99-ms", "5000"]


def gate(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [LOAD_GATE, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_a_healthy_service_passes_the_gate(served, tmp_path: Path) -> None:
    result = gate(
        "--host", served.url, "--users", "4", "--spawn-rate", "4", "--run-time", "5s",
        *GENEROUS, "--min-rps", "5", "--batch-size", "10", "--report-dir", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "load-gate PASSED" in result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] is True
    assert {c["name"] for c in report["checks"]} == {"error_ratio", "p95_ms", "p99_ms", "rps"}
    total = report["measured"]["total"]
    assert total["requests"] > 25
    assert total["failures"] == 0
    assert total["p50_ms"] <= total["p95_ms"] <= total["p99_ms"] <= total["max_ms"]
    assert set(report["measured"]["endpoints"]) == {"POST /v1/score [1]", "POST /v1/score [10]"}
    markdown = (tmp_path / "report.md").read_text()
    assert markdown.startswith("# Load gate: PASSED")
    assert "| p99_ms |" in markdown


def test_an_impossible_latency_target_fails_the_gate(served, tmp_path: Path) -> None:
    result = gate(
        "--host", served.url, "--users", "2", "--spawn-rate", "2", "--run-time", "4s",
        "--max-error-ratio", "0.01", "--max-p95-ms", "2000", "--max-p99-ms", "0.001",
        "--report-dir", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "breached: p99_ms" in result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] is False
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["p99_ms"]["passed"] is False
    assert checks["p99_ms"]["measured"] > 0.001
    assert checks["error_ratio"]["passed"] is True
    assert "# Load gate: FAILED" in (tmp_path / "report.md").read_text()


def test_an_unreachable_service_fails_the_gate(tmp_path: Path) -> None:
    host = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = gate(
        "--host", host, "--users", "1", "--spawn-rate", "1", "--run-time", "2s", *GENEROUS,
        "--report-dir", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["error_ratio"]["passed"] is False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--host", "http://127.0.0.1:1", "--run-time", "5x"], "--run-time"),
        (["--host", "127.0.0.1:8080"], "--host"),
        (["--host", "http://127.0.0.1:1", "--users", "0"], "--users"),
        (["--host", "http://127.0.0.1:1", "--max-error-ratio", "2"], "--max-error-ratio"),
        (["--host", "http://127.0.0.1:1", "--max-p95-ms", "abc"], "--max-p95-ms"),
        (["--users", "3"], "--host"),
    ],
)
def test_bad_arguments_exit_2_naming_the_flag(args, message, tmp_path: Path) -> None:
    result = gate(*args, "--report-dir", str(tmp_path / "report"), timeout=30)
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "report" / "report.json").exists()
