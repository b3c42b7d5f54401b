"""`make images`: the five images built from the repository root exactly as the workflows
build them (the Dockerfile and image name of each `stage-image.yml` call), except for the
bases, which are the local ones (pipeline_ops.images.bases). Each image is tagged with the
commit (``-dirty`` when the tree has uncommitted changes); a table gives its real size,
layers and build time. Re-running is quick: the engine's layer cache keeps every step whose
inputs did not change.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from pipeline_ops.images.bases import RECIPES, ensure_base, ensure_build_variant
from pipeline_ops.images.engine import ContainerEngine, EngineError
from pipeline_ops.paths import LOCAL_DIR, PROJECT_ROOT
from pipeline_ops.validate.tree import WORKFLOWS, stage_image_calls

log = logging.getLogger(__name__)

BUILD_DIR = LOCAL_DIR / "images"
# The images in the order the pipeline uses them; the local runtime base of each.
IMAGE_ORDER = ("data-fetch", "spark-preprocess", "ml-training", "model-serving", "load-gate")
RUNTIME_BASE = {"spark-preprocess": "python-java"}
MB = 1_000_000


@dataclass
class BuiltImage:
    name: str
    reference: str
    image_id: str
    size_bytes: int
    layers: int
    build_seconds: float
    dockerfile: str


def workflow_images() -> dict[str, str]:
    """image name -> Dockerfile, from the stage workflows' calls of stage-image.yml."""
    images = {}
    for path in sorted((PROJECT_ROOT / WORKFLOWS).glob("*.yml")):
        workflow = yaml.safe_load(path.read_text()) or {}
        for call in stage_image_calls(workflow):
            images[str(call["image"])] = str(call["dockerfile"])
    return images


def declared_args(dockerfile: Path) -> set[str]:
    return set(re.findall(r"^ARG\s+([A-Z_]+)", dockerfile.read_text(), re.M))


def image_tag() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()

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
    started = time.monotonic()
    with log_file.open("w") as out:
        result = engine.docker(
            *command,
            str(PROJECT_ROOT),
            check=False,
            capture_output=False,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    seconds = time.monotonic() - started
    if result.returncode != 0:
        tail = log_file.read_text(errors="replace")[-3000:]
        raise EngineError(f"building {name} ({dockerfile}) failed; end of {log_file}:\n{tail}")
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


def build_images(engine: ContainerEngine, names: list[str] | None = None) -> list[BuiltImage]:
    engine.up()
    images = workflow_images()
    unknown = sorted(set(names or ()) - images.keys())
    if unknown:
        raise EngineError(f"no workflow builds {', '.join(unknown)}; choose from {sorted(images)}")
    tag = image_tag()
    wanted = [n for n in IMAGE_ORDER if n in images and (not names or n in names)]
    built = [build_image(engine, name, images[name], tag) for name in wanted]
    for image in built:
        remove_older_tags(engine, image.name, keep={tag, "local"})
    record = BUILD_DIR / "built.json"
    previous = json.loads(record.read_text()) if record.exists() else {}
    previous.update({b.name: asdict(b) for b in built})
    record.write_text(json.dumps(previous, indent=2))
    return built


def remove_older_tags(engine: ContainerEngine, name: str, keep: set[str]) -> None:
    """Earlier commits' images of ``name`` go (each training image is gigabytes). Nothing is
    pruned: the install stages' images are untagged, and they are the layer cache that
    makes the next build quick."""
    listed = engine.docker("image", "ls", "--format", "{{.Tag}}", name).stdout.split()
    old = [f"{name}:{t}" for t in listed if t not in keep and t != "<none>"]
    if old:
        engine.docker("image", "rm", *old, check=False)


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
