"""`quality-gate`: does a model, served at a host, judge real pull requests as ours should?

The blue/green pre-promotion analysis runs this against the preview service beside the
load gate (same image). It sends the packaged real pull requests (the load gate's sample:
300 of the bundled sample, both repositories, spread over their history), all ordinary,
to ``/v1/score`` in batches and fails (exit 1) when the served model flags more of them than
``--max-flag-rate``. A model's threshold is its validation errors' 99th percentile, so a
sound version flags 1-2 % of ordinary pull requests; one trained on other data (another
repository's pull requests, an experiment registered under the production name by mistake)
flags many times that, and reviewers would soon learn to ignore its alerts. Exit 2 for bad
arguments. ``report.json`` and ``report.md`` in ``--report-dir`` say what was measured
against which limit, in the load gate's report format.

Standard library only: the image is the load gate's, whose Locust patches the network stack
when imported (this module never imports it).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from model_serving.loadgate import EXIT_FAIL, EXIT_PASS, EXIT_USAGE, Check, UsageError, check_host
from model_serving.loadtest import PACKAGED_SAMPLE, read_pull_requests

TIMEOUT_SECONDS = 30


class ScoringFailed(RuntimeError):
    pass


def repository(record: dict[str, Any]) -> str:
    return str(((record.get("base") or {}).get("repo") or {}).get("full_name") or "unknown")


def score(host: str, records: list[dict[str, Any]], batch_size: int) -> list[dict[str, Any]]:
    """Every record's verdict from ``host``'s ``/v1/score``, in order."""
    verdicts: list[dict[str, Any]] = []
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        request = urllib.request.Request(
            host.rstrip("/") + "/v1/score",
            data=json.dumps(batch).encode(),
            headers={"content-type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
                results = json.loads(response.read())["results"]
        except urllib.error.HTTPError as error:
            detail = error.read()[:300].decode(errors="replace")
            raise ScoringFailed(f"POST /v1/score answered HTTP {error.code}: {detail}") from error
        except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError) as error:
            raise ScoringFailed(f"POST /v1/score to {host} failed: {error}") from error
        if len(results) != len(batch):
            raise ScoringFailed(f"{len(results)} verdicts for {len(batch)} records")
        verdicts.extend(results)
    return verdicts


def measure(records: list[dict[str, Any]], verdicts: list[dict[str, Any]]) -> dict[str, Any]:
    flagged = [bool(v["is_anomaly"]) for v in verdicts]
    per_repository: dict[str, list[bool]] = {}
    for record, flag in zip(records, flagged, strict=True):
        per_repository.setdefault(repository(record), []).append(flag)
    models = Counter(f"{v['model_name']}/{v['model_version']}" for v in verdicts)
    return {
        "pull_requests": len(flagged),
        "flagged": sum(flagged),
        "flag_rate": sum(flagged) / len(flagged) if flagged else None,
        "flag_rate_per_repository": {
            name: sum(flags) / len(flags) for name, flags in sorted(per_repository.items())
        },
        "served_models": dict(models),
    }


def write_reports(report_dir: Path, report: dict[str, Any]) -> None:
    (report_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    measured = report["measured"]
    lines = [
        f"# Quality gate: {'PASSED' if report['passed'] else 'FAILED'}",
        "",
        f"{report['host']}, {measured.get('pull_requests', 0)} real pull requests "
        f"({report['sample']}), {report['finished_at']}",
        "",
    ]
    if report.get("error"):
        lines += [f"**{report['error']}**", ""]
    lines += ["| measure | limit | measured | result |", "|---|---|---|---|"]
    for check in report["checks"]:
        measured_value = "n/a" if check["measured"] is None else f"{check['measured']:.4f}"
        lines.append(
            f"| {check['name']} | max {check['limit']:.4f} | {measured_value} "
            f"| {'pass' if check['passed'] else 'FAIL'} |"
        )
    per_repository = measured.get("flag_rate_per_repository", {})
    if per_repository:
        lines += ["", "| repository | flagged share |", "|---|---|"]
        lines += [f"| {name} | {rate:.4f} |" for name, rate in per_repository.items()]
    (report_dir / "report.md").write_text("\n".join(lines) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quality-gate",
        description="Score real, ordinary pull requests with the model served at --host and "
        "fail (exit 1) when it flags more than --max-flag-rate of them; writes report.json "
        "and report.md to --report-dir.",
    )
    parser.add_argument("--host", required=True, help="base URL, e.g. http://preview:8080")
    parser.add_argument(
        "--max-flag-rate",
        type=float,
        default=0.05,
        help="largest share of the ordinary pull requests the model may flag (a sound "
        "version flags 1-2 %%)",
    )
    parser.add_argument("--batch-size", type=int, default=100, help="records per request")
    parser.add_argument(
        "--sample", type=Path, default=PACKAGED_SAMPLE, help="other .jsonl.gz of PRs"
    )
    parser.add_argument("--report-dir", type=Path, default=Path("quality-gate-report"))
    return parser


def validate(args: argparse.Namespace) -> None:
    check_host(args.host)
    if not 0 <= args.max_flag_rate <= 1:
        raise UsageError("--max-flag-rate must be between 0 and 1")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if not args.sample.is_file():
        raise UsageError(f"--sample {args.sample}: no such file")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # argparse exits 2 on unknown or malformed flags
    try:
        validate(args)
        args.report_dir.mkdir(parents=True, exist_ok=True)
        records = read_pull_requests(args.sample)
        if not records:
            raise UsageError(f"--sample {args.sample} holds no pull requests")
    except (UsageError, OSError, ValueError) as problem:
        print(f"quality-gate: {problem}", file=sys.stderr)
        return EXIT_USAGE
    error: str | None = None
    measured: dict[str, Any] = {}
    try:
        measured = measure(records, score(args.host, records, args.batch_size))
    except ScoringFailed as failure:
        error = str(failure)
    rate = measured.get("flag_rate")
    check = Check(
        "flag_rate", args.max_flag_rate, rate, rate is not None and rate <= args.max_flag_rate
    )
    passed = error is None and check.passed
    report = {
        "passed": passed,
        "host": args.host,
        "sample": args.sample.name,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "checks": [asdict(check)],
        "measured": measured,
        "error": error,
    }
    write_reports(args.report_dir, report)
    outcome = (
        f"{measured['flagged']} of {measured['pull_requests']} ordinary pull requests flagged "
        f"({rate:.1%}, limit {args.max_flag_rate:.1%}) by {', '.join(measured['served_models'])}"
        if rate is not None
        else error
    )
    print(
        f"quality-gate {'PASSED' if passed else 'FAILED'}: {outcome}; report in {args.report_dir}"
    )
    return EXIT_PASS if passed else EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
