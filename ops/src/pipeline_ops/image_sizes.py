"""`make image-sizes`: what each Dockerfile installs on top of its base image, measured.

No Docker engine runs here, so each image's install steps are replayed from the Dockerfile
itself: the pinned lock it copies (minus the lines it filters out), the project packages it
installs, and the jars it copies, into a throw-away virtual environment. Reported per image:
the installed bytes of its Python packages plus jars, and what could not be measured here
(the base image, apt packages, torch's CPU wheel from its own index).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pipeline_ops.paths import PROJECT_ROOT, TOOLS_DIR

DOCKERFILES = (
    "data-fetch/Dockerfile",
    "ml-pipeline/Dockerfile.preprocess",
    "ml-pipeline/Dockerfile.training",
    "model-serving/Dockerfile",
    "model-serving/Dockerfile.load-gate",
)
MB = 1_000_000


@dataclass
class ImageRecipe:
    """What the final stage of a Dockerfile installs."""

    dockerfile: str
    base: str
    lock: str
    excluded: re.Pattern[str] | None
    packages: list[str]
    copies_jars: bool
    unmeasured: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, dockerfile: str) -> ImageRecipe:
        text = (PROJECT_ROOT / dockerfile).read_text()
        final = text[text.rindex("\nFROM ") + 1 :] if "\nFROM " in text else text
        final = final.replace("\\\n", " ")
        lock = re.search(r"^COPY (requirements/\S+\.txt) ", final, re.M)
        packages = re.search(r"pip install --no-deps ((?:/src/\S+ ?)+)", final)
        if not lock or not packages:
            raise ValueError(f"{dockerfile}: no `COPY requirements/*.txt` or no /src install")
        excluded = re.search(r"grep -v -E '([^']+)'", final)
        recipe = cls(
            dockerfile=dockerfile,
            base=final.split()[1],
            lock=lock[1],
            excluded=re.compile(excluded[1]) if excluded else None,
            packages=[p.removeprefix("/src/") for p in packages[1].split()],
            copies_jars="COPY --from=jars" in final,
        )
        recipe.unmeasured.append(f"base image {recipe.base}")
        apt = re.search(r"apt-get install -y (?:--\S+ )*([a-z0-9.+\- ]+?)(?: &&|$)", final, re.M)
        if apt:
            recipe.unmeasured.append("apt: " + " ".join(apt[1].split()))
        if "--index-url" in final:
            recipe.unmeasured.append("torch CPU wheel (its own index)")
        return recipe


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def measure(recipe: ImageRecipe, workdir: Path) -> dict[str, int]:
    """Installed bytes: {"python": site-packages, "jars": copied jars}."""
    uv = Path(sys.executable).parent / "uv"
    venv = workdir / Path(recipe.dockerfile).name.lower().replace(".", "-")
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, venv], check=True)
    lines = (PROJECT_ROOT / recipe.lock).read_text().splitlines()
    kept = [line for line in lines if not (recipe.excluded and recipe.excluded.search(line))]
    lock = workdir / f"{venv.name}.txt"
    lock.write_text("\n".join(kept) + "\n")
    python = ["--python", str(venv / "bin" / "python")]
    install = [uv, "pip", "install", "--quiet", "--no-deps", *python]
    subprocess.run([*install, "-r", lock], check=True)
    # Built from copies, as the Dockerfile does (COPY to /src): setuptools would otherwise
    # leave build/ directories in the working tree.
    sources = [shutil.copytree(PROJECT_ROOT / p, workdir / "src" / p) for p in recipe.packages]
    subprocess.run([*install, *sources], check=True)
    [site_packages] = (venv / "lib").glob("python*/site-packages")
    sizes = {"python": tree_bytes(site_packages), "jars": 0}
    if recipe.copies_jars:
        sizes["jars"] = tree_bytes(TOOLS_DIR / "jars")
    shutil.rmtree(venv)
    shutil.rmtree(workdir / "src")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline_ops.image_sizes", description=__doc__)
    parser.add_argument("dockerfiles", nargs="*", default=list(DOCKERFILES))
    args = parser.parse_args(argv)
    recipes = [ImageRecipe.parse(d) for d in args.dockerfiles]
    print("| image (Dockerfile) | Python packages | jars | total measured | not measured here |")
    print("|---|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory(prefix="image-sizes-") as tmp:
        for recipe in recipes:
            sizes = measure(recipe, Path(tmp))
            jars = f"{sizes['jars'] / MB:,.0f} MB" if recipe.copies_jars else "-"
            print(
                f"| `{recipe.dockerfile}` | {sizes['python'] / MB:,.0f} MB | {jars} "
                f"| {sum(sizes.values()) / MB:,.0f} MB | {'; '.join(recipe.unmeasured)} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
