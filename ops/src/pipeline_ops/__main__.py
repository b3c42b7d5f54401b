"""`python -m pipeline_ops up|down|status|run`: the local platform and the pipeline."""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline_contracts.registry import CHAMPION, ModelReference
from pipeline_ops.local_env import LocalEnvironment
from pipeline_ops.local_platform import DEFAULT_SERVICES, LocalPlatform, PlatformError


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
        if args.command == "up":
            services = [*DEFAULT_SERVICES, "s3"] if args.with_s3 else list(DEFAULT_SERVICES)
            platform.up(services)
            LocalEnvironment(platform).configure_vault()
            _print_status(platform)
        elif args.command == "down":
            stopped = _stop_kept_serving() + platform.down()
            print("stopped: " + (", ".join(stopped) or "nothing was running"))
        elif args.command == "status":
            _print_status(platform)
        elif args.command == "env":
            for key, value in LocalEnvironment(platform).stage_env(args.stage).items():
                print(f"export {key}={value}")
        elif args.command == "run":
            from pipeline_ops.runner import StageFailedError, run_pipeline

            try:
                summary = run_pipeline(
                    platform, keep_serving=args.keep_serving, gate_run_time=args.gate_run_time
                )
            except StageFailedError as error:
                print(f"pipeline failed: {error}", file=sys.stderr)
                return 1
            _print_run(summary)
        elif args.command == "demo":
            return _demo(platform)
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
    fetch, pre, train = (summary[k] for k in ("data-fetch", "spark-preprocess", "ml-training"))
    promotion = summary["promotion"]
    print()
    print(f"Pipeline finished in {summary['total_seconds']:.1f}s.")
    print(
        f"  data-fetch       MongoDB {fetch['collection']}: "
        f"{fetch['collection_count']} pull requests "
        f"({fetch['inserted']} new, {fetch['updated']} updated, {fetch['quarantined']} quarantined)"
    )
    if pre.get("skipped"):
        print(f"  spark-preprocess no new data: kept feature run {pre['run_id']}")
    else:
        print(f"  spark-preprocess {pre['rows']} feature rows in {pre['features_path']}")
    if train.get("skipped"):
        print("  ml-training      no new features: kept the last model")
    elif not train.get("registered", True):
        print(f"  ml-training      quality gate refused the model: {train.get('gate')}")
    else:
        print(
            f"  ml-training      model {train.get('model_name')} version "
            f"{train.get('model_version')} (alias {train.get('alias')})"
        )
    verdict = "promoted" if promotion["promoted"] else "not promoted"
    print(f"  promotion        {verdict}: {promotion['reason']}")
    print(f"  champion         version {promotion['champion_after']}")
    if promotion.get("active_url"):
        print(f"  serving          {promotion['active_url']} (stop with `make down`)")
    print(f"  report           {summary['report']['markdown']}")


def _stop_kept_serving() -> list[str]:
    from pipeline_ops.pipeline_state import PipelineState
    from pipeline_ops.promotion import stop_kept_serving

    state = PipelineState()
    if not state.path.exists():
        return []
    stopped = stop_kept_serving(state.read().get("active_pid"))
    state.update(active_url=None, active_pid=None)
    return ["model-serving"] if stopped else []


def _demo(platform: LocalPlatform) -> int:
    from pipeline_ops.demo import score_and_show, serving_url
    from pipeline_ops.runner import stage_process_env

    env = LocalEnvironment(platform)
    model_name = env.stage_secrets()["model-serving"]["model_name"]
    champion = ModelReference.at_alias(model_name, CHAMPION)
    with serving_url(stage_process_env(env, "model-serving"), champion) as url:
        score_and_show(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
