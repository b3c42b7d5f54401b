"""`python -m pipeline_ops up|down|status|run`: the local platform and the pipeline."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any

from pipeline_contracts.registry import CHAMPION, ModelReference
from pipeline_ops import stages
from pipeline_ops.base.errors import CommandError, OpsError
from pipeline_ops.local_env import LocalEnvironment
from pipeline_ops.local_platform import DEFAULT_SERVICES, LocalPlatform
from pipeline_ops.runner import run_pipeline, stage_process_env

FETCH = stages.stage("data-fetch")
PREPROCESS = stages.stage("spark-preprocess")
TRAINING = stages.stage("ml-training")
SERVING = stages.stage("model-serving")


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
    run = commands.add_parser("run", help="start the platform and run the whole pipeline")
    run.add_argument(
        "--keep-serving",
        action="store_true",
        help="leave the promoted model-serving running (stop it with `down`)",
    )
    run.add_argument(
        "--gate-run-time",
        default="15s",
        help="load-gate duration locally (the cluster's AnalysisTemplate says 60s)",
    )
    commands.add_parser("demo", help="score real and unusual pull requests with the champion")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    platform = LocalPlatform()
    try:
        if args.command in LOCKED:
            # one operator per platform: the lock is taken here, once per command, so that
            # `run` (which brings the platform up) and the platform's own code never nest it
            with platform.held(LOCKED[args.command], wait=0), _terminated():
                return _locked(args, platform)
        if args.command == "status":
            _print_status(platform)
        elif args.command == "env":
            for key, value in LocalEnvironment(platform).stage_env(args.stage).items():
                print(f"export {key}={value}")
    except KeyboardInterrupt:
        print(f"{args.command}: interrupted; what it had started is stopped", file=sys.stderr)
        return 130
    except OpsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


# The commands that start or stop processes of the platform's state directory, as the
# Makefile names them.
LOCKED = {"up": "make up", "down": "make down", "run": "make run", "demo": "make demo-anomaly"}


def _locked(args: argparse.Namespace, platform: LocalPlatform) -> int:
    if args.command == "up":
        services = [*DEFAULT_SERVICES, "s3"] if args.with_s3 else list(DEFAULT_SERVICES)
        platform.up(services)
        LocalEnvironment(platform).configure_vault()
        _print_status(platform)
    elif args.command == "down":
        # every process on record, the newest first: what runs left running (model-serving
        # reads MLflow) before the platform's servers
        stopped = platform.down()
        print("stopped: " + (", ".join(stopped) or "nothing was running"))
    elif args.command == "run":
        try:
            summary = run_pipeline(
                platform, keep_serving=args.keep_serving, gate_run_time=args.gate_run_time
            )
        except CommandError as error:
            print(f"pipeline failed: {error}", file=sys.stderr)
            return 1
        _print_run(summary)
    elif args.command == "demo":
        return _demo(platform)
    return 0


@contextlib.contextmanager
def _terminated() -> Iterator[None]:
    """SIGTERM (`kill`, a CI's timeout) ends the command as Ctrl-C does: through its cleanup,
    which stops what it started."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _print_status(platform: LocalPlatform) -> None:
    status = platform.status()
    if not status:
        print("nothing is running; start it with `make up`")
    for name, info in status.items():
        health = "healthy" if info["healthy"] else "NOT healthy"
        print(
            f"{name:7} 127.0.0.1:{info['port']:<6} pid {info['pid']:<8} {health}  log {info['log']}"
        )


def _print_run(summary: dict[str, Any]) -> None:
    print()
    print(f"Pipeline finished in {summary['total_seconds']:.1f}s.")
    for stage in stages.STAGES:
        for line in STAGE_LINES[stage.name](summary):
            print(f"  {line}")
    print(f"  report           {summary['report']['markdown']}")


def _fetch_lines(summary: dict[str, Any]) -> list[str]:
    fetch = summary[FETCH.name]
    return [
        f"{FETCH.name:16} MongoDB {fetch['collection']}: "
        f"{fetch['collection_count']} pull requests "
        f"({fetch['inserted']} new, {fetch['updated']} updated, {fetch['quarantined']} quarantined)"
    ]


def _preprocess_lines(summary: dict[str, Any]) -> list[str]:
    pre = summary[PREPROCESS.name]
    if pre.get("skipped"):
        return [f"{PREPROCESS.name:16} no new data: kept feature run {pre['run_id']}"]
    return [f"{PREPROCESS.name:16} {pre['rows']} feature rows in {pre['features_path']}"]


def _training_lines(summary: dict[str, Any]) -> list[str]:
    train = summary[TRAINING.name]
    if train.get("skipped"):
        return [f"{TRAINING.name:16} no new features: kept the last model"]
    if not train.get("registered", True):
        return [f"{TRAINING.name:16} quality gate refused the model: {train.get('gate')}"]
    return [
        f"{TRAINING.name:16} model {train.get('model_name')} version "
        f"{train.get('model_version')} (alias {train.get('alias')})"
    ]


def _promotion_lines(summary: dict[str, Any]) -> list[str]:
    promotion = summary["promotion"]
    verdict = "promoted" if promotion["promoted"] else "not promoted"
    lines = [
        f"promotion        {verdict}: {promotion['reason']}",
        f"champion         version {promotion['champion_after']}",
    ]
    if promotion.get("active_url"):
        lines.append(f"serving          {promotion['active_url']} (stop with `make down`)")
    return lines


# What the summary says of each stage, by the stage's name, shown in the list's order.
STAGE_LINES: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    FETCH.name: _fetch_lines,
    PREPROCESS.name: _preprocess_lines,
    TRAINING.name: _training_lines,
    SERVING.name: _promotion_lines,
}


def _demo(platform: LocalPlatform) -> int:
    from pipeline_ops.demo import score_and_show, serving_url

    env = LocalEnvironment(platform)
    model_name = env.stage_secrets()[SERVING.name]["model_name"]
    champion = ModelReference.at_alias(model_name, CHAMPION)
    with serving_url(stage_process_env(env, SERVING.name), champion, platform.state) as url:
        score_and_show(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
