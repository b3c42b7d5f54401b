"""`make bench-run`: wall time of `make run` after setup, each step's share, in a fresh state
directory; then the re-run with no new data beside it (the baseline it should beat)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from pipeline_ops.base import commands
from pipeline_ops.paths import PROJECT_ROOT


def _run(env: dict[str, str], *args: str) -> None:
    """`python -m pipeline_ops ARGS` as the operator runs it (their environment: `make run`
    itself decides what its stages get); its logs pass through."""
    commands.run([sys.executable, "-m", "pipeline_ops", *args], what=f"make {args[0]}",
                 cwd=PROJECT_ROOT, env=env, timeout=None, capture_stderr=False)  # fmt: skip


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        env = {**os.environ, "PIPELINE_LOCAL_DIR": tmp}
        try:
            _run(env, "run")
            _run(env, "run")
        finally:
            _run(env, "down")
        reports = sorted((Path(tmp) / "reports").iterdir())
        first, second = (json.loads((r / "summary.json").read_text()) for r in reports[-2:])
    print(f"{'step':40} {'fresh run':>16} {'re-run, no new data':>22}")
    for a, b in zip(first["steps"], second["steps"], strict=False):
        share_a = 100 * a["seconds"] / first["total_seconds"]
        share_b = 100 * b["seconds"] / second["total_seconds"]
        fresh, rerun = (
            f"{a['seconds']:7.1f}s {share_a:5.1f}%",
            f"{b['seconds']:12.1f}s {share_b:5.1f}%",
        )
        print(f"{a['name']:40} {fresh} {rerun}")
    ratio = second["total_seconds"] / first["total_seconds"]
    print(
        f"{'total':40} {first['total_seconds']:7.1f}s {second['total_seconds']:20.1f}s"
        f"   re-run/fresh = {ratio:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
