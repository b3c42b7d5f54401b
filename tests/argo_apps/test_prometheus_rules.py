"""The alert rules shipped in argo-apps/base, by promtool's own unit tests over synthetic
series (tests/argo_apps/rules/*.test.yaml): each alert fires where it should, after its
`for`, and stays quiet on ordinary or incomplete evidence. Plus what ties the rules to the
levels enforced elsewhere, so that changing one without the other fails here."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline_contracts.drift import DRIFT_ALERT_PSI
from pipeline_ops.base import commands
from pipeline_ops.paths import PROJECT_ROOT, TOOLS_DIR
from pipeline_ops.validate.rules import alerts, write_rule_files
from pipeline_ops.validate.tree import RepoTree

RULE_TESTS = Path(__file__).parent / "rules"


@pytest.fixture(scope="module")
def base_objects() -> list[dict[str, Any]]:
    return RepoTree(PROJECT_ROOT, tools_bin=TOOLS_DIR / "bin").base_objects


@pytest.fixture(scope="module")
def promtool() -> str:
    tool = TOOLS_DIR / "bin" / "promtool"
    if not tool.exists():
        pytest.fail(f"{tool} is missing: `make validate` builds it (make test runs that first)")
    return str(tool)


def _test_files() -> list[Path]:
    return sorted(RULE_TESTS.glob("*.test.yaml"))


@pytest.mark.parametrize("test_file", _test_files(), ids=lambda p: p.name)
def test_promtool_unit_tests_of_the_rules_pass(
    test_file: Path, base_objects: list[dict[str, Any]], promtool: str, tmp_path: Path
) -> None:
    write_rule_files(base_objects, tmp_path, annotations=("summary",))
    shutil.copy(test_file, tmp_path)
    result = commands.run([promtool, "test", "rules", test_file.name], cwd=tmp_path,
                          what="promtool test rules", check=False, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_every_alert_has_a_unit_test_in_which_it_fires(base_objects: list[dict[str, Any]]) -> None:
    fired = set()
    for test_file in _test_files():
        for case in yaml.safe_load(test_file.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    fired.add(check["alertname"])
    shipped = set(alerts(base_objects))
    assert {"ModelServingFeatureDrift", "ModelServingErrorRate", "ModelServingLatencyHigh",
            "ModelServingPinNotServed", "DataFetchLate", "SparkPreprocessLate",
            "MlTrainingLate"} <= shipped  # fmt: skip
    assert shipped - fired == set(), "alerts no test expects to fire"


def _level(expr: str) -> float:
    (level,) = re.findall(r"\)\s*>\s*([0-9.]+)\s*$", expr.strip())
    return float(level)


def _template(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(
        o for o in objects if o["kind"] == "AnalysisTemplate" and o["metadata"]["name"] == name
    )


def _load_gate_args(objects: list[dict[str, Any]]) -> dict[str, str]:
    metrics = _template(objects, "model-serving-pre-promotion")["spec"]["metrics"]
    (gate,) = [m for m in metrics if m["name"] == "load-gate"]
    args = gate["provider"]["job"]["spec"]["template"]["spec"]["containers"][0]["args"]
    return dict(zip(args[::2], args[1::2], strict=True))


def test_the_alerts_levels_are_the_levels_enforced_elsewhere(
    base_objects: list[dict[str, Any]],
) -> None:
    """Drift at the contract's level; error rate and p99 at the load gate's (and the error
    rate at the post-promotion analysis'): an alert means what a failed gate means."""
    shipped = alerts(base_objects)
    gate = _load_gate_args(base_objects)
    assert _level(shipped["ModelServingFeatureDrift"]["expr"]) == DRIFT_ALERT_PSI
    assert _level(shipped["ModelServingErrorRate"]["expr"]) == float(gate["--max-error-ratio"])
    assert _level(shipped["ModelServingLatencyHigh"]["expr"]) == float(gate["--max-p99-ms"]) / 1000
    post = _template(base_objects, "model-serving-post-promotion")["spec"]["metrics"][0]
    assert f"result[0] < {gate['--max-error-ratio']}" in post["successCondition"]


def test_spark_preprocess_late_relies_on_drivers_kept_a_day(
    base_objects: list[dict[str, Any]],
) -> None:
    """SparkPreprocessLate reads the succeeded driver pods, which stay as long as their
    SparkApplication (timeToLiveSeconds): a day, the schedule's period."""
    (scheduled,) = [o for o in base_objects if o["kind"] == "ScheduledSparkApplication"]
    assert scheduled["spec"]["template"]["timeToLiveSeconds"] == 86400
    assert scheduled["spec"]["schedule"].split()[2:] == ["*", "*", "*"]  # daily
