"""`data-fetch`: fetch pull requests into MongoDB (connections from the stage's Vault secret)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data_fetch.job import FetchJob
from data_fetch.settings import FetchSecret
from pipeline_common.cli import run_stage
from pipeline_common.settings import ConfigError
from pipeline_common.vault import load_stage_secret

DEFAULT_REPLAY_DIR = Path("data/samples")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="data-fetch",
        description="Fetch GitHub pull requests into MongoDB. Vault settings come from "
        "VAULT_ADDR, VAULT_AUTH_METHOD, VAULT_PATH_AUTH, VAULT_ROLE, VAULT_SECRET_PATH.",
    )
    parser.add_argument(
        "--source", choices=["replay"], default="replay",
        help="replay: JSON Lines of REST-shaped pull requests (the bundled sample)",
    )  # fmt: skip
    parser.add_argument(
        "--replay-path", type=Path, action="append",
        help=f"a .jsonl or .jsonl.gz file or a folder of them (default: {DEFAULT_REPLAY_DIR})",
    )  # fmt: skip
    parser.add_argument("--limit", type=int, help="read at most this many records per file")
    parser.add_argument("--dry-run", action="store_true", help="validate only; write nothing")
    parser.add_argument("--log-level", default="INFO")
    return parser


def replay_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(path.glob("*.jsonl")) + sorted(path.glob("*.jsonl.gz")))
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"--replay-path {path} does not exist")
    if not files:
        raise ConfigError(f"no .jsonl or .jsonl.gz files in {[str(p) for p in paths]}")
    return files


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.limit is not None and args.limit < 1:
        raise SystemExit("data-fetch: --limit must be at least 1")

    def job() -> dict:
        files = replay_files(args.replay_path or [DEFAULT_REPLAY_DIR])
        secret = load_stage_secret(FetchSecret)
        return FetchJob(secret, files, limit_per_file=args.limit, dry_run=args.dry_run).run()

    return run_stage("data-fetch", job, log_level=args.log_level)


if __name__ == "__main__":
    sys.exit(main())
