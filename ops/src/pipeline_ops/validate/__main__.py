"""`python -m pipeline_ops.validate`: every offline delivery check; exit 1 if any fails."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pipeline_ops.paths import PROJECT_ROOT, TOOLS_DIR
from pipeline_ops.validate.checks import CHECKS
from pipeline_ops.validate.tree import RepoTree, ToolMissing


def run_checks(tree: RepoTree, names: list[str] | None = None) -> dict[str, list[str]]:
    """Problems per check; a check that cannot run (tool missing, build broken) reports why."""
    results = {}
    for name in names or list(CHECKS):
        try:
            results[name] = CHECKS[name](tree)
        except (ToolMissing, ValueError) as error:
            results[name] = [str(error)]
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline_ops.validate",
        description="Validate argo-apps, workflows and Dockerfiles offline (make validate).",
    )
    parser.add_argument("--root", type=Path, default=PROJECT_ROOT, help="repository root")
    parser.add_argument("--check", action="append", choices=sorted(CHECKS), help="only these")
    args = parser.parse_args(argv)
    tree = RepoTree(args.root.resolve(), tools_bin=TOOLS_DIR / "bin")
    failed = 0
    for name in args.check or list(CHECKS):
        started = time.perf_counter()
        problems = run_checks(tree, [name])[name]
        took = time.perf_counter() - started
        print(f"{'ok  ' if not problems else 'FAIL'} {name} ({took:.1f}s)")
        for problem in problems:
            print(f"     {problem}")
        failed += bool(problems)
    print(f"{len(args.check or CHECKS) - failed} checks passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
