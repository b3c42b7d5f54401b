"""`python -m pipeline_ops.images`: the container engine, the local bases, the five images
and their container tests (`make engine-up`, `make engine-down`, `make images`,
`make image-test`; `make test` runs inside `with-engine`)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys

from pipeline_ops.base import commands
from pipeline_ops.base.errors import OpsError
from pipeline_ops.images.engine import ContainerEngine, SystemEngine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline_ops.images", description=__doc__)
    subcommands = parser.add_subparsers(dest="command", required=True)
    subcommands.add_parser("engine-up", help="install (once) and start the Docker engine")
    subcommands.add_parser("engine-down", help="stop the engine and undo its host changes")
    subcommands.add_parser("engine-status", help="show the engine's pid, socket and health")
    subcommands.add_parser("env", help="print the exports that point a docker client at it")
    build = subcommands.add_parser("build", help="build the images with local bases; print a table")
    build.add_argument("images", nargs="*", help="only these (default: all five)")
    test = subcommands.add_parser(
        "test", help="test images as containers, the way manifests run them"
    )
    test.add_argument("stages", nargs="*", help="only these (default: all five, in order)")
    test.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="NAME=REF",
        help="test this image reference instead of the locally built one (CI)",
    )
    test.add_argument(
        "--engine",
        choices=("project", "default"),
        default="project",
        help="project: the engine of `make engine-up` (default); default: the one the docker "
        "client reaches already (a CI runner's)",
    )
    with_engine = subcommands.add_parser(
        "with-engine",
        help="run a command with the engine up; stop it afterwards if it was not running before",
    )
    with_engine.add_argument("argv", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args(argv)
    # A stopped run (SIGTERM) still stops the platform and containers it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    engine = (
        SystemEngine() if getattr(args, "engine", "project") == "default" else ContainerEngine()
    )
    try:
        if args.command == "engine-up":
            engine.up()
            print(json.dumps(engine.status(), indent=2))
        elif args.command == "engine-down":
            stopped = engine.down()
            print("engine stopped" if stopped else "no engine was running; host cleaned")
        elif args.command == "engine-status":
            status = engine.status()
            print(json.dumps(status, indent=2))
            return 0 if status["answers"] else 1
        elif args.command == "env":
            for name, value in engine.env().items():
                print(f"export {name}={value}")
        elif args.command == "build":
            from pipeline_ops.images.build import build_images, print_table

            print_table(build_images(engine, args.images or None))
        elif args.command == "with-engine":
            return run_with_engine(engine, args.argv)
        elif args.command == "test":
            from pipeline_ops.images.container_test import run_image_tests

            return run_image_tests(
                engine, args.stages or None, dict(i.split("=", 1) for i in args.image)
            )
    except OpsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def run_with_engine(engine: ContainerEngine | SystemEngine, argv: list[str]) -> int:
    """The engine for one command (`make test`): started if needed, and then stopped again,
    also when the command fails or is stopped, so the host is left as it was found."""
    command = argv[1:] if argv[:1] == ["--"] else argv
    if not command:
        raise SystemExit("with-engine needs a command: with-engine -- COMMAND [ARGS...]")
    started_here = engine.running() is None
    engine.up()
    try:
        return commands.run(
            command, what="the command run with the engine", check=False, timeout=None,
            capture_stdout=False, capture_stderr=False,
        ).returncode  # fmt: skip
    finally:
        if started_here:
            engine.down()
            logging.info("stopped the engine this command started")


if __name__ == "__main__":
    raise SystemExit(main())
