"""`load-gate`: a headless Locust run against a host, judged against service levels.

The blue/green pre-promotion analysis runs this against the preview service: exit 0 when
every service level holds, 1 when one is breached (or the run produced no measurements),
2 for bad arguments. ``report.json`` and ``report.md`` in ``--report-dir`` say what was
measured against which limit.

Locust runs as a subprocess (``python -m locust``): it patches the standard library when
imported (gevent), which must not leak into this process, and its own exit code is not
the verdict. Latency percentiles come from every request's exact time recorded by the
locustfile, not from Locust's rounded statistics.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from urllib.parse import urlparse

EXIT_PASS, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
LOCUSTFILE = Path(str(files("model_serving.loadtest").joinpath("locustfile.py")))
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
STOP_TIMEOUT_SECONDS = 5  # users finish their request in flight when the time is up
START_ALLOWANCE_SECONDS = 60  # Locust start and shutdown, beyond --run-time


class UsageError(ValueError):
    pass


def parse_duration(text: str) -> int:
    """Locust's form: ``20s``, ``2m``, ``1h30m``; a bare number is seconds."""
    if text.isdigit():
        seconds = int(text)
    else:
        match = _DURATION.match(text)
        if not text or not match:
            raise UsageError(f"--run-time {text!r}: use a duration like 20s, 2m or 1m30s")
        hours, minutes, secs = (int(g) if g else 0 for g in match.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    if seconds <= 0:
        raise UsageError(f"--run-time {text!r} must be longer than 0 s")
    return seconds


@dataclass
class ServiceLevels:
    max_error_ratio: float
    max_p95_ms: float
    max_p99_ms: float
    min_rps: float


@dataclass
class Check:
    name: str
    limit: float
    measured: float | None
    passed: bool


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of already sorted values."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summarise(requests: list[tuple[str, float, bool]], duration: float) -> dict:
    def stats(rows: list[tuple[str, float, bool]]) -> dict:
        times = sorted(ms for _, ms, _ in rows)
        failures = sum(1 for *_, ok in rows if not ok)
        return {
            "requests": len(rows),
            "failures": failures,
            "error_ratio": failures / len(rows) if rows else None,
            "rps": len(rows) / duration if duration > 0 else 0.0,
            "p50_ms": percentile(times, 50),
            "p95_ms": percentile(times, 95),
            "p99_ms": percentile(times, 99),
            "max_ms": times[-1] if times else None,
        }

    by_name: dict[str, list] = {}
    for row in requests:
        by_name.setdefault(row[0], []).append(row)
    return {
        "duration_seconds": duration,
        "total": stats(requests),
        "endpoints": {name: stats(rows) for name, rows in sorted(by_name.items())},
    }


def judge(total: dict, levels: ServiceLevels) -> list[Check]:
    def at_most(name: str, measured: float | None, limit: float) -> Check:
        return Check(name, limit, measured, measured is not None and measured <= limit)

    return [
        at_most("error_ratio", total["error_ratio"], levels.max_error_ratio),
        at_most("p95_ms", total["p95_ms"], levels.max_p95_ms),
        at_most("p99_ms", total["p99_ms"], levels.max_p99_ms),
        Check("rps", levels.min_rps, total["rps"], total["rps"] >= levels.min_rps),
    ]


def run_locust(args: argparse.Namespace, run_seconds: int, report_dir: Path) -> dict | None:
    """Run Locust headless; the locustfile's latency record, or None if it wrote none."""
    latency_file = report_dir / "latencies.json"
    latency_file.unlink(missing_ok=True)
    env = {
        **os.environ,
        "LOAD_GATE_LATENCY_FILE": str(latency_file),
        "LOAD_GATE_BATCH_SIZE": str(args.batch_size),
        "LOAD_GATE_WAIT_SECONDS": str(args.wait_seconds),
    }
    if args.sample:
        env["LOAD_GATE_SAMPLE"] = str(args.sample)
    command = [
        sys.executable,
        "-m",
        "locust",
        "--locustfile",
        str(args.locustfile),
        "--headless",
        "--host",
        args.host,
        "--users",
        str(args.users),
        "--spawn-rate",
        str(args.spawn_rate),
        "--run-time",
        f"{run_seconds}s",
        "--stop-timeout",
        str(STOP_TIMEOUT_SECONDS),
        "--exit-code-on-error",
        "0",
        "--only-summary",
        "--csv",
        str(report_dir / "locust"),
        "--loglevel",
        "WARNING",
    ]
    with open(report_dir / "locust.log", "w") as log:
        # in the gate's own process group: whoever stops the gate (`make run` on Ctrl-C, a
        # Job's deletion) stops Locust with it
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            process.wait(timeout=run_seconds + STOP_TIMEOUT_SECONDS + START_ALLOWANCE_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return None
    if not latency_file.exists():
        return None
    return json.loads(latency_file.read_text())


def write_reports(report_dir: Path, report: dict) -> None:
    (report_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")

    def fmt(value) -> str:
        if value is None:
            return "n/a"
        return f"{value:.4f}" if isinstance(value, float) and value < 1 else f"{value:,.1f}"

    lines = [
        f"# Load gate: {'PASSED' if report['passed'] else 'FAILED'}",
        "",
        f"{report['host']}, {report['users']} users for {report['run_time_seconds']} s "
        f"(measured {report['measured'].get('duration_seconds', 0):.1f} s), "
        f"{report['finished_at']}",
        "",
    ]
    if report.get("error"):
        lines += [f"**{report['error']}**", ""]
    lines += ["| service level | limit | measured | result |", "|---|---|---|---|"]
    for check in report["checks"]:
        bound = "min" if check["name"] == "rps" else "max"
        lines.append(
            f"| {check['name']} | {bound} {fmt(check['limit'])} | {fmt(check['measured'])} "
            f"| {'pass' if check['passed'] else 'FAIL'} |"
        )
    endpoints = report["measured"].get("endpoints", {})
    if endpoints:
        lines += [
            "",
            "| request | count | failures | req/s | p50 ms | p95 ms | p99 ms |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, s in endpoints.items():
            lines.append(
                f"| {name} | {s['requests']} | {s['failures']} | {fmt(s['rps'])} "
                f"| {fmt(s['p50_ms'])} | {fmt(s['p95_ms'])} | {fmt(s['p99_ms'])} |"
            )
    (report_dir / "report.md").write_text("\n".join(lines) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="load-gate",
        description="Run Locust headless against --host and fail (exit 1) when a service "
        "level is breached; writes report.json and report.md to --report-dir.",
    )
    parser.add_argument("--host", required=True, help="base URL, e.g. http://preview:8080")
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--spawn-rate", type=float, default=10, help="users started per s")
    parser.add_argument("--run-time", default="20s", help="e.g. 20s, 2m, 1m30s")
    parser.add_argument("--max-error-ratio", type=float, default=0.01)
    parser.add_argument("--max-p95-ms", type=float, default=100)
    parser.add_argument("--max-p99-ms", type=float, default=250)
    parser.add_argument("--min-rps", type=float, default=0)
    parser.add_argument("--report-dir", type=Path, default=Path("load-gate-report"))
    parser.add_argument("--batch-size", type=int, default=20, help="records per batch request")
    parser.add_argument(
        "--wait-seconds", type=float, default=0.05, help="pause between a user's requests"
    )
    parser.add_argument("--sample", type=Path, help="other .jsonl.gz of pull requests")
    parser.add_argument("--locustfile", type=Path, default=LOCUSTFILE, help=argparse.SUPPRESS)
    return parser


def check_host(host: str) -> None:
    """``--host`` must be a base URL (the gates' shared rule)."""
    url = urlparse(host)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise UsageError(f"--host {host!r}: give a base URL like http://127.0.0.1:8080")


def validate(args: argparse.Namespace) -> int:
    check_host(args.host)
    for name in ("users", "batch_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("spawn_rate", "max_p95_ms", "max_p99_ms"):
        if not getattr(args, name) > 0:
            raise UsageError(f"--{name.replace('_', '-')} must be greater than 0")
    if not 0 <= args.max_error_ratio <= 1:
        raise UsageError("--max-error-ratio must be between 0 and 1")
    if args.min_rps < 0 or args.wait_seconds < 0:
        raise UsageError("--min-rps and --wait-seconds cannot be negative")
    if args.sample and not args.sample.is_file():
        raise UsageError(f"--sample {args.sample}: no such file")
    return parse_duration(args.run_time)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse exits 2 on unknown or malformed flags
    try:
        run_seconds = validate(args)
        args.report_dir.mkdir(parents=True, exist_ok=True)
    except (UsageError, OSError) as problem:
        print(f"load-gate: {problem}", file=sys.stderr)
        return EXIT_USAGE
    levels = ServiceLevels(args.max_error_ratio, args.max_p95_ms, args.max_p99_ms, args.min_rps)

    record = run_locust(args, run_seconds, args.report_dir)
    error: str | None = None
    if record is None or not record["requests"]:
        error = "Locust made no requests (see locust.log in the report directory)"
        measured = summarise([], 0.0)
    else:
        measured = summarise([tuple(r) for r in record["requests"]], record["duration_seconds"])
    checks = judge(measured["total"], levels)
    passed = error is None and all(c.passed for c in checks)
    report = {
        "passed": passed,
        "host": args.host,
        "users": args.users,
        "spawn_rate": args.spawn_rate,
        "run_time_seconds": run_seconds,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "service_levels": asdict(levels),
        "checks": [asdict(c) for c in checks],
        "measured": measured,
        "error": error,
    }
    write_reports(args.report_dir, report)
    verdict = "PASSED" if passed else "FAILED"
    failed = [c.name for c in checks if not c.passed]
    print(
        f"load-gate {verdict}: {measured['total']['requests']} requests, "
        f"p95 {measured['total']['p95_ms']} ms, p99 {measured['total']['p99_ms']} ms, "
        f"{measured['total']['rps']:.1f} req/s"
        + (f"; breached: {', '.join(failed)}" if failed else "")
        + f"; report in {args.report_dir}"
    )
    return EXIT_PASS if passed else EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
