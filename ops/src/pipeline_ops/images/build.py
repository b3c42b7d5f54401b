"""`make images`: the images of the stage list (``pipeline_ops.stages.IMAGES``: the image
name and Dockerfile each `stage-image.yml` call builds) built from the repository root
exactly as the workflows build them, except for the bases, which are the local ones
(pipeline_ops.images.bases). Each image is tagged with the commit (``-dirty`` when the tree
has uncommitted changes); a table gives its real size, layers and build time. Re-running is
quick: the engine's layer cache keeps every step whose inputs did not change.

Disk: the legacy builder leaves each earlier stage's result (``dependencies``, ``wheels``)
untagged, and those results are the layer cache of the next build. So each is tagged
``pr-anomaly-cache/NAME:STAGE`` as it is built, and then the engine's dangling images (what
earlier builds left: stage results for an older lock, failed builds' steps, replaced bases)
are pruned, and what was freed is said.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline_ops import stages
from pipeline_ops.base import commands
from pipeline_ops.images.bases import RECIPES, ensure_base, ensure_build_variant, host_pip_settings
from pipeline_ops.images.engine import ContainerEngine, EngineError
from pipeline_ops.paths import LOCAL_DIR, PROJECT_ROOT

log = logging.getLogger(__name__)

BUILD_DIR = LOCAL_DIR / "images"
CACHE_REPOSITORY = "pr-anomaly-cache"
# The local runtime base of each image whose base is not plain Python.
RUNTIME_BASE = {stages.stage("spark-preprocess").name: "python-java"}
MB = 1_000_000
INDEX_KEYS = ("index-url", "extra-index-url", "trusted-host")  # pip's, never shown


@dataclass
class BuiltImage:
    name: str
    reference: str
    image_id: str
    size_bytes: int
    layers: int
    build_seconds: float
    dockerfile: str


def declared_args(dockerfile: Path) -> set[str]:
    return set(re.findall(r"^ARG\s+([A-Z_]+)", dockerfile.read_text(), re.M))


def image_tag() -> str:
    def git(*args: str) -> str:
        return commands.output(["git", *args], what="the commit to tag images with",
                               cwd=PROJECT_ROOT).strip()  # fmt: skip

    commit = git("rev-parse", "--short=12", "HEAD")
    return f"{commit}-dirty" if git("status", "--porcelain", "--untracked-files=no") else commit


def local_base_args(engine: ContainerEngine, name: str, dockerfile: Path) -> dict[str, str]:
    """The build arguments that swap the official bases for the local ones."""
    runtime = ensure_base(engine, RECIPES[RUNTIME_BASE.get(name, "python")])
    args = {
        "PYTHON_IMAGE": runtime,
        "PYTHON_BUILD_IMAGE": ensure_build_variant(engine, runtime, "pip"),
    }
    if "MAVEN_IMAGE" in declared_args(dockerfile):
        args["MAVEN_IMAGE"] = ensure_build_variant(
            engine, ensure_base(engine, RECIPES["maven"]), "maven"
        )
    return args


def build_image(engine: ContainerEngine, name: str, dockerfile: str, tag: str) -> BuiltImage:
    path = PROJECT_ROOT / dockerfile
    args = local_base_args(engine, name, path)
    reference = f"{name}:{tag}"
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    log_file = BUILD_DIR / f"{name}.build.log"
    command = ["build", "-f", str(path), "-t", reference, "-t", f"{name}:local"]
    for key, value in args.items():
        command += ["--build-arg", f"{key}={value}"]
    log.info("building %s from %s", reference, dockerfile)
    # the host's index settings may carry credentials, and pip may print them
    secrets = tuple(v for k, v in host_pip_settings().items() if v and k in INDEX_KEYS)
    started = time.monotonic()
    result = engine.docker(*command, str(PROJECT_ROOT), what=f"build of {name}", check=False,
                           secrets=secrets)  # fmt: skip
    seconds = time.monotonic() - started
    log_file.write_text(result.stdout + result.stderr)
    log_file.chmod(0o600)
    if result.returncode != 0:
        said = commands.redact(commands.tail(result.stdout + result.stderr, 3000), secrets)
        raise EngineError(f"building {name} ({dockerfile}) failed; end of {log_file}:\n{said}")
    for stage, image_id in stage_results(result.stdout).items():
        engine.docker("tag", image_id, f"{CACHE_REPOSITORY}/{name}:{stage}",
                      what=f"keep {name}'s {stage} stage as the layer cache")  # fmt: skip
    info = json.loads(engine.docker("image", "inspect", reference).stdout)[0]
    return BuiltImage(
        name=name,
        reference=reference,
        image_id=info["Id"],
        size_bytes=int(info["Size"]),
        layers=len(info["RootFS"]["Layers"]),
        build_seconds=round(seconds, 1),
        dockerfile=dockerfile,
    )


def stage_results(build_output: str) -> dict[str, str]:
    """Each earlier stage of a multi-stage build -> the image id it ended with, read from the
    legacy builder's output (``Step N/M : FROM … AS NAME``, then `` ---> ID`` per step)."""
    results: dict[str, str] = {}
    stage, last = "", ""
    for line in build_output.splitlines():
        started = re.match(r"Step \d+/\d+ : FROM .*?(?: AS (\S+))?\s*$", line, re.I)
        if started:
            if stage and last:
                results[stage] = last
            stage, last = started[1] or f"stage-{len(results)}", ""
        elif produced := re.match(r"\s*---> ([0-9a-f]{12,64})\s*$", line):
            last = produced[1]
    return results  # the last stage is the image itself, tagged by the build


