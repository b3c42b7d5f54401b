"""The project's Docker engine and the five images, for the container tests (marker
`images`: `pytest -m images` runs just these, `-m "not images"` skips them; the unit tests
here, through the fake command runner, carry no marker and need no engine).

The engine is the machine's one engine (`make engine-up`); if these tests start it, they
stop it at the end. The images are built as `make images` builds them: cached layers make a
re-run cheap, and a changed input rebuilds only what it affects.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipeline_ops.images.bench import ImageTestBench, open_bench
from pipeline_ops.images.build import BuiltImage, build_images
from pipeline_ops.images.engine import ContainerEngine


@pytest.fixture(scope="session")
def engine() -> Iterator[ContainerEngine]:
    machine_engine = ContainerEngine()
    started_here = machine_engine.running() is None
    machine_engine.up()
    yield machine_engine
    if started_here:
        machine_engine.down()


@pytest.fixture(scope="session")
def built(engine: ContainerEngine) -> dict[str, BuiltImage]:
    return {image.name: image for image in build_images(engine)}


@pytest.fixture(scope="module")
def bench(
    engine: ContainerEngine, built: dict[str, BuiltImage], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ImageTestBench]:
    images = {name: image.reference for name, image in built.items()}
    with open_bench(engine, images, tmp_path_factory.mktemp("image-test")) as opened:
        yield opened
