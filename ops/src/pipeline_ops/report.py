"""The run report of `make run`: one structure, rendered as Markdown and as HTML; the steps
as the step log's own table (``steps_table``), then a section per stage in the list's order."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline_ops import stages
from pipeline_ops.base.steps import STEP_COLUMNS, step_rows, steps_table

FETCH = stages.stage("data-fetch")
PREPROCESS = stages.stage("spark-preprocess")
TRAINING = stages.stage("ml-training")
SERVING = stages.stage("model-serving")


@dataclass
class Section:
    title: str
    rows: list[tuple[str, str]] = field(default_factory=list)  # a two-column table
    text: str = ""
    images: list[str] = field(default_factory=list)  # paths relative to the report
    columns: list[str] = field(default_factory=list)  # a table with a header, when given
    table: list[list[str]] = field(default_factory=list)
    markdown: str = ""  # the table in Markdown as given (the step log's), instead of columns


@dataclass
class RunReport:
    title: str
    sections: list[Section] = field(default_factory=list)

    def add(self, title: str, **kwargs: Any) -> Section:
        section = Section(title, **kwargs)
        self.sections.append(section)
        return section

    def shown(self) -> list[Section]:
        """The sections with anything in them (a run that skipped a step has less to say)."""
        return [s for s in self.sections if s.text or s.rows or s.table or s.images]

    def markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        for section in self.shown():
            lines += [f"## {section.title}", ""]
            if section.text:
                lines += [section.text, ""]
            if section.rows:
                lines += ["| | |", "|---|---|"]
                lines += [f"| {_md(k)} | {_md(v)} |" for k, v in section.rows]
                lines.append("")
            if section.markdown:
                lines += [section.markdown, ""]
            elif section.columns:
                lines.append("| " + " | ".join(_md(c) for c in section.columns) + " |")
                lines.append("|" + "---|" * len(section.columns))
                lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in section.table]
                lines.append("")
            lines += [f"![{Path(image).stem}]({image})" for image in section.images]
            if section.images:
                lines.append("")
        return "\n".join(lines)

    def html(self) -> str:
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        for section in self.shown():
            body.append(f"<section><h2>{html.escape(section.title)}</h2>")
            if section.text:
                body.append(f"<p>{html.escape(section.text)}</p>")
            if section.rows:
                cells = "".join(
                    f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                    for k, v in section.rows
                )
                body.append(f'<div class="table"><table class="pairs">{cells}</table></div>')
            if section.columns:
                head = "".join(f"<th>{html.escape(c)}</th>" for c in section.columns)
                rows = "".join(
                    "<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in section.table
                )
                body.append(
                    f'<div class="table"><table><thead><tr>{head}</tr></thead>'
                    f"<tbody>{rows}</tbody></table></div>"
                )
            if section.images:
                body.append('<div class="plots">')
                body += [
                    f'<a href="{html.escape(image)}"><img src="{html.escape(image)}" '
                    f'alt="{html.escape(Path(image).stem)}"></a>'
                    for image in section.images
                ]
                body.append("</div>")
            body.append("</section>")
        return (
            f"<!doctype html><html><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>"
            f"{html.escape(self.title)}</title><style>{_STYLE}</style></head><body>"
            + "\n".join(body)
            + "</body></html>"
        )

    def write(self, directory: Path) -> dict[str, str]:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "report.md").write_text(self.markdown())
        (directory / "report.html").write_text(self.html())
        return {"markdown": str(directory / "report.md"), "html": str(directory / "report.html")}


# One column of at most 960 px; a table wider than that scrolls inside its own box, never
# the page; long identifiers (paths, hashes) wrap; numbers are right-aligned in even digits.
_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;"
    "color:#222;line-height:1.4}"
    "h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}"
    ".table{overflow-x:auto;margin:.6em 0}"
    "table{border-collapse:collapse;font-size:14px}"
    "th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}"
    "thead th{background:#f3f3f3}.pairs th{background:#fafafa;white-space:nowrap}"
    "td{overflow-wrap:anywhere}"
    "td.number{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}"
    ".plots{display:flex;flex-wrap:wrap;gap:12px;margin:.6em 0}"
    ".plots img{display:block;max-width:100%;height:auto;border:1px solid #eee}"
)
_NUMBER = re.compile(r"-?\d+(\.\d+)?(e[-+]?\d+)?")


def _cell(value: str) -> str:
    """A cell of a table with a header: numbers (and ``a / b`` pairs of them) right-aligned."""
    numeric = all(_NUMBER.fullmatch(part) for part in value.split(" / "))
    return f"<td{' class=number' if numeric else ''}>{html.escape(value)}</td>"


def _md(value: str) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return "" if value is None else str(value)


def _fixed(value: float | None, decimals: int = 3) -> str:
    """A fixed number of decimals: a column of them lines up on the decimal point."""
    return "" if value is None else f"{value:.{decimals}f}"


def _scalars(summary: dict[str, Any], leave_out: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    return [
        (k, fmt(v))
        for k, v in summary.items()
        if not isinstance(v, dict | list) and k not in leave_out
    ]


def _read_manifest(uri: str | None) -> dict[str, Any]:
    if not uri:
        return {}
    path = Path(uri.removeprefix("file://"))
    return json.loads(path.read_text()) if path.is_file() else {}


MODELS = {"autoencoder": "autoencoder", "isolation_forest": "IsolationForest"}
METRICS = ("roc_auc", "pr_auc", "f1", "precision", "recall", "precision_at_k")
FOLD_METRICS = ("roc_auc", "pr_auc", "f1", "precision_at_k")
# The plot folders a training run logs (plots/<folder>/*.png), each shown in its section.
PLOT_FOLDERS = ("test_split", "backtest", "drift")


def _evaluation_sections(
    report: RunReport, training: dict[str, Any], tracking_uri: str, out: Path
) -> None:
    """The model on its test split beside the baseline, the backtest and the drift: tables
    from the stage's summary, the run's metrics and its backtest.json; the run's plots."""
    model = report.add(
        "Model: autoencoder beside the baseline",
        rows=_scalars(
            training, leave_out=("threshold", "test_roc_auc", "isolation_forest_test_roc_auc")
        ),
    )
    backtest = report.add("Backtest: rolling origin, both models (mean and worst fold)")
    folds = report.add("Backtest folds: injected anomalies (autoencoder / IsolationForest)")
    drift = report.add("Drift: each test period against the training data before it")
    summary = training.get("backtest")
    if summary:
        behind = summary.get("autoencoder_behind") or []
        backtest.text = (
            f"{summary['folds']} folds, each trained on the past of its test period. "
            + (
                "The autoencoder is ahead of the IsolationForest on ROC AUC and PR AUC in "
                "every fold."
                if not behind
                else "The autoencoder trails the IsolationForest in: "
                + "; ".join(f"fold {b['fold']} {b['metric']} by {b['by']:.4f}" for b in behind)
            )
        )
        backtest.columns = ["metric"] + [
            f"{label} {s}" for label in MODELS.values() for s in ("mean", "worst fold")
        ]
        backtest.table = [
            [name]
            + [_fixed(summary.get(f"{m}_{name}_{s}"), 4) for m in MODELS for s in ("mean", "min")]
            for name in FOLD_METRICS
        ]
    run_id = training.get("mlflow_run_id")
    if not run_id:
        return
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    metrics = client.get_run(run_id).data.metrics
    model.columns = ["test split", *MODELS.values()]
    prefixes = ("", "isolation_forest_")  # the run's metric names, MODELS' order
    model.table = [
        [name, *(_fixed(metrics.get(f"{p}test_{name}"), 4) for p in prefixes)] for name in METRICS
    ] + [["threshold", *(_fixed(metrics.get(f"{p}threshold"), 4) for p in prefixes)]]
    document = _backtest_document(client, run_id, out)
    if document:
        folds.columns = ["fold", "test period", "test rows", "reverted", *FOLD_METRICS]
        folds.table = [
            [
                str(fold["fold"]),
                f"{fold['test_from']} .. {fold['test_to']}",
                str(fold["test_rows"]),
                str(fold["reverted_in_test"]),
                *(
                    " / ".join(f"{fold[f'{m}_{name}']:.3f}" for m in MODELS)
                    for name in FOLD_METRICS
                ),
            ]
            for fold in document["folds"]
        ]
        drift.text = _drift_text(document)
    plots = _download_plots(client, run_id, out)
    for folder, section in zip(PLOT_FOLDERS, (model, backtest, drift), strict=True):
        section.images += plots.pop(folder, [])
    model.images += [image for images in plots.values() for image in images]  # older layouts