@dataclass
class Pruned:
    images: int
    freed: str  # as the engine says it (`Total reclaimed space`)


def prune_dangling(engine: ContainerEngine) -> Pruned:
    """Remove the engine's dangling images (untagged, no tagged image above them) and any
    BuildKit cache; the layer cache of the builds is tagged, so it stays."""
    said = engine.docker("image", "prune", "--force", what="prune the engine's dangling images")
    deleted = [line for line in said.stdout.splitlines() if line.startswith("deleted: ")]
    builder = engine.docker("builder", "prune", "--force", check=False,
                            what="prune the engine's build cache")  # fmt: skip
    freed = [_reclaimed(said.stdout)]
    if builder.returncode == 0:
        freed.append(_reclaimed(builder.stdout))
    return Pruned(len(deleted), " + ".join(f for f in freed if f) or "0B")


def _reclaimed(output: str) -> str:
    for line in output.splitlines():
        if line.startswith("Total reclaimed space:"):
            return line.split(":", 1)[1].strip()
    return ""


def build_images(engine: ContainerEngine, names: list[str] | None = None) -> list[BuiltImage]:
    engine.up()
    unknown = sorted(set(names or ()) - set(stages.IMAGE_NAMES))
    if unknown:
        raise EngineError(
            f"no image {', '.join(unknown)}; choose from {', '.join(stages.IMAGE_NAMES)}"
        )
    tag = image_tag()
    wanted = [i for i in stages.IMAGES if not names or i.name in names]
    built = [build_image(engine, image.name, image.dockerfile, tag) for image in wanted]
    for image in built:
        remove_older_tags(engine, image.name, keep={tag, "local"})
    pruned = prune_dangling(engine)
    log.info("pruned %s dangling image(s) of earlier builds: %s freed", pruned.images,
             pruned.freed)  # fmt: skip
    record = BUILD_DIR / "built.json"
    previous = json.loads(record.read_text()) if record.exists() else {}
    previous.update({b.name: asdict(b) for b in built})
    record.write_text(json.dumps(previous, indent=2))
    return built


def remove_older_tags(engine: ContainerEngine, name: str, keep: set[str]) -> None:
    """Earlier commits' images of ``name`` go (each training image is gigabytes)."""
    listed = engine.docker("image", "ls", "--format", "{{.Tag}}", name).stdout.split()
    old = [f"{name}:{t}" for t in listed if t not in keep and t != "<none>"]
    if old:
        engine.docker("image", "rm", *old, check=False, what=f"remove earlier images of {name}")


def built_images() -> dict[str, BuiltImage]:
    """What the last `make images` built, by image name."""
    record = BUILD_DIR / "built.json"
    if not record.exists():
        return {}
    return {name: BuiltImage(**raw) for name, raw in json.loads(record.read_text()).items()}


def print_table(built: list[BuiltImage]) -> None:
    print(f"{'image':<36} {'size':>9} {'layers':>7} {'build':>8}")
    for image in built:
        print(
            f"{image.reference:<36} {image.size_bytes / MB:>6.0f} MB {image.layers:>7} "
            f"{image.build_seconds:>6.1f} s"
        )
