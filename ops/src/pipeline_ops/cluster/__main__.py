"""`python -m pipeline_ops.cluster up|status|down|env|push|git-sync` (what `make cluster-*`
runs)."""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline_ops.base.errors import OpsError
from pipeline_ops.cluster.launcher import Cluster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline_ops.cluster")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start the single-node cluster (or clean up and restart)")
    commands.add_parser("status", help="show every component, its pid, health and log")
    commands.add_parser("down", help="stop everything by pid and undo the host changes")
    commands.add_parser("env", help="print the exports to use the cluster by hand")
    push = commands.add_parser(
        "push", help="push images of `make images` to the cluster's registry; print their digests"
    )
    push.add_argument("images", nargs="*", help="NAME or NAME:TAG (default: all five)")
    commands.add_parser(
        "git-sync", help="mirror this repository's branches into the git server's pr-anomaly.git"
    )
    commands.add_parser(
        "run", help="the GitOps loop: staging via Argo CD, the pipeline in pods, blue/green, "
        "promotion to production (what `make cluster-run` runs)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cluster = Cluster()
    try:
        if args.command == "up":
            timings = cluster.up()
            if timings:
                print(f"cluster up in {timings['total']:.1f}s")
            _print_status(cluster)
            _print_env(cluster)
        elif args.command == "status":
            _print_status(cluster)
        elif args.command == "down":
            stopped = cluster.down()
            print("stopped: " + (", ".join(stopped) or "nothing was running"))
        elif args.command == "env":
            _print_env(cluster)
        elif args.command == "push":
            from pipeline_ops.cluster.registry import push as push_images

            for name, reference in push_images(cluster.layout, args.images or None).items():
                print(f"{name} -> {reference}")
        elif args.command == "git-sync":
            from pipeline_ops.cluster import git_server

            branches = git_server.sync_project(cluster.layout)
            print(f"{git_server.url(git_server.PROJECT_REPOSITORY)}: {' '.join(branches)}")
        elif args.command == "run":
            from pipeline_ops.cluster.run import ClusterRun

            run = ClusterRun(cluster)
            try:
                run.run()
            finally:
                _print_run(run)
    except OpsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def _print_status(cluster: Cluster) -> None:
    status = cluster.status()
    phase = cluster.phase
    if phase not in (None, "up"):
        print(f"a cluster-up did not finish (phase {phase}); the next `make cluster-up` cleans up")
    if not any(info.get("running") for info in status.values()):
        print("the cluster is not running; start it with `make cluster-up`")
        return
    for name, info in status.items():
        health = "healthy" if info["healthy"] else "NOT healthy"
        pid = f"pid {info['pid']}" if info.get("pid") else ""
        log_file = f"log {info['log']}" if info.get("log") else ""
        print(f"{name:24} {pid:10} {health:12} {log_file}")


def _print_run(run) -> None:
    for step in run.steps.steps:
        print(f"{step.seconds:7.1f}s  {step.name:58} {step.outcome}")
    print(f"report: {run.report_dir / 'report.md'} (and report.json)")
    mlflow = run.platform.servers.running().get("mlflow")
    if mlflow:
        print(f"MLflow (runs, the registry's aliases): {mlflow.url}")
    print(
        "look: `make cluster-env`, then kubectl -n mlops get rollout,analysisrun,job,pods; "
        "kubectl argo rollouts get rollout model-serving -n mlops-production"
    )


def _print_env(cluster: Cluster) -> None:
    layout = cluster.layout
    print(f"export KUBECONFIG={layout.kubeconfig}")
    print(f'export PATH="{layout.root / "bin"}:$PATH"')
    from pipeline_ops.cluster import git_server, monitoring, prometheus
    from pipeline_ops.cluster.layout import REGISTRY

    print(f"# registry {REGISTRY}  prometheus {prometheus.url()}  "
          f"alertmanager {monitoring.alertmanager_url()}  "
          f"git {git_server.url(git_server.PROJECT_REPOSITORY)}")  # fmt: skip
    user = layout.kubeconfig_of("user")
    print(f"# as the user (argo-apps/access), not the administrator: KUBECONFIG={user}")


if __name__ == "__main__":
    sys.exit(main())