def _download_plots(client, run_id: str, out: Path) -> dict[str, list[str]]:
    """Every PNG the run logged under plots/, downloaded beside the report, by folder."""
    found: dict[str, list[str]] = {}
    pending = ["plots"]
    while pending:
        for item in client.list_artifacts(run_id, pending.pop()):
            if item.is_dir:
                pending.append(item.path)
            elif item.path.endswith(".png"):
                folder = Path(item.path).parent.relative_to("plots").as_posix()
                target = out / "images" / folder
                target.mkdir(parents=True, exist_ok=True)
                local = Path(client.download_artifacts(run_id, item.path, str(target)))
                found.setdefault(folder, []).append(local.relative_to(out).as_posix())
    return {folder: sorted(images, key=_plot_order) for folder, images in found.items()}


def _plot_order(image: str) -> tuple[int, str]:
    """The ROC curve before the precision-recall curve (as they are usually read), then the
    rest by name."""
    first = ("roc_curve", "pr_curve")
    stem = Path(image).stem
    return (first.index(stem) if stem in first else len(first), stem)


def _backtest_document(client, run_id: str, out: Path) -> dict[str, Any]:
    from mlflow.exceptions import MlflowException

    try:
        local = client.download_artifacts(run_id, "backtest.json", str(out))
    except (OSError, MlflowException):  # a run from before the backtest
        return {}
    return json.loads(Path(local).read_text())


