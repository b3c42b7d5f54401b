"""`data-fetch`: fetch pull requests into MongoDB (connections and token from the stage's
Vault secret)."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from data_fetch.github import EXIT_BUDGET_EXHAUSTED, GitHubClient, RetryPolicy
from data_fetch.job import FetchJob
from data_fetch.progress import progress_reporter
from data_fetch.settings import FetchSecret
from pipeline_common.cli import run_stage
from pipeline_common.settings import ConfigError
from pipeline_common.vault import load_stage_secret

DEFAULT_REPLAY_DIR = Path("data/samples")
DEFAULT_REPOSITORIES = ["fastapi/fastapi", "pallets/flask"]
DEFAULT_API_URL = "https://api.github.com"

EPILOG = f"""\
exit codes: 0 done; 1 stage error; 2 configuration error; 3 Vault error;
{EXIT_BUDGET_EXHAUSTED} GitHub API budget exhausted (progress saved: run again after the reset,
or pass --wait-for-reset).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="data-fetch",
        description="Fetch GitHub pull requests into MongoDB.\n\nVault settings come from "
        "VAULT_ADDR, VAULT_AUTH_METHOD, VAULT_PATH_AUTH,\nVAULT_ROLE, VAULT_SECRET_PATH; the "
        "secret holds mongo_uri, mongo_database,\nmongo_collection and optionally github_token.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--source",
        choices=["auto", "github", "replay"],
        default="auto",
        help="github: the live API; replay: JSON Lines of REST-shaped pull requests (the "
        "bundled sample); auto (default): github when the Vault secret has github_token "
        "and no --replay-path is given, else replay",
    )
    parser.add_argument(
        "--repository",
        action="append",
        metavar="OWNER/NAME",
        help="a repository to fetch (repeatable; default: "
        f"{' '.join(DEFAULT_REPOSITORIES)}); with replay, keeps only these",
    )
    parser.add_argument(
        "--since",
        type=_timestamp,
        metavar="ISO-DATE",
        help="skip pull requests last updated before this date (e.g. 2024-01-01)",
    )
    parser.add_argument("--dry-run", action="store_true", help="validate only; write nothing")
    parser.add_argument(
        "--max-pages",
        type=_positive,
        metavar="N",
        help="stop after N pages per repository (github) or file (replay); a later run "
        "resumes where this one stopped",
    )
    parser.add_argument(
        "--replay-path",
        type=Path,
        action="append",
        help=f"a .jsonl or .jsonl.gz file or a folder of them (default: {DEFAULT_REPLAY_DIR})",
    )
    parser.add_argument("--limit", type=_positive, help="replay: at most this many lines a file")
    parser.add_argument(
        "--api",
        choices=["auto", "graphql", "rest"],
        default="auto",
        help="github: GraphQL (100 pull requests a request), REST (one request per pull "
        "request), or auto (GraphQL, REST where the server has none)",
    )
    parser.add_argument(
        "--api-url",
        default=os.environ.get("GITHUB_API_URL", DEFAULT_API_URL),
        help="GitHub API base URL (env GITHUB_API_URL; default %(default)s)",
    )
    parser.add_argument(
        "--wait-for-reset",
        action="store_true",
        help=f"when the API budget runs out, wait for its reset instead of exiting "
        f"{EXIT_BUDGET_EXHAUSTED}",
    )
    parser.add_argument(
        "--max-retries",
        type=_positive,
        default=6,
        help="attempts per request through 5xx, cut-off responses and secondary rate "
        "limits (default %(default)s)",
    )
    parser.add_argument(
        "--progress",
        choices=["auto", "bar", "none"],
        default="auto",
        help="progress bar: auto shows it when stderr is a terminal",
    )
    parser.add_argument("--log-level", default="INFO")
    return parser


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def _timestamp(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO date, e.g. 2024-01-01") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


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


def _repositories(values: list[str] | None) -> list[str]:
    for value in values or []:
        if value.count("/") != 1 or not all(value.split("/")):
            raise ConfigError(f"--repository {value!r} is not OWNER/NAME, e.g. pallets/flask")
    return list(dict.fromkeys(values or []))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def job() -> dict:
        repositories = _repositories(args.repository)
        secret = load_stage_secret(FetchSecret)
        source = args.source
        if source == "auto":
            # --replay-path asks for a replay; otherwise a token means the live API.
            has_token = secret.github_token is not None and not args.replay_path
            source = "github" if has_token else "replay"
        with progress_reporter(args.progress) as progress:
            if source == "replay":
                return FetchJob(
                    secret,
                    source="replay",
                    replay_files=replay_files(args.replay_path or [DEFAULT_REPLAY_DIR]),
                    repositories=repositories,
                    since=args.since,
                    max_pages=args.max_pages,
                    limit_per_file=args.limit,
                    dry_run=args.dry_run,
                    progress=progress,
                ).run()
            if secret.github_token is None:
                raise ConfigError(
                    "--source github needs github_token in the stage's Vault secret "
                    "(bao kv patch <secret path> github_token=...)"
                )
            client = GitHubClient(
                args.api_url,
                secret.github_token,
                retry=RetryPolicy(attempts=args.max_retries, wait_for_reset=args.wait_for_reset),
            )
            return FetchJob(
                secret,
                source="github",
                repositories=repositories or DEFAULT_REPOSITORIES,
                client=client,
                api=args.api,
                since=args.since,
                max_pages=args.max_pages,
                dry_run=args.dry_run,
                progress=progress,
            ).run()

    return run_stage("data-fetch", job, log_level=args.log_level)


if __name__ == "__main__":
    sys.exit(main())
