"""`python -m pipeline_ops up|down|status|run`: the local platform and the pipeline."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from pipeline_ops.local_env import LocalEnvironment
from pipeline_ops.localstack import DEFAULT_SERVICES, LocalPlatform, PlatformError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline_ops")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser(
        "up", help="start Vault, MongoDB, MLflow (and s3 if asked); seed Vault"
    )
    up.add_argument("--with-s3", action="store_true", help="also start the S3 server")
    commands.add_parser("down", help="stop everything started by `up`")
    commands.add_parser("status", help="show services, pids, ports, health")
    env_cmd = commands.add_parser("env", help="print the VAULT_* exports for a stage")
    env_cmd.add_argument("stage")
    commands.add_parser("run", help="start the platform and run the whole pipeline")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    platform = LocalPlatform()
    try:
        if args.command == "up":
            services = [*DEFAULT_SERVICES, "s3"] if args.with_s3 else list(DEFAULT_SERVICES)
            platform.up(services)
            LocalEnvironment(platform).configure_vault()
            _print_status(platform)
        elif args.command == "down":
            stopped = platform.down()
            print("stopped: " + (", ".join(stopped) or "nothing was running"))
        elif args.command == "status":
            _print_status(platform)
        elif args.command == "env":
            for key, value in LocalEnvironment(platform).stage_env(args.stage).items():
                print(f"export {key}={value}")
        elif args.command == "run":
            from pipeline_ops.runner import StageFailedError, run_pipeline

            try:
                summary = run_pipeline(platform)
            except StageFailedError as error:
                print(f"pipeline failed: {error}", file=sys.stderr)
                return 1
            _print_run(summary)
    except PlatformError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def _print_status(platform: LocalPlatform) -> None:
    status = platform.status()
    if not status:
        print("nothing is running; start it with `make up`")
    for name, info in status.items():
        health = "healthy" if info["healthy"] else "NOT healthy"
        print(
            f"{name:7} 127.0.0.1:{info['port']:<6} pid {info['pid']:<8} {health}  log {info['log']}"
        )


def _print_run(summary: dict) -> None:
    fetch, pre, train, serve = (
        summary[k] for k in ("data-fetch", "spark-preprocess", "ml-training", "model-serving")
    )
    print()
    print("Pipeline finished. Where each stage's output is:")
    print(
        f"  data-fetch       MongoDB {fetch['collection']}: "
        f"{fetch['collection_count']} pull requests "
        f"({fetch['inserted']} new, {fetch['updated']} updated, {fetch['quarantined']} quarantined)"
    )
    print(
        f"  spark-preprocess {pre['rows']} feature rows in {pre['features_path']} "
        f"(run {pre['run_id']})"
    )
    print(
        f"  ml-training      MLflow run {train['mlflow_run_id']} at {train['tracking_uri']}, "
        f"model {train['model_name']} version {train['model_version']} (alias {train['alias']})"
    )
    print(
        f"  model-serving    POST {serve['url']}/v1/score for PR #{serve['request']['number']}: "
        f"{json.dumps(serve['response'])}"
    )


if __name__ == "__main__":
    sys.exit(main())
