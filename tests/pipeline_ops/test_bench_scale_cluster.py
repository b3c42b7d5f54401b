"""The cluster point of `make bench-scale`, offline: the SparkApplication it submits, how it
finds a pod's memory cgroup and reads its peak, and how a run's end is judged. (The point
itself runs only against `make cluster-up`'s cluster, in the bench: no cluster test.)"""

from __future__ import annotations

from pathlib import Path

from pipeline_ops.bench_scale_cluster import (
    DATA_DIR,
    PodMemory,
    Resources,
    cgroup_peak_bytes,
    cgroup_pids,
    outcome,
    pod_cgroup,
    program,
    spark_application,
)

UID = "0b6c4f7e-1d2a-4c3b-9e8f-7a6b5c4d3e2f"


def test_the_application_runs_the_bench_program_on_a_driver_and_two_executors() -> None:
    share = Path("/tmp/bench-scale-x/cluster")
    app = spark_application(
        "bench-scale-100000-abc", "registry/spark@sha256:1", share,
        ["--engine", "spark", "--input", f"{DATA_DIR}/pulls.parquet"],
        Resources(driver_memory="2g", executor_memory="2g", memory_overhead="1g"),
    )  # fmt: skip
    spec = app["spec"]

    assert spec["mode"] == "cluster"
    assert spec["executor"]["instances"] == 2
    assert spec["driver"]["cores"] == spec["executor"]["cores"] == 1
    assert (spec["driver"]["memory"], spec["executor"]["memory"]) == ("2g", "2g")
    assert spec["mainApplicationFile"] == "local:///opt/program/scale_preprocess.py"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["data"]["hostPath"]["path"] == str(share)
    assert volumes["program"]["configMap"]["name"] == "bench-scale-100000-abc"
    for pod in (spec["driver"], spec["executor"]):  # both see the file and the output
        assert {"name": "data", "mountPath": DATA_DIR} in pod["volumeMounts"]
    assert "def run_spark" in program("bench-scale-100000-abc")["data"]["scale_preprocess.py"]


def test_a_pods_cgroup_is_found_in_v1_and_v2_layouts_and_its_peak_read(tmp_path) -> None:
    v1 = tmp_path / "memory" / "kubepods" / "burstable" / f"pod{UID}"
    (v1 / "container-a").mkdir(parents=True)
    (v1 / "memory.max_usage_in_bytes").write_text("3000\n")
    (v1 / "cgroup.procs").write_text("")
    (v1 / "container-a" / "cgroup.procs").write_text("11\n12\n")
    systemd = tmp_path / "kubepods.slice" / "kubepods-burstable.slice"
    v2 = systemd / f"kubepods-burstable-pod{UID.replace('-', '_')}.slice"
    v2.mkdir(parents=True)
    (v2 / "memory.peak").write_text("4000\n")

    assert pod_cgroup(UID, (tmp_path / "memory",)) == v1
    assert pod_cgroup(UID, (tmp_path,)) == v2
    assert pod_cgroup("no-such-pod", (tmp_path / "memory", tmp_path)) is None
    assert (cgroup_peak_bytes(v1), cgroup_peak_bytes(v2)) == (3000, 4000)
    assert sorted(cgroup_pids(v1)) == [11, 12]  # the containers' processes, below the pod


def _status(state: str) -> dict:
    return {"applicationState": {"state": state, "errorMessage": "driver failed"}}


def test_a_run_is_ok_only_completed_with_the_programs_line_and_oomkilled_is_out_of_memory(
    tmp_path,
) -> None:
    memory = PodMemory(cgroup_peaks={"driver": 2, "exec-1": 3})
    killed_box = {"lastState": {"terminated": {"reason": "OOMKilled"}}}
    oom = [{"metadata": {"name": "exec-1"}, "status": {"containerStatuses": [killed_box]}}]
    log = tmp_path / "driver.log"

    ok = outcome(_status("COMPLETED"), [], memory, 90.0, {"seconds": 50.0}, None, log)
    assert (ok.outcome, ok.result["cgroup_peak_bytes"], ok.result["pods"]) == ("ok", 5, 2)
    assert outcome(_status("COMPLETED"), [], memory, 9, {}, None, log).outcome == "failed"
    failed = outcome(_status("FAILED"), [], memory, 9, {}, None, log)
    assert failed.outcome == "failed"
    assert "driver failed" in failed.note
    killed = outcome(_status("FAILED"), oom, memory, 9, {}, None, log)
    assert (killed.outcome, killed.note) == ("out of memory", "OOMKilled: exec-1")
    assert outcome(_status("RUNNING"), [], memory, 9, {}, "time", log).outcome == "timed out"
