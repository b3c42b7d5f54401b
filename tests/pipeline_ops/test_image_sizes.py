"""`make image-sizes`: the Dockerfiles' install steps, replayed and measured."""

from __future__ import annotations

from pathlib import Path

from pipeline_ops.image_sizes import DOCKERFILES, ImageRecipe, main, measure
from pipeline_ops.paths import PROJECT_ROOT


def test_every_dockerfile_is_measured() -> None:
    on_disk = {
        str(p.relative_to(PROJECT_ROOT))
        for p in PROJECT_ROOT.glob("*/Dockerfile*")
        if not p.is_relative_to(PROJECT_ROOT / ".venv")
    }
    assert on_disk == set(DOCKERFILES)


def test_recipes_follow_the_dockerfiles() -> None:
    recipes = {d: ImageRecipe.parse(d) for d in DOCKERFILES}
    serving = recipes["model-serving/Dockerfile"]
    assert serving.packages == ["pipeline-common", "ml-pipeline", "model-serving"]
    # the serving image carries neither torch nor pandas: not in its lock, not from an index
    lock = (PROJECT_ROOT / serving.lock).read_text()
    assert "torch==" not in lock and "pandas==" not in lock
    assert not any("torch" in item for item in serving.unmeasured)
    training = recipes["ml-pipeline/Dockerfile.training"]
    assert training.excluded and training.excluded.search("torch==2.13.0")
    assert "torch CPU wheel (its own index)" in training.unmeasured
    assert recipes["ml-pipeline/Dockerfile.preprocess"].copies_jars


def test_the_load_gate_image_is_measured(tmp_path: Path, capsys) -> None:
    recipe = ImageRecipe.parse("model-serving/Dockerfile.load-gate")
    sizes = measure(recipe, tmp_path)
    assert 10_000_000 < sizes["python"] < 200_000_000  # locust and its dependencies
    assert sizes["jars"] == 0
    assert main(["model-serving/Dockerfile.load-gate"]) == 0
    row = capsys.readouterr().out.splitlines()[-1]
    assert row.startswith("| `model-serving/Dockerfile.load-gate` |") and " MB |" in row
