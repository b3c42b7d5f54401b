"""`python -m pipeline_ops run`, the one-command local pipeline, end to end: its own
platform in a temporary state directory, every stage as a process, and a served answer; a
second operator's run meanwhile refused. Afterwards `down` must leave no server of that state
directory running, the service a run kept included."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline_ops.base.processes import StateFile
from pipeline_ops.local_platform import LocalPlatform

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


def _start(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline_ops", *args],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its stage processes can be stopped with it on timeout
    )


def _finish(process: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"`pipeline_ops {process.args[3:]}` timed out after {timeout}s:\n"
                    f"{stderr[-3000:]}")  # fmt: skip
    return process.returncode, stdout, stderr


def _pipeline_ops(env: dict[str, str], *args: str, timeout: float) -> tuple[int, str, str]:
    return _finish(_start(env, *args), timeout)


def _running(platform_dir: Path) -> dict[str, tuple[int, int | None]]:
    """pid and start ticks of every process on the platform's record (servers, kept
    model-serving), alive."""
    recorded = {n: (s.pid, s.start_ticks) for n, s in LocalPlatform(platform_dir).running().items()}
    records = StateFile(platform_dir / "state.json").records()  # read only: no stale drop
    recorded.update({n: (r.pid, r.start_ticks) for n, r in records.items() if r.alive})
    return recorded


@pytest.mark.slow
def test_pipeline_runs_end_to_end_and_down_stops_everything(tmp_path: Path) -> None:
    local_dir = tmp_path / "local"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VAULT_", "PLATFORM_", "PIPELINE_"))
    }
    env["PIPELINE_LOCAL_DIR"] = str(local_dir)  # read by pipeline_ops.paths at import
    platform_dir = local_dir / "platform"
    lock = platform_dir / ".lock"
    services: dict[str, tuple[int, int | None]] = {}
    try:
        first = _start(env, "run", "--keep-serving")
        for _ in range(300):  # until the first run holds the platform
            if lock.exists() and f"pid {first.pid} " in lock.read_text():
                break
            time.sleep(0.1)
        else:
            pytest.fail("the first `make run` never took the platform's lock")
        # a second operator's `make run` meanwhile is refused at once, naming the first
        started = time.monotonic()
        code, _, stderr = _pipeline_ops(env, "run", timeout=60)
        assert code == 1, stderr
        assert f"make run: {platform_dir} is in use by pid {first.pid} (" in stderr, stderr
        assert time.monotonic() - started < 30

        code, stdout, stderr = _finish(first, timeout=600)
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
        # the steps as the step log's table, in the stages' order
        assert "| step | seconds | share | outcome |" in text
        names = re.findall(r"^\| ([^|]+?) \| [\d.]+ \| \d+% \|", text, re.M)
        assert names == ["platform: Vault, MongoDB, MLflow", "data-fetch", "spark-preprocess",
                         "ml-training", "blue/green: analysis and promotion"]  # fmt: skip
        # the evaluation as tables a reader can scan: one row per feature, one per fold
        assert "| feature | mean | stddev | min | max |" in text
        assert "| log_additions |" in text
        assert "| fold | test period | test rows | reverted |" in text
        for plot in ("roc_curve", "score_distribution", "auc_per_kind", "psi_per_feature"):
            assert f"{plot}.png" in text
        # The first run has no champion: green is promoted if it passes the cluster's
        # analysis. On a loaded machine the load gate may refuse it; then nothing moves.
        promoted = "promotion        promoted: first model" in stdout
        kept = _running(platform_dir).get("model-serving-green")
        if promoted:
            assert f"champion         version {version.group(1)}" in stdout
            assert "PROMOTED" in text, text
            assert "analysis load-gate | pass" in text, text
            assert kept, "KEEP_SERVING: the promoted service is on the platform's record"
            assert re.search(r"serving +http://127\.0\.0\.1:\d+ \(stop with `make down`\)",
                             stdout)  # fmt: skip
        else:
            assert "promotion        not promoted: analysis failed: load-gate" in stdout, stdout
            assert "champion         version None" in stdout
            assert "analysis load-gate | FAIL" in text, text
            assert kept is None

        # a second run with no new data rebuilds nothing; kept serving, it reuses the service
        code, stdout, stderr = _pipeline_ops(env, "run", "--keep-serving", timeout=600)
        assert code == 0, f"second run exited {code}:\n{stdout[-2000:]}\n{stderr[-4000:]}"
        assert "0 new, 0 updated" in stdout
        assert "spark-preprocess no new data" in stdout
        assert "ml-training      no new features" in stdout
        if promoted:
            assert f"version {version.group(1)} is already champion" in stdout
            assert _running(platform_dir).get("model-serving-green") == kept
        services = _running(platform_dir)
        assert {"vault", "mongo", "mlflow"} <= set(services)
    finally:
        if platform_dir.exists() and not services:
            services = _running(platform_dir)
        code, stdout, stderr = _pipeline_ops(env, "down", timeout=180)
    assert code == 0, stderr
    assert "stopped: " in stdout
    if promoted:
        assert "model-serving-green" in stdout
    still_running = {
        name: pid for name, (pid, ticks) in services.items() if _start_ticks(pid) == ticks
    }
    assert not still_running
    server_groups = {pid for pid, _ in services.values()}
    leftovers = {pid for pid, group in _process_groups().items() if group in server_groups}
    assert not leftovers, f"processes of the stopped servers remain: {leftovers}"
    assert _running(platform_dir) == {}
