"""Credentials written into a URI never reach an output: the one redaction, on each of the
outputs that may echo a URI (log lines, a stage's stdout and summary, its error line)."""

from __future__ import annotations

import io
import json
import logging

import pytest

from pipeline_common.cli import StageError, run_stage
from pipeline_common.logging import configure_logging
from pipeline_common.redaction import redact_credentials

PASSWORD = "s3cr3t-pw"
URI = f"http://trainer:{PASSWORD}@mlflow.example:5000"


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        (URI, "http://***@mlflow.example:5000"),
        ("https://token@host/x?y=1", "https://***@host/x?y=1"),
        ("http://u:p@ss@host/a@b", "http://***@host/a@b"),  # an unencoded @ in the password
        ("mongodb://a:b@h1,h2/db", "mongodb://***@h1,h2/db"),
        (f'{{"uri": "{URI}/x"}}', '{"uri": "http://***@mlflow.example:5000/x"}'),
        (f"at: {URI}/#/runs/1 now", "at: http://***@mlflow.example:5000/#/runs/1 now"),
    ],
)
def test_user_information_is_redacted(text, redacted) -> None:
    assert redact_credentials(text) == redacted


@pytest.mark.parametrize(
    "text", ["http://mlflow:5000/x", "mail octocat@github.com", "a@b", "", "no uri at all"]
)
def test_text_without_credentials_is_unchanged(text) -> None:
    assert redact_credentials(text) == text


@pytest.mark.parametrize("json_logs", [True, False], ids=["json", "rich"])
def test_log_lines_never_carry_a_password(json_logs) -> None:
    stream = io.StringIO()
    configure_logging("ml-training", stream=stream, json_logs=json_logs)
    log = logging.getLogger("ml_pipeline.training")
    log.warning("request to %s/api failed", URI, extra={"tracking_uri": URI})
    try:
        raise ConnectionError(f"cannot reach {URI}")
    except ConnectionError:
        log.exception("load failed")
    text = stream.getvalue()
    assert PASSWORD not in text
    assert "http://***@mlflow.example:5000" in text


def test_a_stages_stdout_summary_and_error_line_never_carry_a_password(capfd) -> None:
    def job() -> dict:
        print(f"🏃 View run calm-owl at: {URI}/#/experiments/1/runs/abc")  # as MLflow prints
        return {"tracking_uri": URI, "registered": True}

    assert run_stage("ml-training", job) == 0
    out, err = capfd.readouterr()
    assert PASSWORD not in out + err
    assert json.loads(out)["tracking_uri"] == "http://***@mlflow.example:5000"
    assert "View run calm-owl at: http://***@mlflow.example:5000/#/experiments/1" in err

    def failing() -> None:
        raise StageError(f"MLflow at {URI} refused the run")

    assert run_stage("ml-training", failing) == 1
    out, err = capfd.readouterr()
    assert PASSWORD not in out + err
    assert "MLflow at http://***@mlflow.example:5000 refused the run" in err
