"""The run report of `make run`: one structure, rendered as Markdown and as HTML."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Section:
    title: str
    rows: list[tuple[str, str]] = field(default_factory=list)  # a two-column table
    text: str = ""
    images: list[str] = field(default_factory=list)  # paths relative to the report


@dataclass
class RunReport:
    title: str
    sections: list[Section] = field(default_factory=list)

    def add(self, title: str, **kwargs: Any) -> Section:
        section = Section(title, **kwargs)
        self.sections.append(section)
        return section

    def markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        for section in self.sections:
            lines += [f"## {section.title}", ""]
            if section.text:
                lines += [section.text, ""]
            if section.rows:
                lines += ["| | |", "|---|---|"]
                lines += [f"| {_md(k)} | {_md(v)} |" for k, v in section.rows]
                lines.append("")
            lines += [f"![{Path(image).stem}]({image})" for image in section.images]
            if section.images:
                lines.append("")
        return "\n".join(lines)

    def html(self) -> str:
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        for section in self.sections:
            body.append(f"<h2>{html.escape(section.title)}</h2>")
            if section.text:
                body.append(f"<p>{html.escape(section.text)}</p>")
            if section.rows:
                cells = "".join(
                    f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                    for k, v in section.rows
                )
                body.append(f"<table>{cells}</table>")
            body += [
                f'<img src="{html.escape(image)}" alt="{html.escape(Path(image).stem)}">'
                for image in section.images
            ]
        style = (
            "body{font-family:sans-serif;max-width:960px;margin:2em auto}"
            "table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:4px 8px;"
            "text-align:left}img{max-width:460px;margin:4px}"
        )
        return (
            f"<!doctype html><html><head><meta charset='utf-8'><title>"
            f"{html.escape(self.title)}</title><style>{style}</style></head><body>"
            + "\n".join(body)
            + "</body></html>"
        )

    def write(self, directory: Path) -> dict[str, str]:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "report.md").write_text(self.markdown())
        (directory / "report.html").write_text(self.html())
        return {"markdown": str(directory / "report.md"), "html": str(directory / "report.html")}


def _md(value: str) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return "" if value is None else str(value)


def _scalars(summary: dict[str, Any]) -> list[tuple[str, str]]:
    return [(k, fmt(v)) for k, v in summary.items() if not isinstance(v, dict | list)]


def _read_manifest(uri: str | None) -> dict[str, Any]:
    if not uri:
        return {}
    path = Path(uri.removeprefix("file://"))
    return json.loads(path.read_text()) if path.is_file() else {}


def _model_section(report: RunReport, training: dict[str, Any], tracking_uri: str, out: Path):
    run_id = training.get("mlflow_run_id")
    section = report.add("Model: autoencoder beside the baseline", rows=_scalars(training))
    backtest = training.get("backtest")
    if backtest:
        behind = backtest.get("autoencoder_behind") or []
        report.add(
            "Backtest: rolling origin, both models (mean and worst fold)",
            rows=_scalars(backtest),
            text="The autoencoder is ahead of the IsolationForest on ROC AUC and PR AUC in "
            "every fold."
            if not behind
            else "The autoencoder trails the IsolationForest in: "
            + "; ".join(f"fold {b['fold']} {b['metric']} by {b['by']:.4f}" for b in behind),
        )
    if not run_id:
        return
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    metrics = client.get_run(run_id).data.metrics
    section.rows += [(f"metric {k}", fmt(v)) for k, v in sorted(metrics.items())]
    images = out / "images"
    pending = [""]
    while pending:  # every PNG the training run logged, for the report to show
        for item in client.list_artifacts(run_id, pending.pop() or None):
            if item.is_dir:
                pending.append(item.path)
            elif item.path.endswith(".png"):
                images.mkdir(parents=True, exist_ok=True)
                local = client.download_artifacts(run_id, item.path, str(images))
                section.images.append(str(Path(local).relative_to(out)))


def write_run_report(summary: dict[str, Any], env, reports_dir: Path) -> dict[str, str]:
    """Markdown and HTML report of one `make run`, in ``reports_dir/<timestamp>/``."""
    from datetime import UTC, datetime

    out = reports_dir / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    report = RunReport("Pipeline run")
    total = summary.get("total_seconds") or 1.0
    report.add(
        "Steps",
        text=f"Total {total:.1f} s after setup.",
        rows=[
            (s["name"], f"{s['seconds']:.1f} s ({100 * s['seconds'] / total:.0f} %) {s['outcome']}")
            for s in summary.get("steps", [])
        ],
    )
    report.add("Data: data-fetch", rows=_scalars(summary.get("data-fetch", {})))
    pre = summary.get("spark-preprocess", {})
    features = report.add("Features: spark-preprocess", rows=_scalars(pre))
    manifest = _read_manifest(pre.get("manifest"))
    for key in ("rows", "quarantined", "quarantine", "content_hash", "feature_spec_version"):
        if key in manifest:
            features.rows.append((f"manifest {key}", fmt(manifest[key])))
    statistics = manifest.get("statistics") or manifest.get("feature_statistics") or {}
    for name, stats in statistics.items():
        features.rows.append((f"feature {name}", fmt(stats)))
    training = summary.get("ml-training", {})
    tracking_uri = env.stage_secrets()["ml-training"]["mlflow_tracking_uri"]
    _model_section(report, training, tracking_uri, out)
    promotion = summary.get("promotion", {})
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
    paths = report.write(out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return paths