def _drift_text(document: dict[str, Any]) -> str:
    psi = document.get("drift_psi") or {}
    if not psi:
        return ""
    alert = document["drift_alert_psi"]
    newest = psi[max(psi, key=int)]
    over = sorted(((v, k) for k, v in newest.items() if v > alert), reverse=True)
    return (
        "The population stability index (PSI) of each fold's test pull requests, per feature, "
        "against the newest pull requests of each repository before the period, mixed in "
        "the period's proportions of repositories: what serving's drift window measures "
        f"against the model's reference, with its alert level {alert}. In the registered "
        f"model's test period {len(over)} of {len(newest)} features are above it"
        + (": " + ", ".join(f"{k} {v:.2f}" for v, k in over) if over else "")
        + ". The registered model's own reference ends with that period: serving compares "
        "the traffic after it with the traffic just before it."
    )


def _fetch_sections(report: RunReport, summary: dict[str, Any], _uri: str, _out: Path) -> None:
    report.add(f"Data: {FETCH.name}", rows=_scalars(summary.get(FETCH.name, {})))


def _feature_sections(report: RunReport, summary: dict[str, Any], _uri: str, _out: Path) -> None:
    pre = summary.get(PREPROCESS.name, {})
    features = report.add(f"Features: {PREPROCESS.name}", rows=_scalars(pre))
    manifest = _read_manifest(pre.get("manifest"))
    for key in ("rows", "quarantined", "quarantine", "content_hash", "feature_spec_version"):
        if key in manifest:
            features.rows.append((f"manifest {key}", fmt(manifest[key])))
    statistics = manifest.get("statistics") or {}
    if statistics:
        report.add(
            "Feature statistics (published rows)",
            columns=["feature", "mean", "stddev", "min", "max"],
            table=[
                [name, *(_fixed(stats.get(k)) for k in ("mean", "stddev", "min", "max"))]
                for name, stats in statistics.items()
            ],
        )


def _training_sections(
    report: RunReport, summary: dict[str, Any], tracking_uri: str, out: Path
) -> None:
    _evaluation_sections(report, summary.get(TRAINING.name, {}), tracking_uri, out)


def _serving_sections(report: RunReport, summary: dict[str, Any], _uri: str, _out: Path) -> None:
    _promotion_sections(report, summary.get("promotion"))


def write_run_report(
    summary: dict[str, Any], tracking_uri: str, reports_dir: Path
) -> dict[str, str]:
    """Markdown and HTML report of one `make run`, in ``reports_dir/<timestamp>/``; the
    training run's figures and plots are read from MLflow at ``tracking_uri``."""
    from datetime import UTC, datetime

    out = reports_dir / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    report = RunReport("Pipeline run")
    total = summary.get("total_seconds") or 1.0
    steps = summary.get("steps", [])
    report.add(
        "Steps",
        text=f"Total {total:.1f} s after setup." if steps else "",
        columns=list(STEP_COLUMNS) if steps else [],
        table=step_rows(steps),
        markdown=steps_table(steps) if steps else "",
    )
    for stage in stages.STAGES:
        STAGE_SECTIONS[stage.name](report, summary, tracking_uri, out)
    paths = report.write(out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return paths


def _promotion_sections(report: RunReport, promotion: dict[str, Any] | None) -> None:
    """The blue/green decision with its analysis, and the load gate's figures."""
    if not promotion:
        return
    section = report.add(
        "Promotion (blue/green)",
        text=("PROMOTED: " if promotion.get("promoted") else "NOT promoted: ")
        + str(promotion.get("reason", "")),
        rows=[
            ("champion before", fmt(promotion.get("champion_before"))),
            ("challenger", fmt(promotion.get("challenger"))),
            ("champion after", fmt(promotion.get("champion_after"))),
        ],
    )
    section.rows += [
        (f"analysis {m['metric']}", ("pass: " if m["passed"] else "FAIL: ") + m["detail"])
        for m in promotion.get("analysis", [])
    ]
    gate = promotion.get("load_gate", {})
    gate_section = report.add(
        "Load gate against green",
        rows=_scalars(gate.get("measured", {}).get("total", {})),
    )
    gate_section.rows += [
        (
            f"service level {c['name']}",
            f"{fmt(c['measured'])} (limit {fmt(c['limit'])}) "
            + ("pass" if c["passed"] else "FAIL"),
        )
        for c in gate.get("checks", [])
    ]


# Each stage's sections of the report, by the stage's name (a test checks every stage has
# its entry); the report shows them in the list's order.
STAGE_SECTIONS: dict[str, Callable[[RunReport, dict[str, Any], str, Path], None]] = {
    FETCH.name: _fetch_sections,
    PREPROCESS.name: _feature_sections,
    TRAINING.name: _training_sections,
    SERVING.name: _serving_sections,
}
