"""The run report as a reader sees it: written from a real training run (the session's, in
the real MLflow server) and opened in headless Chromium 1280 px wide: every plot loads, at
its own size, and nothing runs off the page to the right."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pipeline_ops.base.steps import StepLog, steps_table
from pipeline_ops.report import write_run_report

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package, installed by `make chromium`
VIEWPORT = (1280, 900)
# Headless, as root, and quiet on a closed network (without the last four it tries to reach
# Google's services and its refused connections slow every start).
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
PLOTS = {
    "roc_curve",
    "pr_curve",
    "score_distribution",
    "auc_per_fold",
    "auc_per_kind",
    "psi_per_feature",
    "reference_bins",
}
# Run by the page once everything (images included) has loaded or failed to: what a reader
# would see, written into the DOM for --dump-dom to hand back.
PROBE = """<script>
window.addEventListener("load", () => {
  const viewport = window.innerWidth;
  const result = {
    viewport,
    scroll_width: document.documentElement.scrollWidth,
    height: document.documentElement.scrollHeight,
    images: [...document.images].map((image) => ({
      src: image.getAttribute("src"),
      natural_width: image.naturalWidth,
      shown_width: image.getBoundingClientRect().width,
    })),
    // past the right edge, and not inside a table's own scrolling box
    overflowing: [...document.body.querySelectorAll("*")]
      .filter((e) => e.getBoundingClientRect().right > viewport && !e.closest(".table"))
      .map((e) => e.tagName + ": " + (e.textContent || e.getAttribute("src") || "").slice(0, 80)),
  };
  const out = document.createElement("pre");
  out.id = "render-check";
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
});
</script>"""


@pytest.fixture(scope="module")
def report(training_run, tmp_path_factory) -> Path:
    """The HTML report of a run whose training is the session's real one."""
    summary = {
        "spark-preprocess": {"run_id": "run-600", "manifest": str(training_run["manifest"])},
        "ml-training": training_run["result"],
    }
    paths = write_run_report(
        summary,
        training_run["secret"].mlflow_tracking_uri,
        tmp_path_factory.mktemp("reports"),
    )
    return Path(paths["html"])


def render(report: Path, scratch: Path) -> dict[str, Any]:
    """Open ``report`` in Chromium at VIEWPORT; what the probe measured."""
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: run `make chromium`"
    probe = report.with_name("render-check.html")  # beside it: the images' paths resolve
    probe.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    dom = _chromium(scratch, VIEWPORT, "--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="render-check">(.*?)</pre>', dom, re.S)
    assert found, f"the probe did not run; Chromium's page:\n{dom[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def screenshot(report: Path, scratch: Path, height: int) -> Path:
    """The whole page as a PNG beside the report, for a person to look at."""
    path = report.with_name("report.png")
    _chromium(scratch, (VIEWPORT[0], height), f"--screenshot={path}", report.as_uri())
    return path


def _chromium(scratch: Path, size: tuple[int, int], *args: str) -> str:
    profile = scratch / f"chromium-profile-{len(list(scratch.glob('chromium-profile-*')))}"
    done = subprocess.run(
        [
            str(CHROMIUM),
            *FLAGS,
            f"--user-data-dir={profile}",  # a fresh profile each time
            f"--window-size={size[0]},{size[1]}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"chromium exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout


def test_every_plot_loads_at_its_own_size_and_nothing_overflows(report, tmp_path) -> None:
    rendered = render(report, tmp_path)

    images = {Path(i["src"]).stem: i for i in rendered["images"]}
    assert set(images) == PLOTS
    broken = [i["src"] for i in rendered["images"] if i["natural_width"] == 0]
    assert not broken, f"images that did not load: {broken}"
    # not shrunk: a plot's labels are as legible as matplotlib drew them
    shrunk = {
        name: (i["shown_width"], i["natural_width"])
        for name, i in images.items()
        if i["shown_width"] < i["natural_width"]
    }
    assert not shrunk, f"plots shown smaller than drawn (shown, drawn px): {shrunk}"
    assert rendered["scroll_width"] <= rendered["viewport"] == VIEWPORT[0]
    assert rendered["overflowing"] == []

    png = screenshot(report, tmp_path, rendered["height"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_plot_that_is_missing_is_caught(report, tmp_path) -> None:
    copy = tmp_path / "report"
    shutil.copytree(report.parent, copy)
    (removed,) = copy.glob("images/**/psi_per_feature.png")
    removed.unlink()

    rendered = render(copy / report.name, tmp_path)

    broken = [Path(i["src"]).stem for i in rendered["images"] if i["natural_width"] == 0]
    assert broken == ["psi_per_feature"]


def test_the_report_lays_out_the_evaluation_section_by_section(report) -> None:
    text = report.with_name("report.md").read_text()
    titles = re.findall(r"^## (.+)$", text, re.M)
    assert titles == [
        "Features: spark-preprocess",
        "Feature statistics (published rows)",
        "Model: autoencoder beside the baseline",
        "Backtest: rolling origin, both models (mean and worst fold)",
        "Backtest folds: injected anomalies (autoencoder / IsolationForest)",
        "Drift: each test period against the training data before it",
    ]
    sections = dict(zip(titles, re.split(r"^## .+$", text, flags=re.M)[1:], strict=True))
    model = sections["Model: autoencoder beside the baseline"]
    assert "| test split | autoencoder | IsolationForest |" in model
    assert re.search(r"^\| roc_auc \| 0\.\d+ \| 0\.\d+ \|$", model, re.M)
    for name in ("roc_curve", "pr_curve", "score_distribution"):
        assert f"images/test_split/{name}.png" in model
    backtest = sections["Backtest: rolling origin, both models (mean and worst fold)"]
    assert "| metric | autoencoder mean | autoencoder worst fold |" in backtest
    assert "images/backtest/auc_per_kind.png" in backtest
    drift = sections["Drift: each test period against the training data before it"]
    assert re.search(r"alert level 0\.25\. In the registered model's test period \d+ of 13", drift)
    assert "images/drift/reference_bins.png" in drift
    statistics = sections["Feature statistics (published rows)"]
    assert "| log_additions |" in statistics


def test_the_steps_are_the_step_logs_table_and_the_stages_in_the_lists_order(tmp_path) -> None:
    steps = StepLog(say=None)
    with steps.step("data-fetch") as step:
        step.outcome = "5053 inserted | 0 updated"
    summary = {
        "steps": steps.as_dicts(),
        "total_seconds": steps.seconds,
        "promotion": {"promoted": False, "reason": "no challenger is registered"},
        "spark-preprocess": {"rows": 5053},
        "data-fetch": {"inserted": 5053},
    }
    paths = write_run_report(summary, "http://127.0.0.1:9", tmp_path)

    text = Path(paths["markdown"]).read_text()
    assert steps_table(summary["steps"]) in text
    assert re.findall(r"^## (.+)$", text, re.M) == [
        "Steps", "Data: data-fetch", "Features: spark-preprocess", "Promotion (blue/green)",
    ]  # fmt: skip
    page = Path(paths["html"]).read_text()
    assert "<th>step</th><th>seconds</th><th>share</th><th>outcome</th>" in page
    assert "<td>5053 inserted | 0 updated</td>" in page
