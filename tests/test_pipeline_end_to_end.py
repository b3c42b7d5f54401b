"""`python -m pipeline_ops run`, the one-command local pipeline, end to end: its own
platform in a temporary state directory, every stage as a process, and a served answer.
Afterwards `down` must leave no server of that state directory running."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_PULL_REQUESTS = 5053  # both bundled sample files


def _process_groups() -> dict[int, int]:
    """pid -> process group of every live (non-zombie) process."""
    groups = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            groups[int(stat.parent.name)] = int(fields[2])
    return groups


def _start_ticks(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else int(fields[19])


def _pipeline_ops(command: str, env: dict[str, str], timeout: float):
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline_ops", command],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its stage processes can be stopped with it on timeout
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"`pipeline_ops {command}` timed out after {timeout}s:\n{stderr[-3000:]}")
    return process.returncode, stdout, stderr


@pytest.mark.slow
def test_pipeline_runs_end_to_end_and_down_stops_everything(tmp_path: Path) -> None:
    local_dir = tmp_path / "local"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VAULT_", "PLATFORM_", "PIPELINE_"))
    }
    env["PIPELINE_LOCAL_DIR"] = str(local_dir)  # read by pipeline_ops.paths at import
    state_file = local_dir / "platform" / "state.json"
    services: dict[str, dict] = {}
    try:
        code, stdout, stderr = _pipeline_ops("run", env, timeout=600)
        assert code == 0, f"run exited {code}:\n{stdout[-2000:]}\n{stderr[-4000:]}"
        assert f"{SAMPLE_PULL_REQUESTS} pull requests" in stdout
        rows = re.search(r"spark-preprocess (\d+) feature rows in (\S+)", stdout)
        assert rows, stdout
        assert int(rows.group(1)) == SAMPLE_PULL_REQUESTS
        assert rows.group(2).startswith(str(local_dir))  # not the developer's .local
        version = re.search(r"model pr-anomaly version (\d+) \(alias challenger\)", stdout)
        assert version, stdout
        report = Path(re.search(r"report +(\S+report\.md)", stdout).group(1))
        text = report.read_text()
        assert report.with_name("report.html").exists()
        # the evaluation as tables a reader can scan: one row per feature, one per fold
        assert "| feature | mean | stddev | min | max |" in text
        assert "| log_additions |" in text
        assert "| fold | test period | test rows | reverted |" in text
        for plot in ("roc_curve", "score_distribution", "auc_per_kind", "psi_per_feature"):
            assert f"{plot}.png" in text
        # The first run has no champion: green is promoted if it passes the cluster's
        # analysis. On a loaded machine the load gate may refuse it; then nothing moves.
        promoted = "promotion        promoted: first model" in stdout
        if promoted:
            assert f"champion         version {version.group(1)}" in stdout
            assert "PROMOTED" in text, text
            assert "analysis load-gate | pass" in text, text
        else:
            assert "promotion        not promoted: analysis failed: load-gate" in stdout, stdout
            assert "champion         version None" in stdout
            assert "analysis load-gate | FAIL" in text, text

        # a second run with no new data rebuilds nothing
        code, stdout, stderr = _pipeline_ops("run", env, timeout=600)
        assert code == 0, f"second run exited {code}:\n{stdout[-2000:]}\n{stderr[-4000:]}"
        assert "0 new, 0 updated" in stdout
        assert "spark-preprocess no new data" in stdout
        assert "ml-training      no new features" in stdout
        if promoted:
            assert f"version {version.group(1)} is already champion" in stdout
        services = json.loads(state_file.read_text())["processes"]
        assert set(services) == {"vault", "mongo", "mlflow"}
    finally:
        if state_file.exists() and not services:
            services = json.loads(state_file.read_text())["processes"]
        code, stdout, stderr = _pipeline_ops("down", env, timeout=180)
    assert code == 0, stderr
    assert "stopped: " in stdout
    still_running = {
        name: svc["pid"]
        for name, svc in services.items()
        if _start_ticks(svc["pid"]) == svc["start_ticks"]
    }
    assert not still_running
    server_groups = {svc["pid"] for svc in services.values()}
    leftovers = {pid for pid, group in _process_groups().items() if group in server_groups}
    assert not leftovers, f"processes of the stopped servers remain: {leftovers}"
    assert json.loads(state_file.read_text())["processes"] == {}
