"""The cluster run's report from its step log, without a cluster: the steps table (what
every report prints), each step's figures, the AnalysisRuns and the resources held."""

from __future__ import annotations

import pytest

from pipeline_ops.base.steps import StepLog
from pipeline_ops.cluster.run import render_report


def test_the_report_shows_the_steps_their_figures_and_the_failure() -> None:
    steps = StepLog(say=None)
    with steps.step("cluster up") as step:
        step.figures["timings"] = {"etcd": 1.0, "total": 44.0}
    with pytest.raises(RuntimeError), steps.step("Argo CD syncs staging"):
        raise RuntimeError("pr-anomaly-mlops-staging did not sync")
    report = {
        "outcome": "FAILED: pr-anomaly-mlops-staging did not sync", "seconds": 50,
        "steps": steps.as_dicts(),
        "analysis_runs": {"staging": [{"name": "run-1", "kind": "PrePromotion",
                                       "phase": "Successful", "metrics": []}]},
        "resources": {"memory_in_use_gb": 3.1},
    }  # fmt: skip
    text = render_report(report)
    assert "| step | seconds | share | outcome |" in text
    assert "| cluster up |" in text
    assert "FAILED: pr-anomaly-mlops-staging did not sync |" in text
    assert '## cluster up\n\n```json\n{\n  "timings": {\n    "etcd": 1.0' in text
    assert "## Argo CD syncs staging" not in text  # no figures, no section
    assert "| run-1 | PrePromotion | Successful |" in text
    assert '"memory_in_use_gb": 3.1' in text
